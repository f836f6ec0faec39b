"""Run the libvirt backend's tests against a real libvirtd: start the daemons when none runs.

:func:`ensure_daemons` starts the system ``virtlogd`` and ``libvirtd`` (``-d``, as root) unless
they already run, and waits until libvirtd answers; the daemons it started are stopped when the
Python process exits (by pid, and only those).  ``scripts/start-libvirtd.sh`` does the same from a
shell, for CI.  As root there is one libvirtd for ``qemu:///system`` per machine (its qemu state
lives in fixed system directories), so "private" means "started by the tests when nobody runs
one"; tests only ever touch domains they created.

:func:`kill_libvirtd` and :func:`start_libvirtd` are for fault tests (libvirtd killed while
domains run); :func:`shared_dir` gives a directory qemu can reach when it runs as libvirt's
unprivileged user (pytest's ``tmp_path`` is under a 0700 directory).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

import attrs

from vmpod_libvirt import connection as lv

__all__ = ["LIBVIRTD_PIDFILE", "STARTED_MARKER", "Daemons", "ensure_daemons", "kill_libvirtd", "libvirtd_pid",
           "libvirtd_started_by_tests", "shared_dir", "start_libvirtd"]

LIBVIRTD_PIDFILE: Final = Path("/run/libvirtd.pid")
#: The pid of the libvirtd that vmpod's test tooling started (this module or scripts/start-libvirtd.sh):
#: fault tests kill only that one.
STARTED_MARKER: Final = Path("/run/vmpod-tests-libvirtd.pid")
VIRTLOGD_PIDFILE: Final = Path("/run/virtlogd.pid")
DEFAULT_URI: Final = "qemu:///system"
#: libvirtd probes qemu's capabilities on its first start (several seconds on a loaded machine).
START_TIMEOUT: Final = 120.0

_started: set[str] = set()


@attrs.frozen
class Daemons:
    """The daemons the tests use: ``started`` names those this process started (and will stop)."""

    uri: str
    started: frozenset[str]


def _pid(pidfile: Path, name: str) -> int | None:
    """The pid in ``pidfile`` when it is a live process called ``name``."""
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name else None


def libvirtd_pid() -> int | None:
    """The running libvirtd's pid (from its pidfile), or ``None``."""
    return _pid(LIBVIRTD_PIDFILE, "libvirtd")


def _answers(uri: str) -> bool:
    try:
        conn = lv.open_connection(uri)
    except lv.LibvirtError:
        return False
    lv.close_quietly(conn)
    return True


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is missing: apt-get install libvirt-daemon-system libvirt-clients")
    return path


def libvirtd_started_by_tests() -> bool:
    """True when the running libvirtd is one vmpod's test tooling started (:data:`STARTED_MARKER`)."""
    pid = libvirtd_pid()
    try:
        return pid is not None and int(STARTED_MARKER.read_text().strip()) == pid
    except (OSError, ValueError):
        return False


def start_libvirtd(uri: str = DEFAULT_URI, timeout: float = START_TIMEOUT, *, stop_at_exit: bool = True) -> int:
    """Start ``libvirtd -d`` (when none runs) and wait until it answers on ``uri``; its pid.

    :param stop_at_exit: stop it when this process exits (else it stays, as after the CI script).
    """
    started = False
    if libvirtd_pid() is None:
        subprocess.run([_require("libvirtd"), "-d"], check=True, stdin=subprocess.DEVNULL)
        started = True
        if stop_at_exit:
            _started.add("libvirtd")
    deadline = time.monotonic() + timeout
    while not _answers(uri):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"libvirtd does not answer on {uri} after {timeout:.0f} s")
        time.sleep(0.1)
    pid = libvirtd_pid()
    if pid is None:
        raise RuntimeError("libvirtd answers but its pidfile names no libvirtd process")
    if started:
        STARTED_MARKER.write_text(f"{pid}\n")
    return pid


def ensure_daemons(uri: str = DEFAULT_URI) -> Daemons:
    """virtlogd and libvirtd running and answering (started here when missing, stopped at exit)."""
    if _pid(VIRTLOGD_PIDFILE, "virtlogd") is None:
        subprocess.run([_require("virtlogd"), "-d"], check=True, stdin=subprocess.DEVNULL)
        _started.add("virtlogd")
        deadline = time.monotonic() + 10
        while _pid(VIRTLOGD_PIDFILE, "virtlogd") is None and time.monotonic() < deadline:
            time.sleep(0.05)
    if not _answers(uri):
        start_libvirtd(uri)
    return Daemons(uri=uri, started=frozenset(_started))


def kill_libvirtd(sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
    """Kill the running libvirtd with ``sig`` and wait until it is gone; its pid.

    Domains (qemu processes) and virtlogd are not touched.
    """
    pid = libvirtd_pid()
    if pid is None:
        raise RuntimeError("no libvirtd runs")
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            break
        if state in ("Z", "X"):
            break
        if time.monotonic() >= deadline:
            raise RuntimeError(f"libvirtd (pid {pid}) did not exit after signal {sig}")
        time.sleep(0.05)
    return pid


def _stop_started() -> None:
    """At exit: stop the daemons this process started (libvirtd first), by their pidfiles."""
    for name, pidfile in (("libvirtd", LIBVIRTD_PIDFILE), ("virtlogd", VIRTLOGD_PIDFILE)):
        if name in _started:
            pid = _pid(pidfile, name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


atexit.register(_stop_started)


def shared_dir(prefix: str) -> Path:
    """A new directory under ``/var/tmp`` that libvirt's qemu user can traverse (mode 0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path
