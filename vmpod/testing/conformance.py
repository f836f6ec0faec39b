"""The backend contract as a Hypothesis state machine that any backend can run.

:class:`BackendConformance` drives a backend through random lifecycles of a few
machines and compares every answer with a plain model (a dict of machine states
stepped by :data:`vmpod.backend.TRANSITIONS`).  It checks the contract written in
:mod:`vmpod.backend`:

* idempotence: every operation is called twice in a row and both results must be equal
  (statuses compared without ``message``; errors compared by type);
* states move only along ``TRANSITIONS``, and are the ones the model expects;
* ``list()`` and ``status()`` agree with each other and with the model; ``owned`` is set
  exactly for machines carrying :data:`~vmpod.machine.MARKER_LABEL`; labels and UUIDs round-trip;
* ``destroy()`` leaves nothing behind: once no machine exists, the state directory holds exactly
  what it held when the backend was opened (the runtime's per-pod files excepted);
* reopening (``close()`` then a new backend object) shows the same machines with the same
  statuses: a running machine is not restarted (``started_at`` unchanged);
* errors by type: :class:`~vmpod.errors.NotFoundError` for unknown names,
  :class:`~vmpod.errors.InvalidTransition` for ``console``/``stats`` of a machine that is not
  running, :class:`~vmpod.errors.ConflictError` for a second machine with a taken name,
  :class:`~vmpod.errors.BackendError` for ``console`` when the capabilities say there is none;
* dynamic port forwards (when the capabilities announce them): refused on a machine that is not
  running, a taken host port is a :class:`~vmpod.errors.ConflictError`, removal is idempotent.

A backend package's whole conformance test::

    from vmpod.testing.conformance import make_conformance_test
    from mybackend import MyBackend

    test_conformance = make_conformance_test(MyBackend, max_examples=20, stateful_step_count=15)

For a backend that needs a fixture (a daemon started by the test session), build the machine
class and run it inside the test::

    Conformance = backend_conformance(lambda config: MyBackend(config), stop_timeout=2)

    def test_conformance(libvirtd):
        run_conformance(Conformance, max_examples=5, stateful_step_count=10)

Each lifecycle starts with one machine in a random state (reached through the checked
rules); names are then drawn mostly among existing machines, so every operation meets every
state.  Each step is labelled with :func:`hypothesis.event` (``"stop: running machine"``) for
inspecting what a run covered.

Machines are built by ``make_machine(name, pod_dir)`` (:func:`default_machine` unless given:
64 MiB, one vCPU, a 1 MiB sparse raw disk, no network); the state machine then sets their UUID
and labels.  Each example works in a new temporary state directory, removed afterwards.  A
violation raises :class:`ContractViolation` (an :class:`AssertionError`) naming the rule broken;
Hypothesis shrinks it to a short program of backend calls.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, TypeVar, cast

import attrs
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from vmpod.backend import (
    TRANSITIONS,
    Backend,
    BackendConfig,
    ConsoleEndpoint,
    GuestAccess,
    MachineInfo,
    MachineState,
    MachineStats,
    MachineStatus,
)
from vmpod.consolemux import connect_unix
from vmpod.errors import BackendError, ConflictError, InvalidTransition, NotFoundError
from vmpod.machine import MARKER_LABEL, Disk, DiskFormat, DiskRole, Machine, NetworkMode, PortForward
from vmpod.model import DiskDriver

__all__ = [
    "CONFORMANCE_LABEL",
    "BackendConformance",
    "ConformanceConfig",
    "ContractViolation",
    "backend_conformance",
    "default_machine",
    "make_conformance_test",
    "run_conformance",
]

#: Label put on every machine the state machine creates (value: the run's name prefix).
CONFORMANCE_LABEL = "vmpod.io/conformance"

#: The per-pod directories (``<state_dir>/pods/<name>``) belong to the runtime, not the backend.
PODS = "pods"

_T = TypeVar("_T")


class ContractViolation(AssertionError):
    """A backend broke the contract of :mod:`vmpod.backend`; the message says how."""


def default_machine(name: str, pod_dir: Path) -> Machine:
    """A tiny machine any hypervisor can define and boot (to firmware): 64 MiB, 1 vCPU, a blank 1 MiB disk.

    Creates ``pod_dir`` with the disk ``root.img`` (sparse, raw) and the runtime directory ``run/``;
    the serial log is ``pod_dir/serial.log``.  The UUID and labels are set by the state machine.
    """
    run = pod_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    root = pod_dir / "root.img"
    with open(root, "ab") as disk:
        disk.truncate(1 << 20)
    return Machine(
        name=name,
        uuid=uuid.uuid4(),
        memory_bytes=64 << 20,
        vcpus=1,
        disk_bus=DiskDriver.VIRTIO,
        disks=(Disk(name="root", path=str(root), format=DiskFormat.RAW, role=DiskRole.ROOT),),
        serial_log=str(pod_dir / "serial.log"),
        runtime_dir=str(run),
        vnc=False,
    )


@attrs.frozen
class ConformanceConfig:
    """How to run the state machine against one backend.

    :param factory: builds the backend (a :attr:`vmpod.hookspecs.BackendSpec.factory`).
    :param make_machine: ``make_machine(name, pod_dir) -> Machine``; UUID and labels are replaced.
    :param options: the ``BackendConfig.options`` every backend object gets.
    :param machines: how many machine names the lifecycles use (few: so operations collide).
    :param stop_timeout: the ``timeout`` passed to ``stop``.
    :param base_dir: where the temporary state directories go (default: the system's temp dir).
    :param check_files: check that the state directory is clean when no machine is left.
    """

    factory: Callable[[BackendConfig], Backend]
    make_machine: Callable[[str, Path], Machine] = default_machine
    options: Mapping[str, str] = attrs.field(factory=dict)
    machines: int = 3
    stop_timeout: float = 5.0
    base_dir: str | None = None
    check_files: bool = True


@attrs.frozen
class _Outcome:
    """What a call returned or raised; equal when the values are equal or the errors of one type."""

    value: object = None
    error: Exception | None = None

    def key(self) -> object:
        if self.error is not None:
            return ("raised", type(self.error))
        return _same(self.value) if isinstance(self.value, MachineStatus) else self.value

    def __str__(self) -> str:
        return f"raised {type(self.error).__name__}: {self.error}" if self.error is not None else repr(self.value)


def _call(function: Callable[[], object]) -> _Outcome:
    try:
        return _Outcome(value=function())
    except Exception as error:  # every error is compared, by type
        return _Outcome(error=error)


def _free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _same(status: MachineStatus) -> MachineStatus:
    """A status for comparison: without its free-text message."""
    return attrs.evolve(status, message="")


def _pick_name(machine: BackendConformance) -> st.SearchStrategy[str]:
    """Any name of the pool, with machines that exist drawn at least half the time."""
    names = st.sampled_from(machine.names)
    return st.sampled_from(sorted(machine.model)) | names if machine.model else names


_names = st.runner().flatmap(_pick_name)
_existing = st.runner().flatmap(lambda machine: st.sampled_from(sorted(machine.model)))


class BackendConformance(RuleBasedStateMachine):
    """Random lifecycles of a few machines, checked against a dict model (see the module docstring).

    Subclasses set :attr:`config`; :func:`backend_conformance` makes one.
    """

    config: ClassVar[ConformanceConfig]

    def __init__(self) -> None:
        super().__init__()
        cfg = self.config
        self.state_dir = Path(tempfile.mkdtemp(prefix="vmpod-conformance-", dir=cfg.base_dir))
        self.backend_config = BackendConfig(state_dir=str(self.state_dir), options=dict(cfg.options))
        self.prefix = f"conf{uuid.uuid4().hex[:8]}"
        self.names = [f"{self.prefix}-{index}" for index in range(cfg.machines)]
        self.uuids = {name: uuid.uuid4() for name in self.names}
        #: the model: machine name -> expected state
        self.model: dict[str, MachineState] = {}
        #: per machine of the model: the last status, the labels it was created with, the last state seen
        self.statuses: dict[str, MachineStatus] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.seen: dict[str, MachineState] = {}
        self.backend = cfg.factory(self.backend_config)
        self.capabilities = self.backend.capabilities()
        self.baseline = self._files() if cfg.check_files else frozenset()

    # ---- helpers --------------------------------------------------------------------

    @staticmethod
    def _check(condition: bool, message: str) -> None:
        if not condition:
            raise ContractViolation(message)

    def _files(self) -> frozenset[str]:
        """Every file and directory under the state directory, except the runtime's ``pods/``."""
        found: set[str] = set()
        for root, dirs, files in os.walk(self.state_dir):
            relative = os.path.relpath(root, self.state_dir)
            if relative == ".":
                dirs[:] = [d for d in dirs if d != PODS]
                relative = ""
            found.update(os.path.join(relative, d) + "/" for d in dirs)
            found.update(os.path.join(relative, f) for f in files)
        return frozenset(found)

    def _machine(self, name: str, owned: bool, machine_uuid: uuid.UUID | None = None) -> Machine:
        labels = {CONFORMANCE_LABEL: self.prefix, **({MARKER_LABEL: "true"} if owned else {})}
        machine = self.config.make_machine(name, self.state_dir / PODS / name)
        return attrs.evolve(machine, uuid=machine_uuid or self.uuids[name], labels=labels)

    def _twice(self, operation: str, name: str, function: Callable[[], object]) -> _Outcome:
        """Call ``function`` twice; both outcomes must be equal (idempotence)."""
        self._event(operation, name)
        first = _call(function)
        second = _call(function)
        self._check(first.key() == second.key(),
                    f"{operation}({name!r}) is not idempotent: the first call {first}, the second {second}")
        return first

    def _expect_error(self, operation: str, name: str, outcome: _Outcome, kind: type[Exception]) -> None:
        self._check(isinstance(outcome.error, kind),
                    f"{operation}({name!r}) must raise {kind.__name__} ({self._describe(name)}), but it {outcome}")

    def _expect(self, operation: str, name: str, outcome: _Outcome, kind: type[_T]) -> _T:
        if outcome.error is not None:
            raise ContractViolation(f"{operation}({name!r}) failed ({self._describe(name)}): {outcome}") \
                from outcome.error
        self._check(isinstance(outcome.value, kind),
                    f"{operation}({name!r}) must return a {kind.__name__}, not {outcome.value!r}")
        return cast(_T, outcome.value)

    def _expect_status(self, operation: str, name: str, outcome: _Outcome) -> MachineStatus:
        status = self._expect(operation, name, outcome, MachineStatus)
        self._check(status.name == name, f"{operation}({name!r}) returned the status of {status.name!r}")
        self._observe(name, status.state, operation)
        return status

    def _event(self, operation: str, name: str) -> None:
        """Label the step for ``--hypothesis-show-statistics`` (which branches a run covered)."""
        event(f"{operation}: {self.model.get(name, 'unknown')} machine")

    def _describe(self, name: str) -> str:
        if name not in self.uuids:
            return "no machine involved"
        return f"the machine is {self.model[name]}" if name in self.model else "there is no such machine"

    def _observe(self, name: str, state: MachineState, where: str) -> None:
        """Every state a backend reports must follow from the previous one by :data:`TRANSITIONS`."""
        previous = self.seen.get(name)
        self._check(previous is None or state == previous or state in TRANSITIONS[previous],
                    f"{where}: {name!r} went from {previous} to {state}, which TRANSITIONS does not allow")
        self.seen[name] = state

    def _step(self, name: str, status: MachineStatus, expected: MachineState, operation: str) -> None:
        """Move the model to ``expected`` (by the table) and check the backend went there too."""
        current = self.model[name]
        assert expected == current or expected in TRANSITIONS[current], "the model broke TRANSITIONS"
        self._check(status.state == expected,
                    f"{operation}({name!r}) left the machine {status.state}; from {current} it must be {expected}")
        self._check(status.created_at == self.statuses[name].created_at,
                    f"{operation}({name!r}) changed created_at of {name!r}")
        self._check_timestamps(operation, status)
        self.model[name] = expected
        self.statuses[name] = status

    def _check_timestamps(self, where: str, status: MachineStatus) -> None:
        self._check(status.created_at > 0, f"{where}: {status.name!r} has no created_at")
        if status.state is MachineState.CREATED:
            self._check(status.started_at == 0 and status.finished_at == 0,
                        f"{where}: {status.name!r} was never started but has started_at/finished_at: {status}")
        elif status.state is MachineState.RUNNING:
            self._check(status.started_at >= status.created_at and status.finished_at == 0,
                        f"{where}: running {status.name!r} needs started_at and no finished_at: {status}")
        elif status.state is MachineState.STOPPED:
            self._check(status.finished_at >= status.started_at > 0 and status.exit_reason != "",
                        f"{where}: stopped {status.name!r} needs started_at <= finished_at and an exit_reason: "
                        f"{status}")

    # ---- rules: the lifecycle -----------------------------------------------------------

    @initialize(name=_names, owned=st.booleans(),
                state=st.sampled_from([MachineState.CREATED, MachineState.RUNNING, MachineState.STOPPED]))
    def first_machine(self, name: str, owned: bool, state: MachineState) -> None:
        """Every lifecycle starts with one machine in a random state, reached by the checked rules."""
        self._create(name, owned)
        if state is not MachineState.CREATED:
            self._start(name)
        if state is MachineState.STOPPED:
            self._stop(name)

    @rule(name=_names, owned=st.booleans())
    def create(self, name: str, owned: bool) -> None:
        """Create (twice); an existing machine with the same UUID is returned unchanged."""
        self._create(name, owned)

    def _create(self, name: str, owned: bool) -> None:
        machine = self._machine(name, owned)
        status = self._expect_status("create", name, self._twice("create", name, lambda: self.backend.create(machine)))
        if name not in self.model:
            self._check(status.state is MachineState.CREATED, f"create({name!r}) must give CREATED, not {status}")
            self._check_timestamps("create", status)
            self.model[name] = MachineState.CREATED
            self.statuses[name] = status
            self.labels[name] = dict(machine.labels)
        else:
            self._check(_same(status) == _same(self.statuses[name]),
                        f"create({name!r}) of an existing machine must return its status unchanged: "
                        f"{self.statuses[name]}, not {status}")

    @precondition(lambda self: bool(self.model))
    @rule(name=_existing)
    def create_conflicting(self, name: str) -> None:
        """A second machine with a taken name (another UUID) is a ConflictError and changes nothing."""
        machine = self._machine(name, True, uuid.uuid4())
        self._expect_error("create with another UUID", name,
                           self._twice("create", name, lambda: self.backend.create(machine)), ConflictError)

    @rule(name=_names)
    def start(self, name: str) -> None:
        """Start (twice): CREATED/STOPPED -> RUNNING; a running machine is left alone (same started_at)."""
        self._start(name)

    def _start(self, name: str) -> None:
        outcome = self._twice("start", name, lambda: self.backend.start(name))
        if name not in self.model:
            self._expect_error("start", name, outcome, NotFoundError)
            return
        before = self.statuses[name]
        status = self._expect_status("start", name, outcome)
        if before.state is MachineState.RUNNING:
            self._check(status.started_at == before.started_at,
                        f"start({name!r}) of a running machine restarted it (started_at {before.started_at} -> "
                        f"{status.started_at})")
        else:
            self._check(status.started_at >= before.finished_at,
                        f"start({name!r}): started_at {status.started_at} is before the last finish")
        self._step(name, status, MachineState.RUNNING, "start")

    @rule(name=_names)
    def stop(self, name: str) -> None:
        """Stop (twice): RUNNING -> STOPPED; any other state is returned unchanged."""
        self._stop(name)

    def _stop(self, name: str) -> None:
        timeout = self.config.stop_timeout
        outcome = self._twice("stop", name, lambda: self.backend.stop(name, timeout))
        if name not in self.model:
            self._expect_error("stop", name, outcome, NotFoundError)
            return
        before = self.statuses[name]
        status = self._expect_status("stop", name, outcome)
        if before.state is MachineState.RUNNING:
            self._check(status.started_at == before.started_at, f"stop({name!r}) changed started_at")
            self._step(name, status, MachineState.STOPPED, "stop")
        else:
            self._check(_same(status) == _same(before),
                        f"stop({name!r}) of a {before.state} machine must change nothing: {before}, not {status}")

    @rule(name=_names)
    def destroy(self, name: str) -> None:
        """Destroy (twice, and unknown names too): always succeeds; afterwards the machine is gone."""
        outcome = self._twice("destroy", name, lambda: self.backend.destroy(name))
        self._check(outcome.error is None and outcome.value is None, f"destroy({name!r}) must return None: {outcome}")
        self._expect_error("status after destroy", name, _call(lambda: self.backend.status(name)), NotFoundError)
        self.model.pop(name, None)
        self.statuses.pop(name, None)
        self.labels.pop(name, None)
        self.seen.pop(name, None)

    @rule(name=_names)
    def status(self, name: str) -> None:
        """Status (twice): NotFoundError for unknown names, else what the model recorded."""
        outcome = self._twice("status", name, lambda: self.backend.status(name))
        if name not in self.model:
            self._expect_error("status", name, outcome, NotFoundError)
            return
        status = self._expect_status("status", name, outcome)
        self._check(_same(status) == _same(self.statuses[name]),
                    f"status({name!r}) changed by itself: {self.statuses[name]} -> {status}")

    @rule(name=_names)
    def console(self, name: str) -> None:
        """Console (twice): an endpoint for a running machine (when capable), else the right error."""
        outcome = self._twice("console", name, lambda: self.backend.console(name))
        if name not in self.model:
            self._expect_error("console", name, outcome, NotFoundError)
        elif self.model[name] is not MachineState.RUNNING:
            self._expect_error("console", name, outcome, InvalidTransition)
        elif not self.capabilities.console:
            self._expect_error("console (capabilities say no console)", name, outcome, BackendError)
        else:
            endpoint = self._expect("console", name, outcome, ConsoleEndpoint)
            self._check(endpoint.kind in ("unix", "pty") and bool(endpoint.path),
                        f"console({name!r}) returned a bad endpoint: {endpoint}")
            if endpoint.kind == "unix":  # a console monitor: it takes clients (several may attach)
                try:
                    connect_unix(endpoint.path, timeout=10).close()
                except OSError as exc:
                    self._check(False, f"console({name!r}): cannot connect to {endpoint.path}: {exc}")

    @rule(name=_names)
    def stats(self, name: str) -> None:
        """Stats: for a running machine, sane and monotonic; else NotFoundError or InvalidTransition."""
        self._event("stats", name)
        first = _call(lambda: self.backend.stats(name))
        second = _call(lambda: self.backend.stats(name))
        if name not in self.model:
            self._expect_error("stats", name, first, NotFoundError)
            self._expect_error("stats", name, second, NotFoundError)
        elif self.model[name] is not MachineState.RUNNING:
            self._expect_error("stats", name, first, InvalidTransition)
            self._expect_error("stats", name, second, InvalidTransition)
        else:
            one = self._expect("stats", name, first, MachineStats)
            two = self._expect("stats", name, second, MachineStats)
            self._check(one.timestamp > 0 and one.cpu_time_ns >= 0 and one.memory_bytes >= 0,
                        f"stats({name!r}) are not sane: {one}")
            self._check(two.timestamp >= one.timestamp and two.cpu_time_ns >= one.cpu_time_ns,
                        f"stats({name!r}) went backwards: {one} then {two}")

    @rule(name=_names)
    def port_forward(self, name: str) -> None:
        """Dynamic forwards (backends with :class:`~vmpod.backend.GuestAccess`), on a free loopback port.

        Unknown machine: NotFoundError; not running: InvalidTransition (removing is fine);
        running without a user-mode NIC: BackendError; running with one: the forward is added,
        the same host port again is a ConflictError, and removing it (twice) frees the port.
        """
        if not (self.capabilities.port_forward and isinstance(self.backend, GuestAccess)):
            return
        access = self.backend
        forward = PortForward(guest_port=80, host_port=_free_port())
        self._event("port_forward", name)
        added = _call(lambda: access.add_port_forward(name, forward))
        if name not in self.model:
            self._expect_error("add_port_forward", name, added, NotFoundError)
            return
        removed = self._twice("remove_port_forward", name, lambda: access.remove_port_forward(name, forward))
        self._check(removed.error is None, f"remove_port_forward({name!r}) must not fail: {removed}")
        if self.model[name] is not MachineState.RUNNING:
            self._expect_error("add_port_forward", name, added, InvalidTransition)
            return
        machine = self.config.make_machine(name, self.state_dir / PODS / name)
        if not any(nic.mode is NetworkMode.USER for nic in machine.nics):
            self._expect_error("add_port_forward (no user-mode NIC)", name, added, BackendError)
            return
        self._check(added.error is None, f"add_port_forward({name!r}) failed: {added}")
        again = _call(lambda: access.add_port_forward(name, forward))
        self._check(again.error is None, f"add_port_forward({name!r}) after its removal failed: {again}")
        taken = _call(lambda: access.add_port_forward(name, forward))
        self._expect_error("add_port_forward (host port taken)", name, taken, ConflictError)
        access.remove_port_forward(name, forward)

    @rule()
    def reopen(self) -> None:
        """Close the backend, open a new one: same machines, same statuses, nothing restarted."""
        note(f"reopen with machines {self.model}")
        event(f"reopen: {'with' if MachineState.RUNNING in self.model.values() else 'without'} a running machine")
        self.backend.close()
        self.backend = self.config.factory(self.backend_config)
        for name, before in self.statuses.items():
            outcome = _call(functools.partial(self.backend.status, name))
            status = self._expect_status("status after reopen", name, outcome)
            if before.state is MachineState.RUNNING:
                self._check(status.state is MachineState.RUNNING and status.started_at == before.started_at,
                            f"reopening the backend restarted or stopped running {name!r}: {before} -> {status}")
            self._check(_same(status) == _same(before), f"reopening changed {name!r}: {before} -> {status}")

    # ---- invariants ---------------------------------------------------------------------

    @invariant()
    def list_agrees(self) -> None:
        """``list()`` shows exactly the model's machines, in the model's states, with marker and labels."""
        infos = self._expect("list", "", _call(self.backend.list), tuple)
        ours: dict[str, MachineInfo] = {}
        for info in infos:
            self._check(isinstance(info, MachineInfo), f"list() returned {info!r}, not a MachineInfo")
            if info.name in self.uuids:
                self._check(info.name not in ours, f"list() shows {info.name!r} twice")
                ours[info.name] = info
        missing = sorted(set(self.model) - set(ours))
        self._check(not missing, f"list() misses {missing} (in states {[str(self.model[n]) for n in missing]})")
        extra = sorted(set(ours) - set(self.model))
        self._check(not extra, f"list() shows machines that were destroyed or never created: {extra}")
        for name, info in ours.items():
            self._observe(name, info.state, "list()")
            self._check(info.state == self.model[name],
                        f"list() says {name!r} is {info.state}; it must be {self.model[name]}")
            self._check(info.uuid == str(self.uuids[name]), f"list() gives {name!r} the UUID {info.uuid!r}")
            owned = MARKER_LABEL in self.labels[name]
            self._check(info.owned == owned, f"list() says owned={info.owned} for {name!r}; it must be {owned}")
            self._check(dict(info.labels) == self.labels[name],
                        f"list() gives {name!r} the labels {dict(info.labels)}, not {self.labels[name]}")
            status = self._expect("status", name, _call(functools.partial(self.backend.status, name)), MachineStatus)
            self._check(status.state == info.state, f"list() says {name!r} is {info.state}, status() {status.state}")

    @precondition(lambda self: not self.model and self.config.check_files)
    @invariant()
    def nothing_left_behind(self) -> None:
        """With no machine left, the state directory is as the backend found it (``pods/`` excepted)."""
        event("leak check: no machine left")
        left = sorted(self._files() - self.baseline)
        self._check(not left, f"with every machine destroyed, files are left behind in {self.state_dir}: {left}")

    def teardown(self) -> None:
        """Destroy what is left (best effort: checks belong to the rules), close, remove the state directory."""
        for name in self.names:
            with contextlib.suppress(Exception):
                self.backend.destroy(name)
        with contextlib.suppress(Exception):
            self.backend.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def backend_conformance(
    factory: Callable[[BackendConfig], Backend],
    *,
    make_machine: Callable[[str, Path], Machine] = default_machine,
    options: Mapping[str, str] | None = None,
    machines: int = 3,
    stop_timeout: float = 5.0,
    base_dir: str | None = None,
    check_files: bool = True,
) -> type[BackendConformance]:
    """A :class:`BackendConformance` subclass for one backend (parameters: :class:`ConformanceConfig`)."""
    config = ConformanceConfig(factory=factory, make_machine=make_machine, options=dict(options or {}),
                               machines=machines, stop_timeout=stop_timeout, base_dir=base_dir,
                               check_files=check_files)
    name = f"{getattr(factory, '__name__', 'Backend')}Conformance"
    return type(name, (BackendConformance,), {"config": config, "__module__": __name__})


def run_conformance(
    machine_class: type[BackendConformance],
    *,
    max_examples: int = 100,
    stateful_step_count: int = 25,
    parent: settings | None = None,
) -> None:
    """Run ``machine_class`` as a test: ``max_examples`` lifecycles of up to ``stateful_step_count`` steps.

    :param parent: Hypothesis settings to start from (default: the current profile); deadlines are
        always off (real hypervisors are slow and uneven).
    """
    run_state_machine_as_test(machine_class, settings=settings(  # type: ignore[no-untyped-call]
        parent,
        max_examples=max_examples,
        stateful_step_count=stateful_step_count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))


def make_conformance_test(
    factory: Callable[[BackendConfig], Backend],
    *,
    max_examples: int = 100,
    stateful_step_count: int = 25,
    make_machine: Callable[[str, Path], Machine] = default_machine,
    options: Mapping[str, str] | None = None,
    machines: int = 3,
    stop_timeout: float = 5.0,
    base_dir: str | None = None,
    check_files: bool = True,
) -> Callable[[], None]:
    """A pytest test function running the conformance state machine against ``factory``'s backend.

    Assign it in a test module: ``test_conformance = make_conformance_test(MyBackend, max_examples=20)``.
    """
    machine_class = backend_conformance(factory, make_machine=make_machine, options=options, machines=machines,
                                        stop_timeout=stop_timeout, base_dir=base_dir, check_files=check_files)

    def test_conformance() -> None:
        run_conformance(machine_class, max_examples=max_examples, stateful_step_count=stateful_step_count)

    test_conformance.__doc__ = f"The backend contract holds for {machine_class.__name__} ({max_examples} lifecycles)."
    return test_conformance
