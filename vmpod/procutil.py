"""Processes that outlive vmpod: their identity, safe signalling, file locks and their JSON records.

Backends keep helper processes (a supervisor, a log follower) and hypervisor processes running
while no vmpod command runs, and find them again later through small JSON records.  This
module is what they share for that:

* **identity**: a pid alone is never trusted, pids are reused.  A process is identified by its
  pid, its start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot) and the
  kernel's boot id (:class:`ProcessIdentity`, :func:`process_matches`).  A zombie counts as
  exited.
* **signalling**: :meth:`ProcessIdentity.send` and :meth:`ProcessIdentity.wait` open a pidfd
  first and check the identity *after* that, so the pidfd is known to refer to the recorded
  process, and the signal goes through the pidfd: a process that exits between the check and
  the signal cannot be confused with a newcomer that got its number.
* **locks**: :func:`locked` and :func:`try_flock`, an exclusive ``flock`` on a file (one helper per
  machine).  A helper that was just killed keeps its lock for a moment (its main thread is already a
  zombie while its other threads are torn down); a non-blocking attempt told who the holder is
  (:func:`recorded_pid`) waits that moment out instead of taking the dying helper for a live one.
* **records**: :func:`read_json` and :func:`write_json` (atomic replacement).

It imports only the standard library (and the ``vmpod`` package, which imports pluggy): small
detached helpers use it, the qemu supervisor even under ``python -I -S`` (with an explicit import path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessIdentity",
    "boot_id",
    "locked",
    "parent_pid",
    "proc_starttime",
    "proc_stat",
    "process_matches",
    "read_json",
    "recorded_pid",
    "try_flock",
    "write_json",
]


# -- JSON records ------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON (write a temporary file, then rename).

    The temporary file is ``.<name>.<pid>.tmp`` in the same directory.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- locks -------------------------------------------------------------------------------------


#: How long a non-blocking lock attempt waits for a dying holder to let go.
DYING_HOLDER_GRACE = 5.0


def try_flock(fd: int, *, holder: Callable[[], int | None] | None = None,
              dying_grace: float = DYING_HOLDER_GRACE) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting for a live holder; True when taken.

    ``holder`` names the process expected to hold the lock (it reads the helper's pid record; the
    kernel cannot say: ``/proc/locks`` shows who *took* a lock, and a helper may have inherited it).
    While that process is exiting (SIGKILL pending, or its main thread a zombie: a multi-threaded
    process being killed releases its descriptors only when its last thread ends) the attempt is retried, for up to
    ``dying_grace`` seconds; a holder still there after that counts as live.  Without ``holder``
    (or with a holder that is running, or gone: then another process has the lock) a held lock
    gives False at once.
    """
    deadline = time.monotonic() + dying_grace
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pid = holder() if holder is not None else None
            if pid is None or pid <= 0 or not _exiting(pid) or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _exiting(pid: int) -> bool:
    """True while ``pid`` is being killed: its main thread a zombie, or SIGKILL pending (a thread in
    uninterruptible sleep, an ``fsync`` say, dies only when that call returns)."""
    fields = proc_stat(pid)
    if fields is None:
        return False
    if fields[0] in ("Z", "X"):
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    kill_bit = 1 << (signal.SIGKILL - 1)
    return any(int(line.split()[1], 16) & kill_bit for line in status if line.startswith(("SigPnd:", "ShdPnd:")))


def recorded_pid(path: Path, key: str = "pid") -> Callable[[], int | None]:
    """A ``holder`` for :func:`try_flock`: the pid under ``key`` in the JSON record at ``path``, read when asked."""
    def read() -> int | None:
        value = (read_json(path) or {}).get(key)
        return value if isinstance(value, int) else None
    return read


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True,
           holder: Callable[[], int | None] | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, mode 0600) for the ``with`` block.

    Yields True when the lock is held; False when ``blocking`` is off and another process holds it
    (see :func:`try_flock`: a dying ``holder`` is waited for).  The descriptor is close-on-exec: child
    processes do not inherit it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if blocking:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif not try_flock(fd, holder=holder):
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- process identity --------------------------------------------------------------------------


def boot_id() -> str:
    """The kernel's boot id (``""`` when unknown): a pid from an earlier boot of the host means nothing now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (``[0]`` is the state), or ``None`` when gone.

    Field ``n`` of proc(5) is at index ``n - 3``.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def proc_starttime(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks since boot), or ``None`` when it is gone or a zombie.

    A process whose main thread ended while another thread still runs (a multi-threaded process
    being killed: its main thread shows as a zombie first) is not gone yet: it still holds its
    descriptors and locks.
    """
    fields = proc_stat(pid)
    if fields is None:
        return None
    if fields[0] in ("Z", "X") and not _other_threads_run(pid):
        return None
    return int(fields[19])


def _other_threads_run(pid: int) -> bool:
    try:
        threads = [entry.name for entry in os.scandir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for tid in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2 :].split(maxsplit=1)[0] not in ("Z", "X"):
            return True
    return False


def parent_pid(pid: int) -> int:
    """The parent of process ``pid``, or 0 when it is gone."""
    fields = proc_stat(pid)
    return 0 if fields is None else int(fields[1])


def process_matches(pid: int, starttime: int, expected_boot_id: str) -> bool:
    """True when ``pid`` is alive and is the very process that had ``starttime`` in this boot.

    An empty ``expected_boot_id`` skips the boot check.
    """
    if pid <= 0 or (expected_boot_id and expected_boot_id != boot_id()):
        return False
    return proc_starttime(pid) == starttime


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    """A process as recorded when it started: pid, start time in clock ticks, kernel boot id."""

    pid: int
    starttime: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the running process ``pid`` now, or ``None`` when it is gone or a zombie."""
        starttime = proc_starttime(pid)
        return None if starttime is None else cls(pid=pid, starttime=starttime, boot_id=boot_id())

    @classmethod
    def from_run(cls, run: Mapping[str, Any], prefix: str = "") -> ProcessIdentity | None:
        """The identity under ``<prefix>pid``/``<prefix>starttime`` and ``boot_id`` of a record, or ``None``."""
        try:
            pid, starttime = int(run[f"{prefix}pid"]), int(run[f"{prefix}starttime"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(pid=pid, starttime=starttime, boot_id=str(run.get("boot_id", "")))

    def to_run(self, prefix: str = "") -> dict[str, Any]:
        """The record :meth:`from_run` reads: ``{"<prefix>pid", "<prefix>starttime", "boot_id"}``."""
        return {f"{prefix}pid": self.pid, f"{prefix}starttime": self.starttime, "boot_id": self.boot_id}

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
