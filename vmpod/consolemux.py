"""The console monitor: one hypervisor console channel shared by any number of attach clients.

A hypervisor gives a machine's serial console to one reader at a time (qemu's ``console.sock``
accepts one client, a pty has one slave side).  :class:`ConsoleMux` holds that channel in the
machine's per-machine process (the qemu supervisor, the libvirt log follower) and serves it on
``attach.sock`` (:data:`ATTACH_SOCKET`, mode 0600) in the machine's runtime directory:

* the channel is read continuously, attached or not, so the hypervisor never blocks on a full
  console buffer (which would stall the guest's serial port);
* every byte read is sent to every connected client; a client that stops reading gets at most
  :data:`CLIENT_BUFFER` bytes queued and is then dropped: it never stalls the others;
* what clients write goes to the console, in the order it arrives; while the console does not
  take input, clients are not read (at most :data:`INPUT_BUFFER` bytes wait);
* a client that shuts down its writing side (end of its input) keeps receiving output until it
  closes; a closed channel is reopened every :data:`REOPEN_INTERVAL` seconds (unless told not to).

There is no replay: an attached client sees what the guest writes from then on, as with
``kubectl attach``; the pod log (written from the hypervisor's raw file, not from this channel)
has everything.  The protocol is raw bytes both ways.

Imports only the standard library: the qemu supervisor runs it under ``python3 -I -S``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = [
    "ATTACH_SOCKET",
    "CLIENT_BUFFER",
    "INPUT_BUFFER",
    "REOPEN_INTERVAL",
    "ConsoleMux",
    "bind_attach_socket",
    "connect_unix",
    "open_pty",
    "open_unix",
]

#: The attach socket's name in a machine's runtime directory.
ATTACH_SOCKET: Final = "attach.sock"
#: Output queued for one client before it is dropped as not reading.
CLIENT_BUFFER: Final = 1 << 20
#: Client input waiting for the console before clients are no longer read.
INPUT_BUFFER: Final = 64 << 10
#: How often a closed console channel is reopened.
REOPEN_INTERVAL: Final = 0.2
_MAX_UNIX_PATH: Final = 107
_CHUNK: Final = 65536
_GONE: Final = (errno.EPIPE, errno.ECONNRESET, errno.EIO, errno.ENOTCONN, errno.EBADF)


def _short(path: Path, use: Callable[[str], None]) -> None:
    """Call ``use`` with ``path``, or, when it is too long for a unix socket, with a ``/proc/self/fd`` path to it."""
    if len(os.fsencode(str(path))) <= _MAX_UNIX_PATH:
        use(str(path))
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        use(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def connect_unix(path: str | Path, timeout: float | None = None) -> socket.socket:
    """A stream socket connected to ``path`` (any length: a long path is reached through its directory)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        _short(Path(path), sock.connect)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_attach_socket(path: Path) -> socket.socket:
    """A listening, non-blocking, close-on-exec unix socket at ``path``, mode 0600 (a stale one is replaced).

    Call it only while holding the machine's monitor lock: whatever was at ``path`` is replaced.
    The socket is bound under a temporary name, made 0600 and then renamed into place, so it
    is never reachable with other permissions (and the process-wide umask is left alone: the
    caller may have other threads).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _short(temporary, sock.bind)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        sock.listen(16)
    except BaseException:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


def open_unix(path: Path) -> Callable[[], int]:
    """An opener of the console channel that is a unix stream socket at ``path`` (qemu's ``console.sock``)."""

    def opener() -> int:
        sock = connect_unix(path, timeout=1.0)
        sock.setblocking(False)
        return sock.detach()

    return opener


def open_pty(path: Callable[[], str]) -> Callable[[], int]:
    """An opener of the console channel that is a pty's slave side (``path()`` names it), set to raw mode."""

    def opener() -> int:
        fd = os.open(path(), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = termios.tcgetattr(fd)
            mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                         | termios.IGNCR | termios.ICRNL | termios.IXON)
            mode[1] &= ~termios.OPOST
            mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
            mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
            termios.tcsetattr(fd, termios.TCSANOW, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return opener


class _Client:
    __slots__ = ("out", "reading", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        self.reading = True


class ConsoleMux:
    """Serves one console channel to many clients on a listening socket (see the module docstring).

    :param listener: the listening socket (:func:`bind_attach_socket`); the mux owns it from now on.
    :param opener: opens the console channel, returning a file descriptor the mux owns; raises
        :class:`OSError` while it cannot (it is retried).
    :param reopen: reopen the channel after it closed (False for a pty: a closed pty is gone for good).
    """

    def __init__(self, listener: socket.socket, opener: Callable[[], int], *, reopen: bool = True,
                 client_buffer: int = CLIENT_BUFFER) -> None:
        self.listener = listener
        self.opener = opener
        self.reopen = reopen
        self.client_buffer = client_buffer
        self.channel = -1
        self.opened = 0
        self.pending = bytearray()
        self.clients: dict[int, _Client] = {}
        self._next_open = 0.0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ConsoleMux:
        """Serve in a daemon thread (the caller's own loop goes on); returns ``self``."""
        self._thread = threading.Thread(target=self.serve, name="vmpod-console-mux", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, disconnect every client and the channel; the socket file stays (the lock holder's)."""
        self._closing = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for client in list(self.clients.values()):
            self._drop(client)
        self._close_channel()
        self.listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ---- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Run until :meth:`close` (in the calling thread)."""
        poller = select.poll()
        while not self._closing:
            self._ensure_channel()
            watched = self._watch(poller)
            timeout = None if self.channel >= 0 or not self._may_open() else REOPEN_INTERVAL * 1000
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in watched:
                poller.unregister(fd)
            for fd, event in events:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 512)
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd == self.channel:
                    self._channel_event(event)
                elif fd in self.clients:
                    self._client_event(self.clients[fd], event)

    def _may_open(self) -> bool:
        return self.reopen or self.opened == 0

    def _watch(self, poller: select.poll) -> list[tuple[int, int]]:
        watched = [(self._wake_r, select.POLLIN), (self.listener.fileno(), select.POLLIN)]
        if self.channel >= 0:
            watched.append((self.channel, select.POLLIN | (select.POLLOUT if self.pending else 0)))
        take_input = len(self.pending) < INPUT_BUFFER
        for fd, client in self.clients.items():
            mask = (select.POLLIN if client.reading and take_input else 0) | (select.POLLOUT if client.out else 0)
            watched.append((fd, mask))  # 0: still told about errors and hang-ups
        for fd, mask in watched:
            poller.register(fd, mask)
        return watched

    def _ensure_channel(self) -> None:
        if self.channel >= 0 or not self._may_open() or time.monotonic() < self._next_open:
            return
        self._next_open = time.monotonic() + REOPEN_INTERVAL
        try:
            self.channel = self.opener()
        except OSError as exc:
            if self.opened == 0 or self.reopen:
                return
            print(f"console: cannot open the console channel: {exc}", file=sys.stderr, flush=True)
            return
        self.opened += 1
        if self.opened > 1:
            print("console: reopened the console channel", file=sys.stderr, flush=True)
        self._flush_channel()

    def _close_channel(self) -> None:
        if self.channel >= 0:
            with contextlib.suppress(OSError):
                os.close(self.channel)
            self.channel = -1

    def _channel_event(self, event: int) -> None:
        if event & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = os.read(self.channel, _CHUNK)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._close_channel()
                return
            if data:
                self._broadcast(data)
        if event & select.POLLOUT:
            self._flush_channel()

    def _flush_channel(self) -> None:
        if self.channel < 0 or not self.pending:
            return
        try:
            written = os.write(self.channel, self.pending)
        except BlockingIOError:
            return
        except OSError:
            self._close_channel()
            return
        del self.pending[:written]

    def _broadcast(self, data: bytes) -> None:
        for client in list(self.clients.values()):
            if len(client.out) + len(data) > self.client_buffer:
                self._drop(client)  # it stopped reading: it must not hold the others up
                continue
            client.out += data
            self._send(client)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of descriptors: the client sees its connection refused or closed
            sock.setblocking(False)
            self.clients[sock.fileno()] = _Client(sock)

    def _client_event(self, client: _Client, event: int) -> None:
        if event & select.POLLIN and client.reading:
            try:
                data = client.sock.recv(_CHUNK)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop(client)
                return
            if data == b"":
                client.reading = False  # end of its input: it still gets output
            elif data:
                self.pending += data
                self._flush_channel()
        elif event & (select.POLLHUP | select.POLLERR):
            self._drop(client)
            return
        if event & select.POLLOUT:
            self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        del client.out[:sent]

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()
