"""Image names, translation configs, transports and the built-in image sources.

An image name goes through these steps (see ``docs/images.md``):

1. ``virtlet.cloud/`` is stripped, then a trailing ``@sha256:<64 hex>`` digest pin (kept
   and verified after the download) and a trailing ``:tag`` (ignored, as in Virtlet).
2. Translation configs (YAML files of a directory, Virtlet's format) are tried in sorted
   file-name order; in each, exact ``name`` rules first, then ``regexp`` rules in list order,
   each regexp matched against the *whole* name.  The first match gives the URL and the
   transport profile (CA bundle, client certs, insecure TLS, timeout, redirects, proxy).
3. A URL without ``://`` gets ``https://`` (or ``http://`` when configured) in front;
   an absolute path becomes a ``file://`` URL, allowed only under the configured directories.

The built-in sources are ``file`` (local files) and ``http``/``https`` (stdlib HTTP client;
redirects followed here to enforce ``maxRedirects`` and detect loops).  Both hash while
they copy, in one pass.  Plugins add sources for other schemes with the
:func:`~vmpod.hookspecs.vmpod_image_sources` hook.

:class:`vmpod.runtime.imagestore.ImageStore` keeps what the sources fetch, by digest,
under ``<state_dir>/images/``.  Only disk images are accepted: qcow2 without a backing
file, or raw images that start with a partition table (MBR or GPT) or an ISO 9660 volume.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import queue
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import attrs
import yaml

from vmpod._markers import hookimpl
from vmpod.errors import NotFoundError, SpecError, VmpodError
from vmpod.hookspecs import ImageSourceSpec

__all__ = [
    "DEFAULT_TRANSLATIONS_DIR",
    "IMAGE_PATH",
    "ImageConfig",
    "ImagePullError",
    "Progress",
    "ResolvedImage",
    "TLSSettings",
    "TranslationConfig",
    "TranslationRule",
    "Transport",
    "download",
    "file_path",
    "file_stamp",
    "image_url",
    "inspect_image",
    "load_translations",
    "sha256_file",
    "streaming_fetcher",
    "vmpod_image_sources",
]

#: Field path put on image errors (the manifest field the name came from).
IMAGE_PATH = "spec.containers[0].image"

#: Translation configs are read from here when it exists and nothing else is configured.
DEFAULT_TRANSLATIONS_DIR = Path("/etc/vmpod/images")

_VIRTLET_PREFIX = "virtlet.cloud/"
_CHUNK = 1 << 20
_POOL = 8
_QEMU_IMG_TIMEOUT = 60
_DEFAULT_MAX_REDIRECTS = 10
_IDLE_TIMEOUT = 60.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DIGEST = re.compile(r"@sha256:([0-9a-fA-F]*)$")

#: ``progress(done_bytes, total_bytes_or_None)``, called as a download goes.
Progress = Callable[[int, "int | None"], None]


class ImagePullError(VmpodError):
    """An image could not be downloaded or verified (network, HTTP status, digest, disk full)."""


# --------------------------------------------------------------------------- configuration


@attrs.frozen
class TLSSettings:
    """TLS settings of a transport profile.

    :param ca_certs: PEM certificates trusted in addition to the system's (entries without ``key``).
    :param client_certs: ``(cert PEM, key PEM)`` pairs presented to the server.
    :param server_name: the name checked against the server certificate (and sent as SNI).
    :param insecure: skip certificate verification.
    """

    ca_certs: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    server_name: str = ""
    insecure: bool = False


@attrs.frozen
class Transport:
    """A transport profile (Virtlet's ``transports.<name>``).

    :param timeout: seconds the whole request may take (None: no limit; a silent connection
        still fails after 60 s).
    :param max_redirects: redirects followed before giving up.
    :param proxy: ``http://host:port`` of a proxy, or "" (then ``HTTP(S)_PROXY`` apply).
    """

    name: str = ""
    timeout: float | None = None
    max_redirects: int = _DEFAULT_MAX_REDIRECTS
    proxy: str = ""
    tls: TLSSettings = TLSSettings()

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context for this profile (system CAs plus the profile's)."""
        context = ssl.create_default_context()
        if self.tls.ca_certs:
            context.load_verify_locations(cadata="\n".join(self.tls.ca_certs))
        for cert, key in self.tls.client_certs:
            with tempfile.TemporaryDirectory() as tmp:
                cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                cert_file.write_text(cert)
                key_file.write_text(key)
                key_file.chmod(0o600)
                context.load_cert_chain(cert_file, key_file)
        if self.tls.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@attrs.frozen
class TranslationRule:
    """One entry of ``translations``: an exact ``name`` or a ``regexp`` (matched in full), and its URL."""

    url: str
    name: str = ""
    regexp: re.Pattern[str] | None = None
    transport: str = ""

    def match(self, name: str) -> str | None:
        """The URL for ``name`` (``$1``/``${name}`` expanded), or None when the rule does not match."""
        if self.regexp is None:
            return self.url if name == self.name else None
        found = self.regexp.fullmatch(name)
        if found is None:
            return None

        def group(m: re.Match[str]) -> str:
            key = m.group(1) or m.group(2)
            try:
                value = found.group(int(key) if key.isdigit() else key)
            except IndexError:
                return ""
            return value or ""

        return re.sub(r"\$(?:(\d+)|\{(\w+)\})", group, self.url)


@attrs.frozen
class TranslationConfig:
    """One translation config file: an optional ``prefix``, rules and transport profiles."""

    source: str
    prefix: str = ""
    rules: tuple[TranslationRule, ...] = ()
    transports: tuple[Transport, ...] = ()

    def transport(self, name: str) -> Transport:
        """The profile called ``name`` (unknown: the default transport, as in Virtlet)."""
        for transport in self.transports:
            if transport.name == name:
                return transport
        return Transport(name=name)

    def translate(self, name: str) -> tuple[str, TranslationRule] | None:
        """``(url, rule)`` for ``name``, or None."""
        if self.prefix:
            if not name.startswith(self.prefix + "/"):
                return None
            name = name[len(self.prefix) + 1:]
        for rule in self.rules:
            if rule.regexp is None and (url := rule.match(name)) is not None:
                return url, rule
        for rule in self.rules:
            if rule.regexp is not None and (url := rule.match(name)) is not None:
                return url, rule
        return None


def _config_error(source: str, path: str, message: str, value: object = None) -> SpecError:
    if value is None:
        return SpecError(path, message, source=source)
    return SpecError(path, message, value=value, source=source)


def _parse_transport(source: str, name: str, data: object) -> Transport:
    where = "transports." + (name or '""')
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _config_error(source, where, "a transport profile must be a mapping", data)
    timeout = data.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
        raise _config_error(source, where + ".timeout", "must be an integer (milliseconds)", timeout)
    redirects = data.get("maxRedirects")
    if redirects is not None and (not isinstance(redirects, int) or isinstance(redirects, bool) or redirects < 0):
        raise _config_error(source, where + ".maxRedirects", "must be a non-negative integer", redirects)
    proxy = data.get("proxy") or ""
    if not isinstance(proxy, str) or (proxy and urllib.parse.urlsplit(proxy).scheme not in ("http", "https")):
        raise _config_error(source, where + ".proxy", "must be an http:// URL", proxy)
    tls_data = data.get("tls") or {}
    if not isinstance(tls_data, Mapping):
        raise _config_error(source, where + ".tls", "must be a mapping", tls_data)
    cas: list[str] = []
    clients: list[tuple[str, str]] = []
    for i, entry in enumerate(tls_data.get("certificates") or ()):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("cert"), str):
            raise _config_error(source, f"{where}.tls.certificates[{i}]", "needs cert: <PEM>")
        if entry.get("key"):
            clients.append((str(entry["cert"]), str(entry["key"])))
        else:
            cas.append(str(entry["cert"]))
    tls = TLSSettings(ca_certs=tuple(cas), client_certs=tuple(clients),
                      server_name=str(tls_data.get("serverName") or ""), insecure=bool(tls_data.get("insecure")))
    return Transport(name=name, timeout=timeout / 1000 if timeout and timeout > 0 else None,
                     max_redirects=_DEFAULT_MAX_REDIRECTS if redirects is None else redirects, proxy=proxy, tls=tls)


def parse_translation_config(data: object, source: str) -> TranslationConfig:
    """A :class:`TranslationConfig` from one parsed YAML document (Virtlet's format).

    :raises SpecError: naming the file and the field for anything malformed.
    """
    if data is None:
        return TranslationConfig(source=source)
    if not isinstance(data, Mapping):
        raise _config_error(source, "", "a translation config must be a mapping")
    unknown = set(data) - {"prefix", "translations", "transports"}
    if unknown:
        raise _config_error(source, sorted(unknown)[0], "unknown key")
    rules: list[TranslationRule] = []
    for i, entry in enumerate(data.get("translations") or ()):
        where = f"translations[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
            raise _config_error(source, where, "needs url and name or regexp")
        name, regexp = entry.get("name"), entry.get("regexp")
        if bool(name) == bool(regexp):
            raise _config_error(source, where, "give exactly one of name and regexp")
        compiled = None
        if regexp:
            try:
                compiled = re.compile(str(regexp))
            except re.error as exc:
                raise _config_error(source, where + ".regexp", f"bad regular expression: {exc}", regexp) from None
        rules.append(TranslationRule(url=str(entry["url"]), name=str(name or ""), regexp=compiled,
                                     transport=str(entry.get("transport") or "")))
    transports_data = data.get("transports") or {}
    if not isinstance(transports_data, Mapping):
        raise _config_error(source, "transports", "must be a mapping of profile names")
    transports = tuple(_parse_transport(source, str(k), v) for k, v in transports_data.items())
    return TranslationConfig(source=source, prefix=str(data.get("prefix") or "").strip("/"), rules=tuple(rules),
                             transports=transports)


def load_translations(directory: Path) -> tuple[TranslationConfig, ...]:
    """Every ``*.yaml``/``*.yml`` file of ``directory``, in sorted file-name order (missing dir: none)."""
    if not directory.is_dir():
        return ()
    configs: list[TranslationConfig] = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise SpecError("", f"not valid YAML: {exc}", source=str(path)) from None
        configs += [parse_translation_config(doc, str(path)) for doc in documents if doc is not None]
    return tuple(configs)


@attrs.frozen
class ResolvedImage:
    """What an image name stands for.

    :param name: the name after ``virtlet.cloud/``, the tag and the digest are removed.
    :param url: where to fetch it.
    :param digest: ``sha256:<hex>`` when the name pins one, else "".
    :param rule: ``<file>: <name or regexp>`` of the translation rule used, or "".
    """

    name: str
    url: str
    digest: str = ""
    transport: Transport = Transport()
    rule: str = ""


def _split_name(name: str) -> tuple[str, str]:
    name = name.strip()
    if not name:
        raise SpecError(IMAGE_PATH, "empty image name", accepted="file:///PATH, an absolute path or a URL")
    digest = ""
    found = _DIGEST.search(name)
    if found:
        if len(found.group(1)) != 64:
            raise SpecError(IMAGE_PATH, "a sha256 digest has 64 hex digits", value=name)
        digest = "sha256:" + found.group(1).lower()
        name = name[:found.start()]
    name = name.removeprefix(_VIRTLET_PREFIX)
    if "://" not in name and not name.startswith("/"):
        head, _, last = name.rpartition("/")
        if ":" in last:  # a tag: ignored, as in Virtlet
            last = last.split(":", 1)[0]
            name = f"{head}/{last}" if head else last
    if not name:
        raise SpecError(IMAGE_PATH, "empty image name", accepted="file:///PATH, an absolute path or a URL")
    return name, digest


@attrs.frozen
class ImageConfig:
    """How names are resolved: translation configs, allowed local directories, the default protocol.

    :param file_dirs: directories ``file://`` images must be under; None allows any local file
        (the files are read with the invoking user's rights).
    """

    translations: tuple[TranslationConfig, ...] = ()
    file_dirs: tuple[Path, ...] | None = None
    download_protocol: str = "https"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 translations_dir: str | Path | None = None) -> ImageConfig:
        """From ``VMPOD_IMAGE_TRANSLATIONS`` (or ``translations_dir``, or ``/etc/vmpod/images``),
        ``VMPOD_IMAGE_FILE_DIRS`` (colon-separated; unset: any file) and ``VMPOD_IMAGE_DOWNLOAD_PROTOCOL``."""
        env = os.environ if environ is None else environ
        directory = translations_dir or env.get("VMPOD_IMAGE_TRANSLATIONS") or DEFAULT_TRANSLATIONS_DIR
        dirs_text = env.get("VMPOD_IMAGE_FILE_DIRS")
        file_dirs = None if dirs_text is None else tuple(Path(d) for d in dirs_text.split(":") if d)
        protocol = env.get("VMPOD_IMAGE_DOWNLOAD_PROTOCOL", "https") or "https"
        if protocol not in ("http", "https"):
            raise SpecError("VMPOD_IMAGE_DOWNLOAD_PROTOCOL", "must be http or https", value=protocol)
        return cls(translations=load_translations(Path(directory)), file_dirs=file_dirs, download_protocol=protocol)

    def resolve(self, image: str) -> ResolvedImage:
        """Resolve an image name to a URL, a digest pin and a transport.

        :raises SpecError: for a malformed name or a local file outside the allowed directories.
        """
        name, digest = _split_name(image)
        url, transport, rule = name, Transport(), ""
        for config in self.translations:
            found = config.translate(name)
            if found is not None:
                url, matched = found
                transport = config.transport(matched.transport)
                pattern = matched.regexp.pattern if matched.regexp is not None else ""
                rule = f"{config.source}: {matched.name or pattern}"
                break
        if url.startswith("/"):
            url = Path(url).absolute().as_uri()
        elif "://" not in url:
            url = f"{self.download_protocol}://{url}"
        if urllib.parse.urlsplit(url).scheme == "file":
            self.check_file(file_path(url))
        return ResolvedImage(name=name, url=url, digest=digest, transport=transport, rule=rule)

    def check_file(self, path: Path) -> None:
        """Refuse a local image outside :attr:`file_dirs` (symlinks and ``..`` resolved first)."""
        if self.file_dirs is None:
            return
        real = path.resolve()
        for directory in self.file_dirs:
            if real.is_relative_to(directory.resolve()):
                return
        raise SpecError(IMAGE_PATH, "local images must be under the allowed directories", value=str(path),
                        accepted=":".join(map(str, self.file_dirs)) + " (VMPOD_IMAGE_FILE_DIRS)"
                        if self.file_dirs else "none: VMPOD_IMAGE_FILE_DIRS is empty")


def image_url(name: str) -> str:
    """The URL an image name stands for with no translation config (``/x`` -> ``file:///x``, ``n`` -> ``https://n``)."""
    return ImageConfig().resolve(name).url


# --------------------------------------------------------------------------- downloading


class _HTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose certificate is checked against ``server_name`` when given."""

    def __init__(self, host: str, port: int | None, *, timeout: float, context: ssl.SSLContext,
                 server_name: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._vmpod_context = context
        self._server_name = server_name

    def connect(self) -> None:
        """Connect (through the tunnel, if any) and wrap the socket in TLS."""
        http.client.HTTPConnection.connect(self)
        hostname = self._server_name or getattr(self, "_tunnel_host", None) or self.host
        self.sock = self._vmpod_context.wrap_socket(self.sock, server_hostname=hostname)


def _env_proxy(scheme: str, host: str) -> str:
    if host in ("localhost", "::1") or host.startswith("127."):
        return ""
    if urllib.request.proxy_bypass(host):
        return ""
    return urllib.request.getproxies().get(scheme, "")


def _connect(url: urllib.parse.SplitResult, transport: Transport, timeout: float,
             context: ssl.SSLContext | None) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` and the request target to send on it."""
    host = url.hostname or ""
    port = url.port
    target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
    proxy = transport.proxy or _env_proxy(url.scheme, host)
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        assert context is not None
        if proxy:
            p = urllib.parse.urlsplit(proxy)
            connection = _HTTPSConnection(p.hostname or "", p.port or 80, timeout=timeout, context=context,
                                          server_name=transport.tls.server_name)
            connection.set_tunnel(host, port or 443)
        else:
            connection = _HTTPSConnection(host, port, timeout=timeout, context=context,
                                          server_name=transport.tls.server_name)
    elif proxy:
        p = urllib.parse.urlsplit(proxy)
        connection = http.client.HTTPConnection(p.hostname or "", p.port or 80, timeout=timeout)
        target = urllib.parse.urlunsplit(url._replace(fragment=""))
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    return connection, target


def _headers(url: urllib.parse.SplitResult) -> dict[str, str]:
    headers = {"User-Agent": "vmpod", "Accept-Encoding": "identity"}
    if url.username is not None:
        import base64  # noqa: PLC0415

        user = urllib.parse.unquote(url.username) + ":" + urllib.parse.unquote(url.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    return headers


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                                                  + (f":{parts.port}" if parts.port else "")))


def download(url: str, out: BinaryIO, transport: Transport = Transport(), progress: Progress | None = None) -> str:
    """GET ``url`` into ``out``, following redirects, hashing in the same pass; returns ``sha256:<hex>``.

    :raises NotFoundError: for HTTP 404.
    :raises ImagePullError: for any other failure (status, redirect loop or limit, timeout,
        connection lost before the announced length, TLS).
    """
    deadline = time.monotonic() + transport.timeout if transport.timeout else None
    context = transport.ssl_context() if url.startswith("https:") else None
    seen = {url}
    current = url
    shown = _redact(url)

    def remaining() -> float:
        if deadline is None:
            return _IDLE_TIMEOUT
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return min(left, _IDLE_TIMEOUT)

    for _ in range(transport.max_redirects + 1):
        parts = urllib.parse.urlsplit(current)
        if parts.scheme not in ("http", "https"):
            raise ImagePullError(f"{shown}: redirected to an unsupported URL {_redact(current)}")
        if parts.scheme == "https" and context is None:
            context = transport.ssl_context()
        try:
            connection, target = _connect(parts, transport, remaining(), context)
            response: http.client.HTTPResponse | None = None
            try:
                connection.request("GET", target, headers=_headers(parts))
                response = connection.getresponse()
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise ImagePullError(f"{shown}: HTTP {response.status} without a Location header")
                    following = urllib.parse.urljoin(current, location)
                    if following in seen:
                        raise ImagePullError(f"{shown}: redirect loop ({_redact(current)} -> {_redact(following)})")
                    seen.add(following)
                    current = following
                    continue
                if response.status == 404:
                    raise NotFoundError(f"image {shown} not found (HTTP 404 from {_redact(current)})")
                if response.status != 200:
                    raise ImagePullError(f'{shown}: bad http status "{response.status} {response.reason}"')
                return _stream(response, connection, out, progress=progress, remaining=remaining, shown=shown)
            finally:
                if response is not None:
                    response.close()
                connection.close()
        except TimeoutError:
            limit = f"{transport.timeout:g} s" if transport.timeout else f"{_IDLE_TIMEOUT:g} s of silence"
            raise ImagePullError(f"{shown}: timed out ({limit})") from None
        except ssl.SSLError as exc:
            raise ImagePullError(f"{shown}: TLS error: {exc.reason or exc}") from None
        except http.client.IncompleteRead as exc:
            raise ImagePullError(f"{shown}: the connection was closed after {len(exc.partial)} bytes "
                                 "of a chunk; the download is incomplete") from None
        except (http.client.HTTPException, ConnectionError) as exc:
            raise ImagePullError(f"{shown}: connection failed: {exc or type(exc).__name__}") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ImagePullError(f"{shown}: no space left on the device while storing the image") from None
            if isinstance(exc, ssl.CertificateError):
                raise ImagePullError(f"{shown}: TLS error: {exc}") from None
            if isinstance(exc, socket.gaierror):
                host = urllib.parse.urlsplit(current).hostname or ""
                hint = (" (a short image name such as this needs a translation config that maps it to a URL: "
                        "see docs/images.md)" if "." not in host and host != "localhost" else "")
                raise ImagePullError(f"{shown}: cannot resolve host {host!r}: {exc.strerror or exc}{hint}") from None
            raise ImagePullError(f"{shown}: {exc.strerror or exc}") from None
    raise ImagePullError(f"{shown}: more than {transport.max_redirects} redirects")


def _stream(response: http.client.HTTPResponse, connection: http.client.HTTPConnection, out: BinaryIO, *,
            progress: Progress | None, remaining: Callable[[], float], shown: str) -> str:
    """Copy the body to ``out`` and hash it, as a three-stage pipeline.

    This thread receives chunks; a writer thread writes each one to ``out`` and hands it
    to a hasher thread, which gives the buffer back to a small pool.  Socket reads, file
    writes and hashlib all release the GIL, so the three overlap on two cores.
    """
    length_text = response.getheader("Content-Length")
    total = int(length_text) if length_text and length_text.isdigit() else None
    digest = hashlib.sha256()
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(_POOL):
        free.put(bytearray(_CHUNK))
    to_write: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    to_hash: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    failures: list[BaseException] = []

    def writer() -> None:
        while (item := to_write.get()) is not None:
            if not failures:
                try:
                    out.write(memoryview(item[0])[:item[1]])
                except BaseException as exc:  # re-raised by the receiving thread
                    failures.append(exc)
            to_hash.put(item)
        to_hash.put(None)

    def hasher() -> None:
        while (item := to_hash.get()) is not None:
            digest.update(memoryview(item[0])[:item[1]])
            free.put(item[0])

    threads = [threading.Thread(target=writer, name="vmpod-write", daemon=True),
               threading.Thread(target=hasher, name="vmpod-sha256", daemon=True)]
    for thread in threads:
        thread.start()
    done = 0
    sock = connection.sock
    try:
        while not failures:
            buffer = free.get()
            if sock is not None:
                sock.settimeout(remaining())
            n = response.readinto(buffer)
            if not n:
                break
            to_write.put((buffer, n))
            done += n
            if progress is not None:
                progress(done, total)
    finally:
        to_write.put(None)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    if total is not None and done != total:
        raise ImagePullError(f"{shown}: the connection was closed after {done} of {total} bytes; "
                             "the download is incomplete")
    return "sha256:" + digest.hexdigest()


def _copy_file(url: str, out: BinaryIO, transport: Transport = Transport(), progress: Progress | None = None) -> str:
    """Copy a local file into ``out``, hashing in the same pass; returns ``sha256:<hex>``."""
    del transport
    source = file_path(url)
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src:
            total = os.fstat(src.fileno()).st_size
            done = 0
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except FileNotFoundError:
        raise NotFoundError(f"image file {source} does not exist") from None
    except IsADirectoryError:
        raise SpecError(IMAGE_PATH, "not a file", value=str(source), accepted="a disk image file") from None
    except PermissionError as exc:
        raise SpecError(IMAGE_PATH, f"cannot read the image: {exc.strerror}", value=str(source)) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ImagePullError(f"{source}: no space left on the device while storing the image") from None
        raise
    return "sha256:" + digest.hexdigest()


def _fetch_file(url: str, dest: Path) -> None:
    with dest.open("wb") as out:
        _copy_file(url, out)


def _fetch_http(url: str, dest: Path) -> None:
    with dest.open("wb") as out:
        download(url, out)


#: ``stream(url, out, transport, progress) -> digest``: copy and hash in one pass.
Streamer = Callable[[str, BinaryIO, Transport, "Progress | None"], str]

_STREAMERS: dict[Callable[[str, Path], None], Streamer] = {_fetch_file: _copy_file, _fetch_http: download}


def streaming_fetcher(source: ImageSourceSpec) -> Streamer | None:
    """The one-pass copy-and-hash function behind a built-in source (None for a plugin's source)."""
    return _STREAMERS.get(source.fetch)


def file_path(url: str) -> Path:
    """The local path of a ``file://`` URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise SpecError(IMAGE_PATH, "not a local file URL", value=url, accepted="file:///ABSOLUTE/PATH")
    return Path(urllib.parse.unquote(parsed.path))


@hookimpl
def vmpod_image_sources() -> Iterator[ImageSourceSpec]:
    """The built-in sources: ``file`` (local files) and ``http`` (``http``/``https`` downloads)."""
    yield ImageSourceSpec(name="file", schemes=("file",), fetch=_fetch_file)
    yield ImageSourceSpec(name="http", schemes=("http", "https"), fetch=_fetch_http)


def inspect_image(path: Path) -> tuple[str, int]:
    """``(format, virtual size)`` of the disk image at ``path``, read with ``qemu-img info``.

    :raises SpecError: when the file is not a disk image vmpod can boot from.
    """
    try:
        result = subprocess.run(["qemu-img", "info", "--output", "json", "-U", str(path)], capture_output=True,
                                text=True, timeout=_QEMU_IMG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise VmpodError("qemu-img is not installed (Debian package qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise VmpodError(f"qemu-img info {path} took more than {_QEMU_IMG_TIMEOUT} s") from None
    if result.returncode != 0:
        raise SpecError(IMAGE_PATH, f"not a readable disk image: {result.stderr.strip()}")
    info = json.loads(result.stdout)
    fmt = str(info.get("format", ""))
    size = int(info.get("virtual-size", 0))
    if fmt == "qcow2":
        if info.get("backing-filename"):
            raise SpecError(IMAGE_PATH, "the qcow2 image has a backing file of its own",
                            value=info["backing-filename"],
                            accepted="a standalone image (flatten it with qemu-img convert -O qcow2)")
    elif fmt == "raw":
        if not _looks_like_disk(path):
            raise SpecError(IMAGE_PATH, "not a disk image (no partition table, no ISO 9660 volume)",
                            accepted="a qcow2 image, or a raw disk with an MBR/GPT partition table")
    else:
        raise SpecError(IMAGE_PATH, f"unsupported image format {fmt!r}",
                        accepted="qcow2 or raw (convert with qemu-img convert -O qcow2)")
    if size <= 0 or size % 512:
        raise SpecError(IMAGE_PATH, "the image's virtual size is not a positive multiple of 512", value=size)
    return fmt, size


def _looks_like_disk(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(512)
        f.seek(32769)
        iso = f.read(5)
    return (len(head) == 512 and head[510:512] == b"\x55\xaa") or iso == b"CD001"


def file_stamp(path: Path) -> str:
    """A string that changes when the file at ``path`` is replaced or modified."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
