"""Per-run records of a libvirt machine, in its runtime directory (standard library and :mod:`vmpod.procutil`).

libvirt knows whether a domain runs, but not when vmpod started it, when it stopped, or why in a
way that survives a libvirtd restart (an inactive domain's shutoff reason is not kept).  So the
backend and the log follower keep three small JSON files next to the serial output, each naming
the *boot* (one ``start``) it belongs to:

``libvirt-run.json``
    ``{"boot", "started_at", "domain_id"}``: the latest start (written by ``start``, or when a
    domain started outside vmpod is first seen running); ``domain_id`` is libvirt's domain id
    of that run, so that a domain restarted behind vmpod's back counts as a new run.
``libvirt-stop.json``
    ``{"boot", "forced"}``: vmpod asked this boot to stop (``forced``: it had to destroy it).
``libvirt-exit.json``
    ``{"boot", "started_at", "finished_at", "exit_code", "exit_reason", "message"}``: how the boot
    ended.  Written once per boot by whoever sees the domain stopped first (the follower, within
    half a second; ``stop``; or ``status``), under :data:`RECORDS_LOCK`.

Exit reasons: ``Stopped`` (vmpod stopped it, the guest powered off in time), ``Killed`` (forced
off after the stop timeout, destroyed outside vmpod, or killed by libvirtd), ``Completed`` (the
guest powered off by itself), ``Crashed``, ``StartError`` and ``Error``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from vmpod import consolelog
from vmpod.consolemux import ATTACH_SOCKET
from vmpod.procutil import locked, read_json, write_json

__all__ = [
    "CONSOLE_DIR",
    "EXIT_FILE",
    "FOLLOWER_FILE",
    "FOLLOWER_LOCK",
    "FOLLOWER_LOG",
    "OP_LOCK",
    "RECORDS_LOCK",
    "RUN_FILE",
    "SERIAL_RAW",
    "STOP_FILE",
    "backend_files",
    "ensure_exit",
    "exit_for",
    "exit_of_boot",
    "locked",
    "read_json",
    "write_json",
]

#: The raw serial output virtlogd appends (and rotates: ``serial.raw.0``, ``.1``...), named as
#: :class:`vmpod.consolelog.CriLogWriter` reads it (its hard link in :data:`CONSOLE_DIR` has the same name).
SERIAL_RAW: Final = consolelog.SERIAL_RAW
RUN_FILE: Final = "libvirt-run.json"
STOP_FILE: Final = "libvirt-stop.json"
EXIT_FILE: Final = "libvirt-exit.json"
#: Held while a record is read and written (short).
RECORDS_LOCK: Final = "libvirt-records.lock"
#: Serialises start/stop/destroy of one machine across threads and processes.
OP_LOCK: Final = "libvirt-op.lock"
#: The log follower holds it while it runs; ``follower.json`` says which process it is.
FOLLOWER_LOCK: Final = "libvirt-follower.lock"
FOLLOWER_FILE: Final = "libvirt-follower.json"
FOLLOWER_LOG: Final = "libvirt-follower.log"
#: The follower's working directory: a hard link to the serial file it reads, and its checkpoint.
CONSOLE_DIR: Final = "libvirt-console"

# libvirt's virDomainShutoffReason values (libvirt-domain.h).
_SHUTOFF_SHUTDOWN: Final = 1
_SHUTOFF_DESTROYED: Final = 2
_SHUTOFF_CRASHED: Final = 3
_SHUTOFF_FAILED: Final = 6
_SHUTOFF_DAEMON: Final = 8
_KILLED_CODE: Final = 137


def backend_files(directory: Path) -> list[Path]:
    """Every file and directory the backend or its follower may have made in a runtime directory."""
    names = (SERIAL_RAW, RUN_FILE, STOP_FILE, EXIT_FILE, RECORDS_LOCK, OP_LOCK, FOLLOWER_LOCK, FOLLOWER_FILE,
             FOLLOWER_LOG, CONSOLE_DIR, ATTACH_SOCKET)
    found = [directory / name for name in names]
    found += sorted(directory.glob(f"{SERIAL_RAW}.*"))
    found += sorted(directory.glob(".libvirt-*.tmp"))
    return found


def exit_for(reason: int, stop: dict[str, Any] | None, boot: str) -> tuple[int, str, str]:
    """``(exit_code, exit_reason, message)`` of a boot that ended with libvirt shutoff ``reason``.

    A stop of this boot that vmpod asked for wins: ``Stopped``, or ``Killed`` when it was forced.
    """
    if stop is not None and stop.get("boot") == boot:
        if stop.get("forced"):
            return _KILLED_CODE, "Killed", "forced off: the guest did not power off in time"
        return 0, "Stopped", "powered off by request"
    if reason == _SHUTOFF_SHUTDOWN:
        return 0, "Completed", "the guest powered off"
    if reason == _SHUTOFF_DESTROYED:
        return _KILLED_CODE, "Killed", "the domain was destroyed outside vmpod"
    if reason == _SHUTOFF_CRASHED:
        return 1, "Crashed", "the guest crashed"
    if reason == _SHUTOFF_FAILED:
        return 1, "StartError", "qemu failed to start"
    if reason == _SHUTOFF_DAEMON:
        return _KILLED_CODE, "Killed", "libvirtd killed the domain"
    return -1, "Error", f"the domain stopped (libvirt shutoff reason {reason})"


def exit_of_boot(directory: Path, boot: str) -> dict[str, Any] | None:
    """The exit record of ``boot``, or ``None`` while it has none."""
    record = read_json(directory / EXIT_FILE)
    return record if record is not None and record.get("boot") == boot else None


def ensure_exit(directory: Path, run: dict[str, Any], reason: int, now_ns: int) -> dict[str, Any]:
    """The exit record of ``run``'s boot, written now (``finished_at`` = ``now_ns``) if it has none yet."""
    boot = str(run.get("boot", ""))
    with locked(directory / RECORDS_LOCK):
        existing = exit_of_boot(directory, boot)
        if existing is not None:
            return existing
        started_at = int(run.get("started_at", 0))
        code, why, message = exit_for(reason, read_json(directory / STOP_FILE), boot)
        record = {"boot": boot, "started_at": started_at, "finished_at": max(now_ns, started_at),
                  "exit_code": code, "exit_reason": why, "message": message}
        write_json(directory / EXIT_FILE, record)
        return record
