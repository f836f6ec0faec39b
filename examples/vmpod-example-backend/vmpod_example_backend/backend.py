"""``SleepBackend``: a vmpod backend whose machines are ``sleep`` processes.

Everything a backend needs is in the public API of vmpod: the ``Backend`` protocol
and its records in :mod:`vmpod.backend`, the ``Machine`` in :mod:`vmpod.machine`,
the errors in :mod:`vmpod.errors`.

* Each machine is a JSON file ``<state_dir>/backends/sleep/<name>.json``; changes
  happen under an exclusive ``flock`` of ``backend.lock`` in the same directory.
* A running machine is a detached ``sleep infinity`` process (its own session, not
  our child), identified by its pid *and* its start time in ``/proc/<pid>/stat``,
  so a recycled pid is never mistaken for it.  It outlives this object, so a new
  backend object (a vmpod restart) finds it running and leaves it alone.
* ``stop`` sends SIGTERM and waits up to ``timeout``, then SIGKILL.
* A process that died on its own is reported STOPPED (``Crashed``) the next time
  the machine is looked at.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmpod.backend import (
    BackendConfig,
    Capabilities,
    ConsoleEndpoint,
    MachineInfo,
    MachineState,
    MachineStats,
    MachineStatus,
)
from vmpod.errors import BackendError, ConflictError, InvalidTransition, NotFoundError
from vmpod.machine import MARKER_LABEL, Machine

__all__ = ["SleepBackend"]

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3 is index 0), or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _alive(pid: int, start: str) -> bool:
    """True while process ``pid`` with start time ``start`` runs (a zombie is dead)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"


class SleepBackend:
    """A :class:`vmpod.backend.Backend` running each machine as a ``sleep`` process."""

    name: str = "sleep"

    def __init__(self, config: BackendConfig) -> None:
        self.directory = Path(config.state_dir) / "backends" / self.name
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.directory / "backend.lock"
        self._lock_path.touch()

    # ---- files ------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise BackendError(f"sleep: invalid machine name {name!r}")
        return self.directory / f"{name}.json"

    def _load(self, name: str) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self._path(name).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"sleep: no machine named {name!r}") from None
        return record

    def _save(self, name: str, record: dict[str, Any]) -> None:
        temporary = self._path(name).with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, self._path(name))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _current(self, name: str) -> dict[str, Any]:
        """The record, with a process that died on its own noted as a crash (under the lock)."""
        record = self._load(name)
        if record["state"] == MachineState.RUNNING and not _alive(record["pid"], record["pid_start"]):
            record.update(state=MachineState.STOPPED, finished_at=time.time_ns(), exit_code=1,
                          exit_reason="Crashed", pid=0, pid_start="")
            self._save(name, record)
        return record

    @staticmethod
    def _status(name: str, record: dict[str, Any]) -> MachineStatus:
        return MachineStatus(name=name, state=MachineState(record["state"]), created_at=record["created_at"],
                             started_at=record["started_at"], finished_at=record["finished_at"],
                             exit_code=record["exit_code"], exit_reason=record["exit_reason"])

    # ---- the protocol ---------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """Nothing boots: no disks, filesystems, network or console."""
        return Capabilities(accelerator="none", disk_buses=(), max_disks={}, filesystems=(), network_modes=(),
                            console=False, graceful_stop=True, survives_restart=True,
                            notes="each machine is a sleep process; disks, NICs and the seed are ignored")

    def create(self, machine: Machine) -> MachineStatus:
        """Write the machine's file; the same name and UUID again returns it unchanged."""
        with self._locked():
            if self._path(machine.name).exists():
                record = self._current(machine.name)
                if record["uuid"] != str(machine.uuid):
                    raise ConflictError(f"sleep: machine {machine.name!r} exists with another UUID")
                return self._status(machine.name, record)
            record = {"uuid": str(machine.uuid), "labels": dict(machine.labels), "state": MachineState.CREATED,
                      "created_at": time.time_ns(), "started_at": 0, "finished_at": 0, "exit_code": 0,
                      "exit_reason": "", "pid": 0, "pid_start": ""}
            self._save(machine.name, record)
            return self._status(machine.name, record)

    def start(self, name: str) -> MachineStatus:
        """Start a detached ``sleep infinity``; a running machine is left alone."""
        with self._locked():
            record = self._current(name)
            if record["state"] != MachineState.RUNNING:
                # `sh` starts sleep in the background and exits at once: sleep is not our child
                shell = subprocess.run(["sh", "-c", "sleep infinity </dev/null >/dev/null 2>&1 & echo $!"],
                                       capture_output=True, text=True, check=True, start_new_session=True)
                pid = int(shell.stdout)
                fields = _proc_stat(pid)
                if fields is None:
                    raise BackendError(f"sleep: the process of {name!r} exited at once")
                record.update(state=MachineState.RUNNING, started_at=time.time_ns(), finished_at=0, exit_code=0,
                              exit_reason="", pid=pid, pid_start=fields[19])
                self._save(name, record)
            return self._status(name, record)

    def stop(self, name: str, timeout: float) -> MachineStatus:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; a machine that is not running is unchanged."""
        with self._locked():
            record = self._current(name)
            if record["state"] != MachineState.RUNNING:
                return self._status(name, record)
            forced = self._terminate(record["pid"], record["pid_start"], timeout)
            record.update(state=MachineState.STOPPED, finished_at=time.time_ns(), exit_code=137 if forced else 0,
                          exit_reason="Killed" if forced else "Stopped", pid=0, pid_start="")
            self._save(name, record)
            return self._status(name, record)

    def destroy(self, name: str) -> None:
        """Kill the process and delete the file; an unknown machine is fine."""
        with self._locked():
            with contextlib.suppress(NotFoundError):
                record = self._load(name)
                if record["state"] == MachineState.RUNNING:
                    self._terminate(record["pid"], record["pid_start"], 0)
            self._path(name).unlink(missing_ok=True)

    def status(self, name: str) -> MachineStatus:
        """The machine's status (NotFoundError when unknown)."""
        with self._locked():
            return self._status(name, self._current(name))

    def list(self) -> tuple[MachineInfo, ...]:
        """Every machine file in the directory."""
        infos = []
        with self._locked():
            for path in sorted(self.directory.glob("*.json")):
                record = self._current(path.stem)
                infos.append(MachineInfo(name=path.stem, uuid=record["uuid"], state=MachineState(record["state"]),
                                         owned=MARKER_LABEL in record["labels"], labels=record["labels"]))
        return tuple(infos)

    def console(self, name: str) -> ConsoleEndpoint:
        """There is no console: BackendError (after the usual NotFoundError/InvalidTransition)."""
        self._running(name)
        raise BackendError("sleep: machines have no console")

    def stats(self, name: str) -> MachineStats:
        """CPU time and resident memory of the sleep process."""
        record = self._running(name)
        fields = _proc_stat(record["pid"]) or []
        cpu_ticks = int(fields[11]) + int(fields[12]) if fields else 0
        try:
            resident = int(Path(f"/proc/{record['pid']}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            resident = 0
        return MachineStats(timestamp=time.time_ns(), cpu_time_ns=cpu_ticks * _TICK_NS, memory_bytes=resident)

    def close(self) -> None:
        """Nothing to release: the processes keep running."""

    # ---- helpers ----------------------------------------------------------------------

    def _running(self, name: str) -> dict[str, Any]:
        with self._locked():
            record = self._current(name)
        if record["state"] != MachineState.RUNNING:
            raise InvalidTransition(f"sleep: machine {name!r} is {record['state']}, not running")
        return record

    @staticmethod
    def _terminate(pid: int, start: str, timeout: float) -> bool:
        """Stop process ``pid``: SIGTERM, then SIGKILL after ``timeout``; True when it had to be killed."""
        if not _alive(pid, start):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid, start):
                return False
            time.sleep(0.01)
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)
            return True
        return False
