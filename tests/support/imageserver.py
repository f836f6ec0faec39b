"""A real HTTP(S) server on 127.0.0.1 for the image tests and benchmark (test harness, not product code).

Usage::

    with ImageServer(root) as server:            # serves files under root at /files/<name>
        server.route("/stall", stall_handler)    # or any behaviour of your own
        url = server.url("/files/disk.qcow2")
        assert server.hits["/files/disk.qcow2"] == 1

``ImageServer(root, tls=make_tls(tmp))`` serves HTTPS with a certificate from a CA the
test made with ``openssl`` (:func:`make_tls`).  Built-in routes besides ``/files/``:
``/redirect/<n>/<name>`` (n redirects, then the file), ``/loop/a`` <-> ``/loop/b``,
``/drop/<name>`` (announces the whole file, sends half, closes), ``/stall/<name>``
(sends the headers and 1 KiB, then nothing until the server stops), ``/slow/<name>``
(waits 0.5 s before answering), ``/gate/<name>`` (waits until :attr:`gate` is set).
"""

from __future__ import annotations

import collections
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from attrs import frozen

Handler = Callable[[http.server.BaseHTTPRequestHandler, str], None]


@frozen
class TLSFiles:
    """A CA and a server certificate (for 127.0.0.1, localhost and images.test) signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> TLSFiles:
    """Make a throw-away CA and a server certificate with ``openssl``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:images.test\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [
        ["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", "/CN=vmpod test CA"],
        ["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=images.test"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(cert), "-days", "2", "-extfile", str(ext)],
    ]
    for argv in run:
        subprocess.run(argv, check=True, capture_output=True)
    return TLSFiles(ca=ca, cert=cert, key=key)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: ImageServer
    context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, the handshake happens in the request's thread (a failed one closes the socket)."""
        sock, address = self.socket.accept()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the tests provoke failed handshakes and dropped connections."""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """Dispatch to the longest matching route."""
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.hits[path] += 1
        for prefix in sorted(owner.routes, key=len, reverse=True):
            if path.startswith(prefix):
                owner.routes[prefix](self, path[len(prefix):])
                return
        self.send_error(404)


class ImageServer:
    """A threaded HTTP (or HTTPS, with ``tls``) server on 127.0.0.1 serving the files under ``root``."""

    def __init__(self, root: Path, tls: TLSFiles | None = None) -> None:
        self.root = root
        self.tls = tls
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.gate = threading.Event()
        self.routes: dict[str, Handler] = {
            "/files/": self._file, "/redirect/": self._redirect, "/loop/": self._loop, "/drop/": self._drop,
            "/stall/": self._stall, "/slow/": self._slow,
            "/gate/": self._gated,
        }
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self._server.context = context
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this server."""
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def route(self, prefix: str, handler: Handler) -> None:
        """Serve paths starting with ``prefix`` with ``handler(request, rest_of_path)``."""
        self.routes[prefix] = handler

    # ---- built-in behaviours ----------------------------------------------------------

    def _send_headers(self, request: http.server.BaseHTTPRequestHandler, size: int) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Content-Length", str(size))
        request.end_headers()

    def _file(self, request: http.server.BaseHTTPRequestHandler, name: str) -> None:
        path = self.root / name
        if not path.is_file():
            request.send_error(404)
            return
        size = path.stat().st_size
        self._send_headers(request, size)
        request.wfile.flush()
        with path.open("rb") as f:
            try:
                if self.tls is None:
                    request.connection.sendfile(f)
                else:
                    shutil.copyfileobj(f, request.wfile, 1 << 20)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _redirect(self, request: http.server.BaseHTTPRequestHandler, rest: str) -> None:
        count, _, name = rest.partition("/")
        n = int(count)
        request.send_response(302)
        request.send_header("Location", f"/redirect/{n - 1}/{name}" if n > 1 else f"/files/{name}")
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _loop(self, request: http.server.BaseHTTPRequestHandler, rest: str) -> None:
        request.send_response(301)
        request.send_header("Location", self.url("/loop/b" if rest == "a" else "/loop/a"))
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _drop(self, request: http.server.BaseHTTPRequestHandler, name: str) -> None:
        data = (self.root / name).read_bytes()
        self._send_headers(request, len(data))
        request.wfile.write(data[: len(data) // 2])
        request.wfile.flush()
        request.close_connection = True

    def _stall(self, request: http.server.BaseHTTPRequestHandler, name: str) -> None:
        data = (self.root / name).read_bytes()
        self._send_headers(request, len(data))
        request.wfile.write(data[:1024])
        request.wfile.flush()
        self.stop.wait(30)

    def _gated(self, request: http.server.BaseHTTPRequestHandler, name: str) -> None:
        self.gate.wait(30)
        self._file(request, name)

    def _slow(self, request: http.server.BaseHTTPRequestHandler, name: str) -> None:
        self.stop.wait(0.5)
        self._file(request, name)


def sparse_file(path: Path, size: int) -> Path:
    """A sparse file of ``size`` bytes."""
    with path.open("wb") as f:
        os.truncate(f.fileno(), size)
    return path


def main() -> None:
    """``python3 -m tests.support.imageserver DIR``: serve DIR, print the port, run until stdin closes."""
    import sys  # noqa: PLC0415

    with ImageServer(Path(sys.argv[1])) as server:
        print(server.port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
