"""Running one probe against an endpoint, with Kubernetes' semantics.

* ``tcpSocket``: success when a TCP connection opens within ``timeoutSeconds``.  Through a
  user-mode (slirp) port forward (``via_forward``) that is not enough: slirp accepts every
  connection on the host side at once and only then connects to the guest.  What the host
  side can see (libslirp's socket states):

  - the guest port is closed: the guest answers with a reset and slirp closes the connection
    at once (end of file);
  - the guest answers (handshake done): slirp reads the host socket from then on, so a
    half-close (``shutdown(SHUT_WR)``) of the probe reaches the guest's server, which closes
    its side (or it sent something, an SSH banner, already);
  - the guest does not answer (still booting, no address yet): slirp does not read the host
    socket at all, so nothing happens.

  So the probe waits half the timeout for an early close (failure: nothing listens) or data
  (success), then half-closes and waits the rest: data or a close is success, silence is
  failure.  A server that keeps a half-closed connection open without a word is taken for a
  guest that does not answer: probe such a port with ``httpGet``, or a port that speaks first.
* ``httpGet``: ``GET scheme://host:port/path`` with the probe's headers (a ``Host`` header
  replaces the host), ``User-Agent: vmpod-probe/<version>`` and ``Accept: */*`` unless given;
  success when ``200 <= status < 400``.  Redirects to the same host and port are followed (at
  most 10, as kubelet); a redirect elsewhere is a success with a warning, as in kubelet.
  HTTPS does not verify the certificate (kubelet neither).  At most 10 KiB of the body are read.
* ``exec``: not supported for VM pods (it needs a guest agent): :data:`Result.UNSUPPORTED`.

Every check returns a :class:`Outcome`; none raises for a network error.
"""

from __future__ import annotations

import enum
import http.client
import select
import socket
import ssl
import time
import urllib.parse

import attrs

from vmpod.model import ExecAction, HTTPGetAction, ProbeHandler, TCPSocketAction

__all__ = ["EXEC_UNSUPPORTED", "Outcome", "Result", "describe_handler", "run_check"]

#: The message of an ``exec`` probe.
EXEC_UNSUPPORTED = "unsupported: exec probes need a guest agent"

_MAX_REDIRECTS = 10
_MAX_BODY = 10 * 1024


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("vmpod")
    except Exception:
        return "0"


class Result(enum.StrEnum):
    """The result of one probe run (kubelet's ``probe.Result``, plus ``unsupported``)."""

    SUCCESS = "success"
    FAILURE = "failure"
    UNSUPPORTED = "unsupported"


@attrs.frozen
class Outcome:
    """One probe run: its result and a human message (why it failed, or a warning)."""

    result: Result
    message: str = ""


def describe_handler(handler: ProbeHandler) -> str:
    """kubectl's short form: ``tcp-socket :22``, ``http-get http://:80/healthz``, ``exec [cat /ok]``."""
    if isinstance(handler, TCPSocketAction):
        return f"tcp-socket {handler.host}:{handler.port}"
    if isinstance(handler, HTTPGetAction):
        return f"http-get {handler.scheme.lower()}://{handler.host}:{handler.port}{handler.path}"
    return f"exec [{' '.join(handler.command)}]"


def run_check(handler: ProbeHandler, host: str, port: int, timeout: float, *, via_forward: bool = False) -> Outcome:
    """Run ``handler`` once against ``host:port`` within ``timeout`` seconds.

    :param via_forward: ``host:port`` is a user-mode port forward (see the module docstring).
    """
    if isinstance(handler, ExecAction):
        return Outcome(Result.UNSUPPORTED, EXEC_UNSUPPORTED)
    if isinstance(handler, TCPSocketAction):
        return _tcp(host, port, timeout, via_forward=via_forward)
    return _http(handler, host, port, timeout)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tcp(host: str, port: int, timeout: float, *, via_forward: bool) -> Outcome:
    deadline = time.monotonic() + timeout
    address = _address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return Outcome(Result.FAILURE, f"dial tcp {address}: i/o timeout")
    except OSError as exc:
        return Outcome(Result.FAILURE, f"dial tcp {address}: {exc.strerror or exc}")
    with sock:
        if not via_forward:
            return Outcome(Result.SUCCESS)
        early = _wait_readable(sock, (deadline - time.monotonic()) / 2)
        if early == "data":
            return Outcome(Result.SUCCESS)
        if early is not None:
            return Outcome(Result.FAILURE, f"tcp {address}: the forwarded connection was {early} at once "
                                           "(nothing listens on the guest port)")
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            return Outcome(Result.FAILURE, f"tcp {address}: {exc.strerror or exc}")
        late = _wait_readable(sock, deadline - time.monotonic())
        if late in ("data", "closed"):
            return Outcome(Result.SUCCESS)
        if late is None:
            return Outcome(Result.FAILURE, f"tcp {address}: the guest did not answer the forwarded connection "
                                           f"within {timeout:g}s")
        return Outcome(Result.FAILURE, f"tcp {address}: the forwarded connection was {late}")


def _wait_readable(sock: socket.socket, seconds: float) -> str | None:
    """Wait up to ``seconds`` for ``sock``: ``"data"``, ``"closed"``, ``"reset"``, or None (nothing happened)."""
    readable, _, _ = select.select([sock], [], [], max(0.0, seconds))
    if not readable:
        return None
    try:
        return "data" if sock.recv(1, socket.MSG_PEEK) else "closed"
    except OSError:
        return "reset"


def _http(handler: HTTPGetAction, host: str, port: int, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    headers = {"User-Agent": f"vmpod-probe/{_version()}", "Accept": "*/*"}
    host_header = None
    for header in handler.http_headers:
        if header.name.lower() == "host":
            host_header = header.value
        else:
            headers[header.name] = header.value
    scheme = handler.scheme.lower()
    path = handler.path if handler.path.startswith("/") else "/" + handler.path
    url = f"{scheme}://{_address(host, port)}{path}"
    for _ in range(_MAX_REDIRECTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome(Result.FAILURE, f'Get "{url}": context deadline exceeded')
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection(host, port, timeout=remaining, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=remaining)
        try:
            connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", host_header or parts.netloc)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            response.read(_MAX_BODY)
            status, location = response.status, response.getheader("Location")
        except TimeoutError:
            return Outcome(Result.FAILURE, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded '
                                           "while awaiting headers)")
        except (OSError, http.client.HTTPException) as exc:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return Outcome(Result.FAILURE, f'Get "{url}": {detail}')
        finally:
            connection.close()
        if status in (301, 302, 303, 307, 308) and location:
            following = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(following).netloc != parts.netloc:
                return Outcome(Result.SUCCESS, f"Probe terminated redirects, Response: {status} "
                                               f"(redirect to another host: {following})")
            url = following
            continue
        if 200 <= status < 400:
            return Outcome(Result.SUCCESS)
        return Outcome(Result.FAILURE, f"HTTP probe failed with statuscode: {status}")
    return Outcome(Result.FAILURE, f'Get "{url}": stopped after {_MAX_REDIRECTS} redirects')
