"""The fake backend's interactive console: an echo, served like the real backends' consoles.

No guest runs, so the "guest" of a fake console is a thread that echoes back whatever it is
sent (as a terminal in echo mode would).  It is served exactly as a real machine's console is:
a :class:`vmpod.consolemux.ConsoleMux` on a unix socket, so ``vmpod attach`` and every client
of :meth:`vmpod.backend.Backend.console` work the same way (several clients at once, each sees
the echo of what anybody typed).

The mux runs in the process whose backend object was asked for the console first (the fake
has no detached processes): ``consoles/<machine>.lock`` is held while it serves; another process
asking gets the same socket, and once the serving process is gone, the next one to ask serves
it again.  ``stop``, ``destroy``, ``crash`` and ``power_off`` remove the socket and the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from pathlib import Path
from typing import Final

from vmpod.consolemux import ConsoleMux, bind_attach_socket

__all__ = ["CONSOLES_DIR", "EchoConsoles"]

#: Where the console sockets live, under the fake backend's directory.
CONSOLES_DIR: Final = "consoles"


def _echo(guest: socket.socket) -> None:
    with guest:
        while data := guest.recv(65536):
            guest.sendall(data)


class EchoConsoles:
    """The echoing consoles this process serves (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / CONSOLES_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self._served: dict[str, tuple[int, ConsoleMux]] = {}
        self._guard = threading.Lock()

    def socket_path(self, key: str) -> Path:
        """The console socket of the machine whose file-safe name is ``key``."""
        return self.directory / f"{key}.sock"

    def serve(self, key: str) -> Path:
        """Make sure somebody serves ``key``'s console (this process, unless another one does); its socket."""
        path = self.socket_path(key)
        with self._guard:
            if key in self._served and path.exists():
                return path
            self._discard_locked(key, remove=False)
            lock = os.open(self.directory / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                return path  # another process serves it
            try:
                listener = bind_attach_socket(path)
            except OSError:
                os.close(lock)
                raise
            console, guest = socket.socketpair()
            threading.Thread(target=_echo, args=(guest,), name=f"fake-console-{key}", daemon=True).start()
            opened = [False]

            def opener() -> int:
                if opened[0]:
                    raise OSError("the fake console is closed")
                opened[0] = True
                console.setblocking(False)
                return console.detach()

            self._served[key] = (lock, ConsoleMux(listener, opener, reopen=False).start())
            return path

    def discard(self, key: str) -> None:
        """Stop serving ``key``'s console (if this process does) and remove its files."""
        with self._guard:
            self._discard_locked(key, remove=True)

    def _discard_locked(self, key: str, *, remove: bool) -> None:
        served = self._served.pop(key, None)
        if served is not None:
            lock, mux = served
            mux.close()  # closes the echo's peer: the echo thread ends
            os.close(lock)
        if remove or served is not None:
            self.socket_path(key).unlink(missing_ok=True)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{key}.lock").unlink()

    def close(self) -> None:
        """Stop serving every console of this process (their sockets are removed)."""
        with self._guard:
            for key in list(self._served):
                self._discard_locked(key, remove=False)
