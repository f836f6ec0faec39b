"""The fake backend: a simulated hypervisor whose machines live in small JSON files.

No guest runs.  A machine is a record in ``<state_dir>/backends/fake/machines/``;
every process and thread opening the same state directory sees the same machines,
so the fake survives a vmpod restart the way a real hypervisor does: a new
:class:`FakeBackend` reports the machines, and never restarts them.

Every call reads and writes only the files it needs, so its cost does not grow with the
number of machines (``list`` reads each machine once: it returns them all).

Files (under ``<state_dir>/backends/fake``):

``faults.json``
    ``{"format": 2, "faults": {...}}``: the faults stored by :meth:`FakeBackend.set_faults`
    (written when a backend is opened, kept while the directory lives).
``machines/<name>.json``
    ``{"format": 2, "machine": record}``, one file per machine, removed by ``destroy``.
    The file name is the machine name percent-encoded (a long name is cut and given a hash).
``consoles/<machine>.sock``, ``consoles/<machine>.lock``
    the echoing interactive console of a running machine (:mod:`vmpod_fake.console`), served
    by the process that asked for it first; removed when the machine stops or is destroyed.
``state.lock``
    every change of a machine holds an exclusive lock on one byte of this file, at an offset
    derived from the machine name (an open file description lock, ``F_OFD_SETLKW``: taken on a
    new file description per call, so threads of one process exclude each other too), for the
    read-modify-write of that machine's file; byte 0 is the faults file's.  Changes of different
    machines proceed in parallel.  Readers take no lock.

Both kinds of JSON file are replaced atomically (write a temporary file next to it, then
:func:`os.replace`), so a reader never sees half a file.  They are not fsync'ed: they survive a
process crash, not a power cut.  A ``state.json`` of format 1 (one file for everything, as
earlier versions wrote it) is split into these files when a backend is opened.

Simulation, what a test can rely on:

* ``start`` appends CRI log lines (``<RFC3339Nano> stdout F <text>``) to the machine's
  ``serial_log``: a boot banner with the name, UUID and size, the seed path, a login prompt;
  ``stop``, :meth:`FakeBackend.crash` and :meth:`FakeBackend.power_off` append one line each;
* ``start`` fails like qemu would (the machine ends STOPPED with exit reason ``StartError``)
  when a disk does not exist or the serial log cannot be opened;
* ``create`` refuses machines beyond :meth:`FakeBackend.capabilities` (disk bus, disk count);
* stats: CPU time grows at 1% of one vCPU while running; memory is the machine's memory;
* port forwards (:class:`vmpod.backend.GuestAccess`) are recorded in the machine's file for the
  current run (nothing listens), refused without a user-mode NIC or on a taken host port, and
  dropped when the machine stops; there is no VNC server (``vnc_address`` is ``None``).

Faults (:class:`Faults`) come from two places, both applying: the backend options of this
object (``BackendConfig.options``, see :meth:`Faults.from_options`) and the faults stored in
``faults.json`` by :meth:`FakeBackend.set_faults`, which every process using the directory
sees (a test can make the ``vmpod`` command it runs fail).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import struct
import threading
import time
import urllib.parse
import uuid
import zlib
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
from vmpod.forwarding import check_forward, check_host_port_free, hostfwd_rule
from vmpod.machine import MARKER_LABEL, Machine, NetworkMode, PortForward
from vmpod_fake.console import EchoConsoles

__all__ = ["OPERATIONS", "STATE_FORMAT", "FakeBackend", "Faults"]

#: Version of the layout of the state files.
STATE_FORMAT: Final = 2
#: The layout of earlier versions: everything in one ``state.json``.
_SINGLE_FILE_FORMAT: Final = 1

#: The calls latency can be injected into (``latency.<op>`` options).
OPERATIONS: Final = ("capabilities", "create", "start", "stop", "destroy", "status", "list", "console", "stats")

_PATTERN_OPTIONS: Final = ("fail_create", "fail_start", "hang_stop")

_T = TypeVar("_T")

#: ``struct flock`` of Linux (x86_64, aarch64...): l_type, l_whence, l_start, l_len, l_pid, padding.
_FLOCK: Final = struct.Struct("hhqqi4x")
#: The lock byte of the faults file; machines lock bytes 1 .. 2**32.
_FAULTS_LOCK: Final = 0
#: Longest machine file name kept readable; longer names are cut and given a hash.
_MAX_FILE_NAME: Final = 200


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
    """One simulated machine as stored in its file."""

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
    forwards: tuple[str, ...] = ()  # dynamic port forwards of the current run, as hostfwd rules
    user_nic: bool = False  # the machine has a user-mode NIC (forwards need one)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["labels"] = dict(self.labels)
        data["disks"] = list(self.disks)
        data["forwards"] = list(self.forwards)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Record:
        fields = dict(data)
        fields["state"] = MachineState(fields["state"])
        fields["disks"] = tuple(fields.get("disks", ()))
        fields["forwards"] = tuple(fields.get("forwards", ()))
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
                            exit_reason=reason, message=message, forwards=(),
                            cpu_time_ns=self.cpu_time_ns + _cpu_ns(now - self.started_at))


def _cpu_ns(running_ns: int) -> int:
    """Simulated CPU time of a guest that ran ``running_ns``: it idles at 1% of one vCPU."""
    return max(running_ns, 0) // 100


def _file_name(name: str) -> str:
    """The file of machine ``name`` in ``machines/``: the name percent-encoded, plus ``.json``."""
    encoded = urllib.parse.quote(name, safe="")
    if len(encoded) > _MAX_FILE_NAME:
        cut = encoded[:_MAX_FILE_NAME - 17]
        if "%" in cut[-2:]:  # do not split a %XX escape
            cut = cut[:cut.rindex("%")]
        encoded = cut + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return encoded + ".json"


def _console_key(name: str) -> str:
    """The file-safe name of machine ``name``'s console files (see :mod:`vmpod_fake.console`)."""
    return _file_name(name).removesuffix(".json")


def _lock_offset(name: str) -> int:
    """The byte of ``state.lock`` that guards machine ``name`` (names sharing a byte just wait for each other)."""
    return 1 + zlib.crc32(name.encode())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` (a temporary file unique to this thread, then a rename)."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _unsupported(data: Mapping[str, Any], path: Path) -> BackendError:
    return BackendError(f"fake: unsupported state file format {data.get('format')!r} in {path}")


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
        self._machines_dir = self.directory / "machines"
        self._faults_path = self.directory / "faults.json"
        self._lock_path = self.directory / "state.lock"
        self._closed = False
        self._open_files()
        self._consoles = EchoConsoles(self.directory)

    # ---- storage --------------------------------------------------------------------

    def _machine_path(self, name: str) -> Path:
        return self._machines_dir / _file_name(name)

    def _read_record(self, name: str) -> _Record | None:
        """The stored record of machine ``name``, or None."""
        path = self._machine_path(name)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        if data.get("format") != STATE_FORMAT:
            raise _unsupported(data, path)
        record = _Record.from_json(data["machine"])
        return record if record.name == name else None  # another name with the same cut-and-hashed file name

    def _record(self, name: str) -> _Record:
        """The stored record of machine ``name``; :class:`NotFoundError` when there is none."""
        return self._found(self._read_record(name), name)

    def _write_record(self, record: _Record) -> None:
        _write_json(self._machine_path(record.name), {"format": STATE_FORMAT, "machine": record.to_json()})

    def _stored_faults(self) -> Faults:
        try:
            data = json.loads(self._faults_path.read_bytes())
        except FileNotFoundError:
            return Faults()
        if data.get("format") != STATE_FORMAT:
            raise _unsupported(data, self._faults_path)
        return Faults.from_json(data.get("faults", {}))

    def _write_faults(self, faults: Faults) -> None:
        _write_json(self._faults_path, {"format": STATE_FORMAT, "faults": faults.to_json()})

    @contextlib.contextmanager
    def _locked(self, offset: int) -> Iterator[None]:
        """Hold the exclusive lock on byte ``offset`` of ``state.lock``."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
            yield
        finally:
            os.close(fd)  # releases the lock

    def _update(self, name: str, change: Callable[[_Record | None, Faults], tuple[_Record | None, _T]]) -> _T:
        """Read, change and (when it changed) write or remove machine ``name`` under its lock.

        ``change`` gets the stored record (None when there is none) and the stored faults, returns the new
        record (None: remove it) and a result; it may raise, which changes nothing.
        """
        with self._locked(_lock_offset(name)):
            old = self._read_record(name)
            new, result = change(old, self._stored_faults())
            if new is None:
                if old is not None:
                    self._machine_path(name).unlink()
            elif new != old:
                self._write_record(new)
        return result

    def _open_files(self) -> None:
        """Create the directory and the faults file when missing; split a format 1 ``state.json``."""
        self._machines_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(_FAULTS_LOCK):
            single = self.directory / "state.json"
            if single.exists():
                data = json.loads(single.read_bytes())
                if data.get("format") != _SINGLE_FILE_FORMAT:
                    raise _unsupported(data, single)
                for record in data.get("machines", {}).values():
                    with self._locked(_lock_offset(record["name"])):
                        self._write_record(_Record.from_json(record))
                self._write_faults(Faults.from_json(data.get("faults", {})))
                single.unlink()
            elif not self._faults_path.exists():
                self._write_faults(Faults())

    def _enter(self, operation: str) -> Faults:
        """Common prologue of every protocol call: refuse when closed, sleep the injected latency.

        Returns the faults in effect (options and stored), read after the sleep.
        """
        if self._closed:
            raise BackendError("fake: the backend is closed")
        faults = self._option_faults | self._stored_faults()
        delay = faults.delay(operation)
        if delay > 0:
            time.sleep(delay)
            faults = self._option_faults | self._stored_faults()
        return faults

    # ---- the Backend protocol ---------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """What the simulation accepts; its interactive console echoes (:mod:`vmpod_fake.console`)."""
        self._enter("capabilities")
        return self._capabilities()

    def _capabilities(self) -> Capabilities:
        return Capabilities(
            accelerator="none",
            disk_buses=("scsi", "virtio"),
            max_disks={"scsi": 26, "virtio": 21},
            filesystems=("9p", "virtiofs"),
            network_modes=("user", "tap", "cni"),
            console=True,
            graceful_stop=True,
            survives_restart=True,
            port_forward=True,
            notes=f"simulated: no guest runs; machines are records in {self._machines_dir}",
        )

    def create(self, machine: Machine) -> MachineStatus:
        """Record ``machine`` as CREATED; the same name and UUID again returns the existing status."""
        self._enter("create")
        self._check_fits(machine)

        def change(existing: _Record | None, stored: Faults) -> tuple[_Record | None, _Record]:
            if existing is not None:
                if existing.uuid != str(machine.uuid):
                    raise ConflictError(f"fake: machine {machine.name!r} exists with another UUID ({existing.uuid})")
                return existing, existing
            if Faults.matches((self._option_faults | stored).fail_create, machine.name):
                raise BackendError(f"fake: injected fault: cannot create machine {machine.name!r}")
            seed = machine.seed_disk
            record = _Record(name=machine.name, uuid=str(machine.uuid), state=MachineState.CREATED,
                             created_at=time.time_ns(), labels=dict(machine.labels),
                             memory_bytes=machine.memory_bytes, vcpus=machine.vcpus, serial_log=machine.serial_log,
                             disks=tuple(d.path for d in machine.disks), seed=seed.path if seed else "",
                             user_nic=any(nic.mode is NetworkMode.USER for nic in machine.nics))
            return record, record

        return self._update(machine.name, change).status()

    def start(self, name: str) -> MachineStatus:
        """Boot the machine (append the boot banner to its serial log); a running machine is left alone."""
        self._enter("start")

        def change(stored: _Record | None, faults: Faults) -> tuple[_Record | None, tuple[_Record, str]]:
            record = self._found(stored, name)
            if record.state is MachineState.RUNNING:
                return record, (record, "")
            now = time.time_ns()
            problem = self._start_problem(record, self._option_faults | faults, now)
            if problem:
                record = attrs.evolve(record, state=MachineState.STOPPED, finished_at=now, exit_code=1,
                                      exit_reason="StartError", message=problem)
            else:
                record = attrs.evolve(record, state=MachineState.RUNNING, started_at=now, finished_at=0,
                                      exit_code=0, exit_reason="", message="")
            return record, (record, problem)

        record, problem = self._update(name, change)
        if problem:
            raise BackendError(problem)
        return record.status()

    def stop(self, name: str, timeout: float) -> MachineStatus:
        """Power the machine off; a guest with a ``hang_stop`` fault is forced off after ``timeout``."""
        faults = self._enter("stop")
        before = self._record(name)
        if before.state is not MachineState.RUNNING:
            return before.status()
        forced = Faults.matches(faults.hang_stop, name)
        if forced:
            time.sleep(max(timeout, 0.0))  # the guest ignores the ACPI power-off request

        def change(stored: _Record | None, _faults: Faults) -> tuple[_Record | None, _Record]:
            record = self._found(stored, name)
            if record.state is not MachineState.RUNNING or record.started_at != before.started_at:
                return record, record  # stopped (or restarted) by someone else meanwhile
            now = time.time_ns()
            if forced:
                message = f"forced off after {timeout:g}s: the guest ignored the power-off request"
                record = record.stopped(now, exit_code=137, reason="Killed", message=message)
            else:
                record = record.stopped(now, exit_code=0, reason="Stopped", message="powered off by request")
            self._log(record, now, f"[fake] {name}: {record.message}", quiet=True)
            return record, record

        status = self._update(name, change).status()
        self._consoles.discard(_console_key(name))
        return status

    def destroy(self, name: str) -> None:
        """Forget the machine (forcing it off); an unknown name is fine."""
        self._enter("destroy")
        self._update(name, lambda _record, _faults: (None, None))
        self._consoles.discard(_console_key(name))

    def status(self, name: str) -> MachineStatus:
        """The machine's status; :class:`NotFoundError` when there is none."""
        self._enter("status")
        return self._record(name).status()

    def list(self) -> tuple[MachineInfo, ...]:
        """Every machine, by name (one read of each machine's file)."""
        self._enter("list")
        records: list[_Record] = []
        with os.scandir(self._machines_dir) as entries:
            names = [entry.name for entry in entries if entry.name.endswith(".json")]
        for file_name in names:
            path = self._machines_dir / file_name
            try:
                data = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue  # destroyed since the listing
            if data.get("format") != STATE_FORMAT:
                raise _unsupported(data, path)
            records.append(_Record.from_json(data["machine"]))
        return tuple(record.info() for record in sorted(records, key=lambda record: record.name))

    def console(self, name: str) -> ConsoleEndpoint:
        """An echoing console of a running machine on a unix socket (:mod:`vmpod_fake.console`)."""
        self._enter("console")
        self._running(self._read_record(name), name, "console")
        return ConsoleEndpoint(kind="unix", path=str(self._consoles.serve(_console_key(name))))

    def stats(self, name: str) -> MachineStats:
        """Simulated usage: 1% of one vCPU since start, the machine's memory."""
        self._enter("stats")
        record = self._running(self._read_record(name), name, "stats")
        now = time.time_ns()
        return MachineStats(timestamp=now, cpu_time_ns=record.cpu_time_ns + _cpu_ns(now - record.started_at),
                            memory_bytes=record.memory_bytes)

    def close(self) -> None:
        """Stop serving the consoles this object served; later calls on this object raise :class:`BackendError`."""
        self._consoles.close()
        self._closed = True

    # ---- GuestAccess ----------------------------------------------------------------------

    def add_port_forward(self, name: str, forward: PortForward) -> None:
        """Record the forward on the running machine (nothing listens: no guest runs).

        A host port this machine already forwards, or that anything on the host holds, is a
        :class:`ConflictError` naming it, as with the real backends.
        """
        self._enter("add_port_forward")
        check_forward(forward)
        rule = hostfwd_rule(forward)
        prefix = rule.rsplit("-", 1)[0] + "-"

        def change(stored: _Record | None, _faults: Faults) -> tuple[_Record | None, None]:
            record = self._running(stored, name, "forward a port to")
            if not record.user_nic:
                raise BackendError(f"fake: machine {name!r} has no user-mode NIC to forward ports on")
            if any(existing.startswith(prefix) for existing in record.forwards):
                raise ConflictError(f"local port {forward.host_port} ({forward.protocol} on {forward.host_address}) "
                                    "is already in use; choose another local port")
            check_host_port_free(forward)
            return attrs.evolve(record, forwards=(*record.forwards, rule)), None

        self._update(name, change)

    def remove_port_forward(self, name: str, forward: PortForward) -> None:
        """Forget the forward; one that is not there, or a machine not running or gone, is fine."""
        self._enter("remove_port_forward")
        prefix = hostfwd_rule(forward).rsplit("-", 1)[0] + "-"

        def change(stored: _Record | None, _faults: Faults) -> tuple[_Record | None, None]:
            if stored is None:
                return None, None
            kept = tuple(rule for rule in stored.forwards if not rule.startswith(prefix))
            return attrs.evolve(stored, forwards=kept), None

        self._update(name, change)

    def vnc_address(self, name: str) -> tuple[str, int] | None:
        """``None``: the fake has no VNC server (:class:`InvalidTransition` when not running)."""
        self._enter("vnc_address")
        self._running(self._read_record(name), name, "find the VNC server of")
        return None

    def port_forwards(self, name: str) -> tuple[str, ...]:
        """The forwards recorded for the machine's current run, as hostfwd rules (for tests)."""
        return self._record(name).forwards

    # ---- simulation controls (not part of the protocol) -----------------------------------

    def faults(self) -> Faults:
        """The faults in effect: this object's options together with the stored ones."""
        return self._option_faults | self._stored_faults()

    def set_faults(self, faults: Faults) -> None:
        """Store ``faults`` in the faults file (replacing the stored ones): every process sees them."""
        with self._locked(_FAULTS_LOCK):
            self._write_faults(faults)

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

        def change(current: _Record | None, _faults: Faults) -> tuple[_Record | None, _Record]:
            if current is not None:
                raise ConflictError(f"fake: a machine named {name!r} exists")
            return record, record

        return self._update(name, change).info()

    # ---- helpers ----------------------------------------------------------------------

    def _exit(self, name: str, *, exit_code: int, reason: str, message: str) -> MachineStatus:
        def change(stored: _Record | None, _faults: Faults) -> tuple[_Record | None, _Record]:
            record = self._running(stored, name, reason.lower())
            now = time.time_ns()
            record = record.stopped(now, exit_code=exit_code, reason=reason, message=message)
            self._log(record, now, f"[fake] {name}: {message}", quiet=True)
            return record, record

        status = self._update(name, change).status()
        self._consoles.discard(_console_key(name))
        return status

    @staticmethod
    def _found(record: _Record | None, name: str) -> _Record:
        """``record``, or :class:`NotFoundError` when there is no machine ``name``."""
        if record is None:
            raise NotFoundError(f"fake: no machine named {name!r}")
        return record

    @classmethod
    def _running(cls, stored: _Record | None, name: str, operation: str) -> _Record:
        record = cls._found(stored, name)
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
