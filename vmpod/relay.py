"""A small TCP relay: a loopback listener whose every connection is joined to one target address.

``vmpod port-forward`` and ``vmpod ssh`` use it for pods whose VM has its own IP on a CNI
network (the host reaches the pod IP directly; no hypervisor forward is involved), and
``vmpod vnc PORT`` to put a VNC server on a port of the user's choosing.  Each accepted
connection gets two threads copying bytes, one per direction; a half-close is passed on
(``shutdown(SHUT_WR)``), so request/response protocols that rely on it work.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from typing import Final

from vmpod.backend import LOOPBACK
from vmpod.errors import ConflictError, VmpodError

__all__ = ["TcpRelay"]

log = logging.getLogger(__name__)

_CHUNK: Final = 256 * 1024
#: How long connecting to the target may take before the client's connection is dropped.
_CONNECT_TIMEOUT: Final = 10.0


class TcpRelay:
    """Listen on ``127.0.0.1:port`` (0: any free port) and relay each connection to ``target``.

    Use as a context manager, or call :meth:`close`; connections in flight are cut on close.

    :raises ConflictError: the port is taken (the message names it).
    """

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        try:
            self._listener = socket.create_server((LOOPBACK, port), backlog=64)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConflictError(f"local port {port} (tcp on {LOOPBACK}) is already in use; "
                                    "choose another local port") from None
            raise VmpodError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}") from None
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT)
        except OSError as exc:
            log.warning("relay %d: cannot connect to %s:%d: %s", self.port, *self.target, exc.strerror or exc)
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed.is_set():
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        back = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
        back.start()
        _copy(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then half-close ``sink``."""
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if count == 0:
                break
            sink.sendall(view[:count])
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
