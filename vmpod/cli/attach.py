"""``vmpod attach POD``: the interactive serial console of a pod's VM (kubectl attach style).

It connects to the console monitor of the VM (:mod:`vmpod.consolemux`, ``attach.sock``): any
number of ``vmpod attach`` may run at once, each sees the console's output from then on and
what each types goes to the console.

* On a terminal, stdin is put in raw mode (every key goes to the guest, Ctrl-C included);
  **Ctrl-]** detaches and restores the terminal.
* Over a pipe, stdin is forwarded as it comes; at its end the output is still printed for
  ``--linger`` seconds (default 2: the guest's answer to the last line), then it exits 0.

It also ends (0) when the console closes (the VM stopped, or its console monitor was killed:
attaching again restarts it).  An unknown pod, or one whose VM does not run, is a one-line error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Final

from vmpod.cli._runtime import add_namespace, state_dir
from vmpod.errors import NotFoundError, SpecError, VmpodError

__all__ = ["DETACH", "register"]

#: Ctrl-], the detach key on a terminal (as telnet and virsh console).
DETACH: Final = 0x1D
#: How long a console socket that refuses connections is retried (a monitor being restarted).
_CONNECT_RETRY: Final = 5.0
_CHUNK: Final = 65536


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``attach``."""
    parser = subparsers.add_parser(
        "attach", help="attach to the serial console of a pod's VM",
        description="Attach to the serial console of a running pod's VM (kubectl attach style). On a terminal, "
                    "Ctrl-] detaches. Over a pipe, stdin is sent and, at its end, output is printed for "
                    "--linger seconds more. Several clients may attach at once.")
    parser.add_argument("name", metavar="POD")
    parser.add_argument("--linger", type=float, default=2.0, metavar="SECONDS",
                        help="over a pipe: how long to keep printing output after stdin ends (default 2)")
    add_namespace(parser)
    parser.set_defaults(handler=_attach)


def _connect(path: str) -> socket.socket:
    from vmpod.consolemux import connect_unix  # noqa: PLC0415

    deadline = time.monotonic() + _CONNECT_RETRY
    while True:
        try:
            sock = connect_unix(path, timeout=5.0)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            if time.monotonic() >= deadline:
                raise VmpodError(f"cannot attach: the console monitor at {path} does not answer ({exc.strerror})") \
                    from None
            time.sleep(0.1)
            continue
        except OSError as exc:
            raise VmpodError(f"cannot attach to the console at {path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


def _pump(sock: socket.socket, *, interactive: bool, linger: float) -> int:
    """Copy stdin to the console and the console to stdout until detach, console end, or linger after EOF."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    stdin_open = True
    input_ended = False
    lingering_until: float | None = None
    outgoing = bytearray()
    while True:
        readable = [sock]
        if stdin_open and len(outgoing) < _CHUNK:
            readable.append(stdin)  # type: ignore[arg-type]
        timeout = None if lingering_until is None else max(0.0, lingering_until - time.monotonic())
        ready, writable, _ = select.select(readable, [sock] if outgoing else [], [], timeout)
        if not ready and not writable:
            return 0  # lingered long enough after the end of stdin
        if sock in ready:
            try:
                data = sock.recv(_CHUNK)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                if interactive:
                    sys.stderr.write("\r\n")
                print("vmpod: the console closed (the VM stopped, or its console monitor ended)", file=sys.stderr)
                return 0
            if data:
                _write_all(stdout, data)
        if stdin in ready:
            chunk = os.read(stdin, _CHUNK)
            if interactive and DETACH in chunk:
                outgoing += chunk[: chunk.index(DETACH)]
                with contextlib.suppress(OSError):
                    sock.setblocking(True)
                    sock.sendall(outgoing)
                return 0
            if chunk:
                outgoing += chunk
            else:
                stdin_open = False
                lingering_until = time.monotonic() + linger
        if outgoing:
            try:
                sent = sock.send(outgoing)
            except BlockingIOError:
                sent = 0
            except OSError:
                print("vmpod: the console closed (the VM stopped, or its console monitor ended)", file=sys.stderr)
                return 0
            del outgoing[:sent]
        if not stdin_open and not outgoing and not input_ended:
            input_ended = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the end of input, once all of it is out


def _attach(args: argparse.Namespace) -> int:
    from vmpod.runtime import Runtime  # noqa: PLC0415

    if not args.linger >= 0:
        raise SpecError("--linger", "must be a number of seconds, 0 or more", value=args.linger)
    directory = state_dir(args)
    if not (directory / "vmpod.db").exists():
        raise NotFoundError(f'pod "{args.name}" not found in namespace "{args.namespace}"')
    # The runtime stays open (read-only: no lock held) while attached: a backend may serve the
    # console from this process (the fake backend does).
    with Runtime.open(directory, backend=args.backend, readonly=True) as runtime:
        record = runtime.get(args.name, args.namespace)
        endpoint = runtime.attach_endpoint(record.uid)
        return _session(endpoint.kind, endpoint.path, record.full_name, linger=args.linger)


def _session(kind: str, path: str, full_name: str, *, linger: float) -> int:
    if kind != "unix":
        raise VmpodError(f'the console of pod "{full_name}" is a {kind} ({path}), '
                         "not a console monitor socket: attach to it directly")
    interactive = sys.stdin.isatty()
    with _connect(path) as sock:
        if not interactive:
            return _pump(sock, interactive=False, linger=linger)
        print(f"Attached to the console of pod {full_name}; Ctrl-] detaches. "
              "If you see no prompt, press Enter.", file=sys.stderr)
        with _raw(sys.stdin.fileno()):
            code = _pump(sock, interactive=True, linger=linger)
        print("\nvmpod: detached", file=sys.stderr)
        return code
