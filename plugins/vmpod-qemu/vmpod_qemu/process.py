"""Finding, waiting for and signalling a machine's qemu and supervisor processes, safely.

A pid alone is never trusted: pids are reused.  A process is identified by its pid, its
start time (field 22 of ``/proc/<pid>/stat``) and the kernel's boot id, as recorded in
``run.json`` when it started (:class:`ProcessIdentity`).  To signal or wait for it, a pidfd
is opened first and the identity checked *after* that, so the pidfd is known to refer to the
recorded process, and the signal goes through the pidfd: a process that exits between the
check and the signal cannot be confused with a newcomer that got its number.  A zombie counts
as exited.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from vmpod_qemu.supervisor import LOCK_FILE, process_matches

__all__ = ["ProcessIdentity", "cpu_time_ns", "rss_bytes", "supervisor_running", "wait_supervisor"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@attrs.frozen
class ProcessIdentity:
    """A process as recorded when it started: pid, start time in clock ticks, kernel boot id."""

    pid: int
    starttime: int
    boot_id: str

    @classmethod
    def from_run(cls, run: Mapping[str, Any], prefix: str = "") -> ProcessIdentity | None:
        """The identity under ``<prefix>pid``/``<prefix>starttime`` of a ``run.json`` record."""
        try:
            pid, starttime = int(run[f"{prefix}pid"]), int(run[f"{prefix}starttime"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(pid=pid, starttime=starttime, boot_id=str(run.get("boot_id", "")))

    def alive(self) -> bool:
        """True while the recorded process runs (not a zombie, not a newcomer with its pid)."""
        return process_matches(self.pid, self.starttime, self.boot_id)

    @contextlib.contextmanager
    def _pidfd(self) -> Iterator[int | None]:
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:
            yield None
            return
        try:
            yield fd if self.alive() else None
        finally:
            os.close(fd)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; True when it is gone."""
        with self._pidfd() as fd:
            if fd is None:
                return True
            readable, _, _ = select.select([fd], [], [], max(timeout, 0.0))
            return bool(readable) or not self.alive()

    def send(self, sig: signal.Signals) -> bool:
        """Send ``sig`` if (and only if) the recorded process still runs; True when sent."""
        with self._pidfd() as fd:
            if fd is None:
                return False
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                return False
            return True

    def cpu_time_ns(self) -> int:
        """User + system CPU time of the process so far, in nanoseconds (0 when it is gone)."""
        return cpu_time_ns(self.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the process, in bytes (0 when it is gone)."""
        return rss_bytes(self.pid)


def cpu_time_ns(pid: int) -> int:
    """User + system CPU time of ``pid`` in nanoseconds, from ``/proc/<pid>/stat`` (0 when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes, from ``/proc/<pid>/statm`` (0 when gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def supervisor_running(directory: Path) -> bool:
    """True while a supervisor holds the machine's ``supervisor.lock``."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's lock
    return False


@contextlib.contextmanager
def holding_supervisor_lock(directory: Path) -> Iterator[bool]:
    """Hold the supervisor lock (non-blocking) for the block; yields False when a supervisor holds it."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def wait_supervisor(directory: Path, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the supervisor to finish; True when none runs."""
    deadline = time.monotonic() + timeout
    while supervisor_running(directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
