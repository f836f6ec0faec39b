"""The fake backend: a simulated hypervisor whose machines live in a JSON file.

No guest runs.  A machine is a record in ``<state_dir>/backends/fake/state.json``;
every process and thread opening the same state directory sees the same machines,
so the fake survives a vmpod restart the way a real hypervisor does: a new
:class:`FakeBackend` reports the machines, and never restarts them.

Files (created when a backend is opened, kept while the directory lives):

``state.json``
    ``{"format": 1, "machines": {name: record}, "faults": {...}}``; replaced atomically
    (write ``state.json.tmp``, then :func:`os.replace`), so a reader never sees half a file.
    Not fsync'ed: it survives a process crash, not a power cut.
``state.lock``
    writers hold an exclusive :func:`fcntl.flock` on it (a new file description per call, so
    threads of one process exclude each other too) for the read-modify-write of ``state.json``;
    readers take no lock.

Simulation, what a test can rely on:

* ``start`` appends CRI log lines (``<RFC3339Nano> stdout F <text>``) to the machine's
  ``serial_log``: a boot banner with the name, UUID and size, the seed path, a login prompt;
  ``stop``, :meth:`FakeBackend.crash` and :meth:`FakeBackend.power_off` append one line each;
* ``start`` fails like qemu would (the machine ends STOPPED with exit reason ``StartError``)
  when a disk does not exist or the serial log cannot be opened;
* ``create`` refuses machines beyond :meth:`FakeBackend.capabilities` (disk bus, disk count);
* stats: CPU time grows at 1% of one vCPU while running; memory is the machine's memory.

Faults (:class:`Faults`) come from two places, both applying: the backend options of this
object (``BackendConfig.options``, see :meth:`Faults.from_options`) and the faults stored in
the state file by :meth:`FakeBackend.set_faults`, which every process using the directory
sees (a test can make the ``vmpod`` command it runs fail).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from vmpod.backend import (
    BackendConfig,
    Capabilities,
    ConsoleEndpoint,
    MachineInfo,
    MachineState,
    MachineStats,
    MachineStatus,
)
from vmpod.errors import BackendError, ConflictError, InvalidTransition, NotFoundError, SpecError
from vmpod.machine import MARKER_LABEL, Machine

__all__ = ["OPERATIONS", "STATE_FORMAT", "FakeBackend", "Faults"]

#: Version of the ``state.json`` layout.
STATE_FORMAT: Final = 1

#: The calls latency can be injected into (``latency.<op>`` options).
OPERATIONS: Final = ("capabilities", "create", "start", "stop", "destroy", "status", "list", "console", "stats")

_PATTERN_OPTIONS: Final = ("fail_create", "fail_start", "hang_stop")

_T = TypeVar("_T")


# --------------------------------------------------------------------------- faults


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(str(p) for p in value) if isinstance(value, list | tuple) else ()


def _seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects NaN
        raise SpecError(f"options.{key}", "expected a number of seconds", value=value, accepted="0, 0.25, 2...")
    return seconds


@attrs.frozen
class Faults:
    """Faults to inject.  Patterns are :mod:`fnmatch` patterns of machine names (``*`` for all).

    :param fail_create: ``create`` of a new machine with a matching name raises :class:`BackendError`
        and creates nothing.
    :param fail_start: ``start`` of a matching machine raises :class:`BackendError`; the machine is left
        STOPPED with exit reason ``StartError``.
    :param hang_stop: the guest of a matching machine ignores the power-off request: ``stop`` waits its
        whole ``timeout`` and then forces the machine off (exit reason ``Killed``, exit code 137).
    :param latency: seconds every call of the backend protocol sleeps before doing anything.
    :param op_latency: extra seconds per operation (keys from :data:`OPERATIONS`).
    """

    fail_create: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    fail_start: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    hang_stop: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    latency: float = 0.0
    op_latency: Mapping[str, float] = attrs.field(factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> Faults:
        """Read faults from backend options.

        Keys: ``fail_create``, ``fail_start``, ``hang_stop`` (comma-separated name patterns),
        ``latency`` and ``latency.<operation>`` (seconds).  Anything else is a :class:`SpecError`.
        """
        patterns: dict[str, tuple[str, ...]] = {}
        latency = 0.0
        op_latency: dict[str, float] = {}
        for key, value in options.items():
            if key in _PATTERN_OPTIONS:
                patterns[key] = _patterns(value)
            elif key == "latency":
                latency = _seconds(key, value)
            elif key.startswith("latency.") and key.removeprefix("latency.") in OPERATIONS:
                op_latency[key.removeprefix("latency.")] = _seconds(key, value)
            else:
                accepted = ", ".join([*_PATTERN_OPTIONS, "latency", *(f"latency.{op}" for op in OPERATIONS)])
                raise SpecError(f"options.{key}", "unknown option of the fake backend", accepted=accepted)
        return cls(latency=latency, op_latency=op_latency, **patterns)

    def __or__(self, other: Faults) -> Faults:
        """Both sets of faults: patterns are united, latencies added."""
        return Faults(
            fail_create=(*self.fail_create, *other.fail_create),
            fail_start=(*self.fail_start, *other.fail_start),
            hang_stop=(*self.hang_stop, *other.hang_stop),
            latency=self.latency + other.latency,
            op_latency={op: self.op_latency.get(op, 0.0) + other.op_latency.get(op, 0.0)
                        for op in {*self.op_latency, *other.op_latency}},
        )

    def delay(self, operation: str) -> float:
        """Seconds ``operation`` sleeps first."""
        return self.latency + self.op_latency.get(operation, 0.0)

    @staticmethod
    def matches(patterns: tuple[str, ...], name: str) -> bool:
        """True when ``name`` matches one of ``patterns``."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    def to_json(self) -> dict[str, Any]:
        """Plain data for the state file."""
        return {"fail_create": list(self.fail_create), "fail_start": list(self.fail_start),
                "hang_stop": list(self.hang_stop), "latency": self.latency, "op_latency": dict(self.op_latency)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Faults:
        """Inverse of :meth:`to_json`."""
        return cls(fail_create=data.get("fail_create", ()), fail_start=data.get("fail_start", ()),
                   hang_stop=data.get("hang_stop", ()), latency=float(data.get("latency", 0.0)),
                   op_latency={str(k): float(v) for k, v in data.get("op_latency", {}).items()})


# --------------------------------------------------------------------------- records


@attrs.frozen
class _Record:
    """One simulated machine as stored in ``state.json``."""

    name: str
    uuid: str
    state: MachineState
    created_at: int
    labels: Mapping[str, str] = attrs.field(factory=dict)
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    exit_reason: str = ""
    message: str = ""
    cpu_time_ns: int = 0  # of the finished runs
    memory_bytes: int = 0
    vcpus: int = 1
    serial_log: str = ""
    disks: tuple[str, ...] = ()
    seed: str = ""

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["labels"] = dict(self.labels)
        data["disks"] = list(self.disks)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Record:
        fields = dict(data)
        fields["state"] = MachineState(fields["state"])
        fields["disks"] = tuple(fields.get("disks", ()))
        return cls(**fields)

    def status(self) -> MachineStatus:
        return MachineStatus(name=self.name, state=self.state, created_at=self.created_at,
                             started_at=self.started_at, finished_at=self.finished_at, exit_code=self.exit_code,
                             exit_reason=self.exit_reason, message=self.message)

    def info(self) -> MachineInfo:
        return MachineInfo(name=self.name, uuid=self.uuid, state=self.state, owned=MARKER_LABEL in self.labels,
                           labels=dict(self.labels))

    def stopped(self, now: int, *, exit_code: int, reason: str, message: str) -> _Record:
        """This running machine, stopped at ``now``."""
        return attrs.evolve(self, state=MachineState.STOPPED, finished_at=now, exit_code=exit_code,
                            exit_reason=reason, message=message,
                            cpu_time_ns=self.cpu_time_ns + _cpu_ns(now - self.started_at))


def _cpu_ns(running_ns: int) -> int:
    """Simulated CPU time of a guest that ran ``running_ns``: it idles at 1% of one vCPU."""
    return max(running_ns, 0) // 100


@attrs.frozen
class _State:
    machines: Mapping[str, _Record] = attrs.field(factory=dict)
    faults: Faults = Faults()

    def with_record(self, record: _Record) -> _State:
        return attrs.evolve(self, machines={**self.machines, record.name: record})

    def without(self, name: str) -> _State:
        return attrs.evolve(self, machines={k: v for k, v in self.machines.items() if k != name})

    def record(self, name: str) -> _Record:
        try:
            return self.machines[name]
        except KeyError:
            raise NotFoundError(f"fake: no machine named {name!r}") from None

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "machines": {n: r.to_json() for n, r in sorted(self.machines.items())},
                "faults": self.faults.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _State:
        if data.get("format") != STATE_FORMAT:
            raise BackendError(f"fake: unsupported state file format {data.get('format')!r}")
        return cls(machines={n: _Record.from_json(r) for n, r in data["machines"].items()},
                   faults=Faults.from_json(data.get("faults", {})))


def cri_line(text: str, now_ns: int | None = None) -> str:
    """One CRI log line ``<RFC3339Nano> stdout F <text>\\n`` (UTC, nine fraction digits)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z stdout F {text}\n"


# --------------------------------------------------------------------------- the backend


class FakeBackend:
    """A simulated hypervisor implementing :class:`vmpod.backend.Backend` (see the module docstring)."""

    name: str = "fake"

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.directory = Path(config.state_dir) / "backends" / self.name
        self._option_faults = Faults.from_options(config.options)
        self._state_path = self.directory / "state.json"
        self._lock_path = self.directory / "state.lock"
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._update(lambda state: (state, None))  # writes an empty state file when there is none

    # ---- storage --------------------------------------------------------------------

    def _read(self) -> _State:
        try:
            data = self._state_path.read_bytes()
        except FileNotFoundError:
            return _State()
        return _State.from_json(json.loads(data))

    def _write(self, state: _State) -> None:
        temporary = self._state_path.with_name(self._state_path.name + ".tmp")
        temporary.write_text(json.dumps(state.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, self._state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _update(self, change: Callable[[_State], tuple[_State, _T]]) -> _T:
        """Read, change and (when it changed) write the state under the lock; ``change`` may raise."""
        with self._locked():
            exists = self._state_path.exists()
            old = self._read()
            new, result = change(old)
            if new != old or not exists:
                self._write(new)
        return result

    def _enter(self, operation: str) -> _State:
        """Common prologue of every protocol call: refuse when closed, sleep the injected latency."""
        if self._closed:
            raise BackendError("fake: the backend is closed")
        state = self._read()
        delay = (self._option_faults | state.faults).delay(operation)
        if delay > 0:
            time.sleep(delay)
            state = self._read()
        return state

    # ---- the Backend protocol ---------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """What the simulation accepts; it has no interactive console."""
        self._enter("capabilities")
        return self._capabilities()

    def _capabilities(self) -> Capabilities:
        return Capabilities(
            accelerator="none",
            disk_buses=("scsi", "virtio"),
            max_disks={"scsi": 26, "virtio": 21},
            filesystems=("9p", "virtiofs"),
            network_modes=("user", "tap"),
            console=False,
            graceful_stop=True,
            survives_restart=True,
            notes=f"simulated: no guest runs; machines are records in {self._state_path}",
        )

    def create(self, machine: Machine) -> MachineStatus:
        """Record ``machine`` as CREATED; the same name and UUID again returns the existing status."""
        self._enter("create")
        self._check_fits(machine)

        def change(state: _State) -> tuple[_State, _Record]:
            existing = state.machines.get(machine.name)
            if existing is not None:
                if existing.uuid != str(machine.uuid):
                    raise ConflictError(f"fake: machine {machine.name!r} exists with another UUID ({existing.uuid})")
                return state, existing
            if Faults.matches((self._option_faults | state.faults).fail_create, machine.name):
                raise BackendError(f"fake: injected fault: cannot create machine {machine.name!r}")
            seed = machine.seed_disk
            record = _Record(name=machine.name, uuid=str(machine.uuid), state=MachineState.CREATED,
                             created_at=time.time_ns(), labels=dict(machine.labels),
                             memory_bytes=machine.memory_bytes, vcpus=machine.vcpus, serial_log=machine.serial_log,
                             disks=tuple(d.path for d in machine.disks), seed=seed.path if seed else "")
            return state.with_record(record), record

        return self._update(change).status()

    def start(self, name: str) -> MachineStatus:
        """Boot the machine (append the boot banner to its serial log); a running machine is left alone."""
        self._enter("start")

        def change(state: _State) -> tuple[_State, tuple[_Record, str]]:
            record = state.record(name)
            if record.state is MachineState.RUNNING:
                return state, (record, "")
            now = time.time_ns()
            problem = self._start_problem(record, self._option_faults | state.faults, now)
            if problem:
                record = attrs.evolve(record, state=MachineState.STOPPED, finished_at=now, exit_code=1,
                                      exit_reason="StartError", message=problem)
            else:
                record = attrs.evolve(record, state=MachineState.RUNNING, started_at=now, finished_at=0,
                                      exit_code=0, exit_reason="", message="")
            return state.with_record(record), (record, problem)

        record, problem = self._update(change)
        if problem:
            raise BackendError(problem)
        return record.status()

    def stop(self, name: str, timeout: float) -> MachineStatus:
        """Power the machine off; a guest with a ``hang_stop`` fault is forced off after ``timeout``."""
        state = self._enter("stop")
        before = state.record(name)
        if before.state is not MachineState.RUNNING:
            return before.status()
        forced = Faults.matches((self._option_faults | state.faults).hang_stop, name)
        if forced:
            time.sleep(max(timeout, 0.0))  # the guest ignores the ACPI power-off request

        def change(state: _State) -> tuple[_State, _Record]:
            record = state.record(name)
            if record.state is not MachineState.RUNNING or record.started_at != before.started_at:
                return state, record  # stopped (or restarted) by someone else meanwhile
            now = time.time_ns()
            if forced:
                message = f"forced off after {timeout:g}s: the guest ignored the power-off request"
                record = record.stopped(now, exit_code=137, reason="Killed", message=message)
            else:
                record = record.stopped(now, exit_code=0, reason="Stopped", message="powered off by request")
            self._log(record, now, f"[fake] {name}: {record.message}", quiet=True)
            return state.with_record(record), record

        return self._update(change).status()

    def destroy(self, name: str) -> None:
        """Forget the machine (forcing it off); an unknown name is fine."""
        self._enter("destroy")
        self._update(lambda state: (state.without(name), None))

    def status(self, name: str) -> MachineStatus:
        """The machine's status; :class:`NotFoundError` when there is none."""
        return self._enter("status").record(name).status()

    def list(self) -> tuple[MachineInfo, ...]:
        """Every machine in the state file, by name."""
        state = self._enter("list")
        return tuple(record.info() for _, record in sorted(state.machines.items()))

    def console(self, name: str) -> ConsoleEndpoint:
        """The fake has no interactive console: :class:`BackendError` for a running machine."""
        record = self._running(self._enter("console"), name, "console")
        raise BackendError(f"fake: no interactive console (the serial log of {name!r} is {record.serial_log!r})")

    def stats(self, name: str) -> MachineStats:
        """Simulated usage: 1% of one vCPU since start, the machine's memory."""
        record = self._running(self._enter("stats"), name, "stats")
        now = time.time_ns()
        return MachineStats(timestamp=now, cpu_time_ns=record.cpu_time_ns + _cpu_ns(now - record.started_at),
                            memory_bytes=record.memory_bytes)

    def close(self) -> None:
        """Nothing to release; later calls on this object raise :class:`BackendError`."""
        self._closed = True

    # ---- simulation controls (not part of the protocol) -----------------------------------

    def faults(self) -> Faults:
        """The faults in effect: this object's options together with the stored ones."""
        return self._option_faults | self._read().faults

    def set_faults(self, faults: Faults) -> None:
        """Store ``faults`` in the state file (replacing the stored ones): every process sees them."""
        self._update(lambda state: (attrs.evolve(state, faults=faults), None))

    def clear_faults(self) -> None:
        """Remove the stored faults (the options of each backend object still apply)."""
        self.set_faults(Faults())

    def crash(self, name: str, *, exit_code: int = 1, message: str = "guest crashed") -> MachineStatus:
        """Make a running machine die now: STOPPED with exit reason ``Crashed``."""
        return self._exit(name, exit_code=exit_code, reason="Crashed", message=message)

    def power_off(self, name: str, *, exit_code: int = 0, message: str = "the guest powered off") -> MachineStatus:
        """The guest of a running machine powers itself off: STOPPED with exit reason ``Completed``."""
        return self._exit(name, exit_code=exit_code, reason="Completed", message=message)

    def add_foreign(self, name: str, *, state: MachineState = MachineState.RUNNING,
                    labels: Mapping[str, str] | None = None, memory_bytes: int = 64 << 20) -> MachineInfo:
        """Add a machine vmpod did not create (no :data:`~vmpod.machine.MARKER_LABEL` unless ``labels`` has it).

        It behaves like any other machine of this backend; garbage collection must leave it alone.
        """
        now = time.time_ns()
        has_run = state in (MachineState.RUNNING, MachineState.STOPPED)
        record = _Record(name=name, uuid=str(uuid.uuid4()), state=state, created_at=now, labels=dict(labels or {}),
                         started_at=now if has_run else 0, finished_at=now if state is MachineState.STOPPED else 0,
                         memory_bytes=memory_bytes)

        def change(current: _State) -> tuple[_State, _Record]:
            if name in current.machines:
                raise ConflictError(f"fake: a machine named {name!r} exists")
            return current.with_record(record), record

        return self._update(change).info()

    # ---- helpers ----------------------------------------------------------------------

    def _exit(self, name: str, *, exit_code: int, reason: str, message: str) -> MachineStatus:
        def change(state: _State) -> tuple[_State, _Record]:
            record = self._running(state, name, reason.lower())
            now = time.time_ns()
            record = record.stopped(now, exit_code=exit_code, reason=reason, message=message)
            self._log(record, now, f"[fake] {name}: {message}", quiet=True)
            return state.with_record(record), record

        return self._update(change).status()

    @staticmethod
    def _running(state: _State, name: str, operation: str) -> _Record:
        record = state.record(name)
        if record.state is not MachineState.RUNNING:
            raise InvalidTransition(f"fake: cannot {operation} machine {name!r}: it is {record.state}, not running")
        return record

    def _check_fits(self, machine: Machine) -> None:
        """Refuse what a real hypervisor with these capabilities could not realise."""
        capabilities = self._capabilities()
        if machine.disk_bus not in capabilities.disk_buses:
            raise BackendError(f"fake: unsupported disk bus {machine.disk_bus!r}")
        if len(machine.disks) > capabilities.max_disks.get(machine.disk_bus, 0):
            raise BackendError(f"fake: {len(machine.disks)} disks exceed the {machine.disk_bus} limit of "
                               f"{capabilities.max_disks.get(machine.disk_bus, 0)}")
        for filesystem in machine.filesystems:
            if filesystem.driver not in capabilities.filesystems:
                raise BackendError(f"fake: unsupported filesystem driver {filesystem.driver!r}")
        for nic in machine.nics:
            if nic.mode not in capabilities.network_modes:
                raise BackendError(f"fake: unsupported network mode {nic.mode!r}")

    def _start_problem(self, record: _Record, faults: Faults, now: int) -> str:
        """Why booting ``record`` fails ("" when it boots); a successful boot writes the banner."""
        if Faults.matches(faults.fail_start, record.name):
            return f"fake: injected fault: machine {record.name!r} failed to start"
        for path in record.disks:
            if not os.path.exists(path):
                return f"fake: could not open disk image {path!r}: No such file or directory"
        size = f"{record.vcpus} vCPU, {record.memory_bytes >> 20} MiB"
        try:
            self._log(record, now,
                      f"[fake] booting {record.name} (uuid {record.uuid}, {size})",
                      f"[fake] cloud-init seed: {record.seed or 'none'}",
                      f"{record.name} login: ")
        except OSError as exc:
            return f"fake: could not open serial log {record.serial_log!r}: {exc.strerror}"
        return ""

    @staticmethod
    def _log(record: _Record, now: int, *lines: str, quiet: bool = False) -> None:
        """Append ``lines`` to the serial log; ``quiet``: a log that cannot be written is not an error."""
        if not record.serial_log:
            return
        try:
            with open(record.serial_log, "a", encoding="utf-8") as log:
                log.write("".join(cri_line(line, now) for line in lines))
        except OSError:
            if not quiet:
                raise
