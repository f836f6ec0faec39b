"""The backend conformance state machine: the fake passes it, and each kind of broken backend fails it."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import attrs
import pytest
from hypothesis import Phase, settings
from vmpod_fake import FakeBackend

from vmpod.backend import (
    BackendConfig,
    Capabilities,
    ConsoleEndpoint,
    MachineInfo,
    MachineState,
    MachineStats,
    MachineStatus,
)
from vmpod.errors import ConflictError
from vmpod.machine import Machine
from vmpod.testing.conformance import (
    BackendConformance,
    ContractViolation,
    backend_conformance,
    default_machine,
    make_conformance_test,
    run_conformance,
)

# Hundreds of lifecycles: about 6 s on a laptop-class machine.
test_fake_backend_conforms = make_conformance_test(FakeBackend, max_examples=300, stateful_step_count=25)


def test_fake_backend_conforms_when_every_guest_ignores_power_off() -> None:
    """The timeout path of ``stop`` (forced off, exit reason Killed) is still within the contract."""
    machine_class = backend_conformance(FakeBackend, options={"hang_stop": "*"}, stop_timeout=0.0)
    run_conformance(machine_class, max_examples=60, stateful_step_count=20)


def test_fake_backend_conforms_with_machines_built_by_the_caller(tmp_path: Path) -> None:
    """``make_machine`` supplies hypervisor-specific parts; the state machine sets the identity."""
    built: list[str] = []

    def make_machine(name: str, pod_dir: Path) -> Machine:
        built.append(name)
        return attrs.evolve(default_machine(name, pod_dir), vcpus=2, memory_bytes=128 << 20)

    run_conformance(backend_conformance(FakeBackend, make_machine=make_machine, machines=2),
                    max_examples=20, stateful_step_count=10)
    assert built


# --------------------------------------------------------------------------- broken backends


class Delegating:
    """A backend passing every call to a :class:`FakeBackend`; subclasses break one thing."""

    name = "broken"

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.inner = FakeBackend(config)

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def create(self, machine: Machine) -> MachineStatus:
        return self.inner.create(machine)

    def start(self, name: str) -> MachineStatus:
        return self.inner.start(name)

    def stop(self, name: str, timeout: float) -> MachineStatus:
        return self.inner.stop(name, timeout)

    def destroy(self, name: str) -> None:
        self.inner.destroy(name)

    def status(self, name: str) -> MachineStatus:
        return self.inner.status(name)

    def list(self) -> tuple[MachineInfo, ...]:
        return self.inner.list()

    def console(self, name: str) -> ConsoleEndpoint:
        return self.inner.console(name)

    def stats(self, name: str) -> MachineStats:
        return self.inner.stats(name)

    def close(self) -> None:
        self.inner.close()


class CreateRefusesExisting(Delegating):
    """Not idempotent: creating a machine that exists is an error."""

    def create(self, machine: Machine) -> MachineStatus:
        if any(info.name == machine.name for info in self.inner.list()):
            raise ConflictError(f"{machine.name} exists")
        return self.inner.create(machine)


class StartRestartsRunning(Delegating):
    """Starting a running machine reboots it."""

    def start(self, name: str) -> MachineStatus:
        if self.inner.status(name).state is MachineState.RUNNING:
            self.inner.stop(name, 0)
        return self.inner.start(name)


class ListDropsStopped(Delegating):
    """``list()`` forgets stopped machines."""

    def list(self) -> tuple[MachineInfo, ...]:
        return tuple(info for info in self.inner.list() if info.state is not MachineState.STOPPED)


class DestroyLeaksFile(Delegating):
    """``create`` makes a per-machine file that ``destroy`` forgets."""

    def create(self, machine: Machine) -> MachineStatus:
        (self.inner.directory / f"{machine.name}.nvram").touch()
        return self.inner.create(machine)


class ForgetsOnReopen(Delegating):
    """Keeps its machines per backend object, so a new object sees none."""

    def __init__(self, config: BackendConfig) -> None:
        # under pods/, which the leak check leaves to the runtime: this backend's only fault is forgetting
        private = Path(config.state_dir) / "pods" / f"private-{uuid.uuid4().hex}"
        super().__init__(attrs.evolve(config, state_dir=str(private)))


class ReopenRestartsRunning(Delegating):
    """Opening the backend reboots every running machine."""

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        for info in self.inner.list():
            if info.state is MachineState.RUNNING:
                self.inner.stop(info.name, 0)
                self.inner.start(info.name)


class StoppedLooksCreated(Delegating):
    """Reports a stopped machine as CREATED: RUNNING -> CREATED is not in TRANSITIONS."""

    def _fix(self, status: MachineStatus) -> MachineStatus:
        if status.state is MachineState.STOPPED:
            return attrs.evolve(status, state=MachineState.CREATED)
        return status

    def stop(self, name: str, timeout: float) -> MachineStatus:
        return self._fix(self.inner.stop(name, timeout))

    def status(self, name: str) -> MachineStatus:
        return self._fix(self.inner.status(name))


class OwnsEverything(Delegating):
    """Claims every machine for vmpod, marker or not (garbage collection would delete others' VMs)."""

    def list(self) -> tuple[MachineInfo, ...]:
        return tuple(attrs.evolve(info, owned=True) for info in self.inner.list())


class KeyErrorForUnknown(Delegating):
    """An unknown name raises a bare KeyError instead of NotFoundError."""

    def status(self, name: str) -> MachineStatus:
        if not any(info.name == name for info in self.inner.list()):
            raise KeyError(name)
        return self.inner.status(name)


class StatsOfStoppedMachine(Delegating):
    """``stats`` of a machine that is not running returns zeros instead of InvalidTransition."""

    def stats(self, name: str) -> MachineStats:
        if self.inner.status(name).state is not MachineState.RUNNING:
            return MachineStats(timestamp=1, cpu_time_ns=0, memory_bytes=0)
        return self.inner.stats(name)


class CreateIgnoresUUID(Delegating):
    """A second machine with a taken name silently returns the first one."""

    def create(self, machine: Machine) -> MachineStatus:
        for info in self.inner.list():
            if info.name == machine.name:
                return self.inner.status(machine.name)
        return self.inner.create(machine)


BROKEN = [
    pytest.param(CreateRefusesExisting, r"create\('conf\w+-\d'\) is not idempotent", id="non-idempotent-create"),
    pytest.param(StartRestartsRunning, r"start\('conf\w+-\d'\) (is not idempotent|of a running machine restarted)",
                 id="start-restarts-running"),
    pytest.param(ListDropsStopped, r"list\(\) misses", id="list-drops-stopped"),
    pytest.param(DestroyLeaksFile, r"files are left behind .*\.nvram", id="destroy-leaks-file"),
    pytest.param(ForgetsOnReopen, r"status after reopen\('conf\w+-\d'\) failed", id="forgets-on-reopen"),
    pytest.param(ReopenRestartsRunning, r"reopening the backend restarted", id="reopen-restarts-running"),
    pytest.param(StoppedLooksCreated, r"from running to created, which TRANSITIONS does not allow",
                 id="transition-not-in-table"),
    pytest.param(OwnsEverything, r"owned=True for .*; it must be False", id="owned-without-marker"),
    pytest.param(KeyErrorForUnknown, r"must raise NotFoundError .* raised KeyError", id="wrong-error-type"),
    pytest.param(StatsOfStoppedMachine, r"stats\(.*\) must raise InvalidTransition", id="stats-of-stopped"),
    pytest.param(CreateIgnoresUUID, r"must raise ConflictError", id="create-ignores-uuid"),
]


@pytest.mark.parametrize(("backend", "message"), BROKEN)
def test_conformance_catches_broken_backend(backend: type[Delegating], message: str) -> None:
    """Each deliberately broken backend fails the state machine, for the reason it is broken.

    Without shrinking (only detection matters here, and it keeps the test fast).
    """
    machine_class: type[BackendConformance] = backend_conformance(backend)
    no_shrinking = settings(database=None, phases=[Phase.generate])
    with pytest.raises(ContractViolation) as caught:
        run_conformance(machine_class, max_examples=300, stateful_step_count=25, parent=no_shrinking)
    assert re.search(message, str(caught.value)), str(caught.value)


def test_delegating_backend_itself_conforms() -> None:
    """The base of the broken variants is correct, so each failure above is due to its one breakage."""
    run_conformance(backend_conformance(Delegating), max_examples=50, stateful_step_count=20)
