"""Synchronous calls to a qemu's QMP monitor, through QEMU's own ``qemu.qmp`` library.

``qemu.qmp``'s :class:`~qemu.qmp.QMPClient` is asyncio.  :func:`qmp_call` runs one short
session (connect, negotiate, run the commands, disconnect) on a private event loop that it
creates and closes, so it never touches the caller's loop; called from a thread that is
already running an event loop (a CRI daemon), the session runs in a worker thread.

The socket is connected here and handed to the client: a unix socket path longer than the
kernel's 108-byte limit is reached through ``/proc/self/fd/<directory fd>/<name>``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from qemu.qmp import QMPClient, QMPError
from qemu.qmp.qmp_client import ExecuteError

from vmpod.errors import BackendError

__all__ = ["QMPUnavailable", "qmp_call"]

_MAX_UNIX_PATH: Final = 107


class QMPUnavailable(BackendError):
    """The QMP socket does not answer (qemu is gone, starting, or wedged)."""


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        target = str(path)
        if len(os.fsencode(target)) <= _MAX_UNIX_PATH:
            sock.connect(target)
        else:
            directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{directory}/{path.name}")
            finally:
                os.close(directory)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def _session(path: Path, commands: Sequence[tuple[str, Mapping[str, object] | None]],
                   timeout: float) -> list[object]:
    sock = _connect(path, timeout)
    client = QMPClient(f"vmpod-qemu:{path.parent.name}")
    try:
        await asyncio.wait_for(client.connect(sock), timeout)
    except BaseException:
        sock.close()
        raise
    try:
        return [await asyncio.wait_for(client.execute(name, arguments), timeout) for name, arguments in commands]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), timeout)


def _run_private(path: Path, commands: Sequence[tuple[str, Mapping[str, object] | None]],
                 timeout: float) -> list[object]:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_session(path, commands, timeout))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def qmp_call(path: Path, *commands: tuple[str, Mapping[str, object] | None], timeout: float = 5.0) -> list[Any]:
    """Run QMP ``commands`` (``(name, arguments)`` pairs) in one session; returns their return values.

    :raises QMPUnavailable: when nobody answers on ``path`` (no socket, refused, timeout, closed).
    :raises BackendError: when qemu answers a command with an error (its message is kept).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:
        in_loop = True
    try:
        if not in_loop:
            return _run_private(path, commands, timeout)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vmpod-qmp") as pool:
            return pool.submit(_run_private, path, commands, timeout).result()
    except ExecuteError as exc:
        raise BackendError(f"qemu: {', '.join(name for name, _ in commands)}: {exc}") from exc
    except (OSError, EOFError, TimeoutError, QMPError) as exc:
        raise QMPUnavailable(f"qemu: QMP at {path} does not answer: {exc or type(exc).__name__}") from exc
