"""A machine's supervisor (held lock, waiting for it) and qemu's resource use, from ``/proc``.

Process identities and pidfd-safe signalling are :mod:`vmpod.procutil`'s
(:class:`~vmpod.procutil.ProcessIdentity`): a pid alone is never trusted, pids are reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from vmpod.procutil import locked, proc_stat, recorded_pid, try_flock
from vmpod_qemu.supervisor import LOCK_FILE, RUN_FILE

__all__ = ["cpu_time_ns", "holding_supervisor_lock", "rss_bytes", "supervisor_running", "wait_supervisor"]

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def cpu_time_ns(pid: int) -> int:
    """User + system CPU time of ``pid`` in nanoseconds, from ``/proc/<pid>/stat`` (0 when gone)."""
    fields = proc_stat(pid)
    if fields is None:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes, from ``/proc/<pid>/statm`` (0 when gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _supervisor(directory: Path) -> Callable[[], int | None]:
    """Who holds the supervisor lock: the supervisor ``run.json`` names."""
    return recorded_pid(directory / RUN_FILE, "supervisor_pid")


def supervisor_running(directory: Path) -> bool:
    """True while a supervisor holds the machine's ``supervisor.lock`` (never creates the lock file)."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not try_flock(fd, holder=_supervisor(directory))  # a just-killed one is waited for
    finally:
        os.close(fd)  # closing releases the probe's lock


@contextlib.contextmanager
def holding_supervisor_lock(directory: Path) -> Iterator[bool]:
    """Hold the supervisor lock (non-blocking) for the block; yields False when a supervisor holds it."""
    with locked(directory / LOCK_FILE, blocking=False, holder=_supervisor(directory)) as mine:
        yield mine


def wait_supervisor(directory: Path, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the supervisor to finish; True when none runs."""
    deadline = time.monotonic() + timeout
    while supervisor_running(directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
