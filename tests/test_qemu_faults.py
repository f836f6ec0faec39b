"""The qemu backend under faults: a killed qemu, a killed supervisor, a pidfile whose pid was reused.

The machines boot only to the firmware (no guest needed): what matters here is the processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from vmpod_qemu.backend import QemuBackend

from tests.support.qemu import (
    destroy_all,
    open_backend,
    pids_mentioning,
    qemu_pid,
    qemu_pids,
    supervisor_pid,
    wait_until,
)
from vmpod.backend import MachineState
from vmpod.errors import BackendError, InvalidTransition
from vmpod.machine import MARKER_LABEL, Machine
from vmpod.procutil import proc_starttime, read_json, write_json
from vmpod.testing.conformance import default_machine


@pytest.fixture
def qemu_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose qemu machines are destroyed after the test, even when it fails."""
    state = tmp_path / "state"
    yield state
    destroy_all(state)


def firmware_machine(tmp_path: Path, name: str) -> Machine:
    machine = default_machine(name, tmp_path / "pods" / name)
    return attrs.evolve(machine, labels={MARKER_LABEL: "true"})


def started(backend: QemuBackend, machine: Machine) -> int:
    backend.create(machine)
    assert backend.start(machine.name).state is MachineState.RUNNING
    return qemu_pid(backend, machine.name)


def gone(pid: int) -> bool:
    return proc_starttime(pid) is None


def assert_clean(backend: QemuBackend, name: str) -> None:
    backend.destroy(name)
    machine_dir = backend.root / name
    assert not machine_dir.exists()
    assert pids_mentioning(str(machine_dir)) == []


def test_sigkill_of_qemu_is_reported_as_killed(tmp_path: Path, qemu_state: Path) -> None:
    backend = open_backend(qemu_state)
    machine = firmware_machine(tmp_path, "killed")
    pid = started(backend, machine)
    before = backend.status("killed")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: backend.status("killed").state is MachineState.STOPPED, what="the kill to be noticed")
    status = backend.status("killed")
    assert (status.exit_reason, status.exit_code) == ("Killed", 137), status
    assert "SIGKILL" in status.message
    assert status.started_at == before.started_at <= status.finished_at
    # The supervisor records the exit first, then closes the console monitor and exits.
    supervisor = supervisor_pid(backend, "killed")
    wait_until(lambda: gone(supervisor), what="the supervisor to finish after qemu died")
    with pytest.raises(InvalidTransition):
        backend.stats("killed")
    # It can be started again: a new qemu, a new supervisor.
    restarted = backend.start("killed")
    assert restarted.state is MachineState.RUNNING
    assert restarted.started_at > status.finished_at
    assert qemu_pid(backend, "killed") != pid
    assert_clean(backend, "killed")


def test_lost_supervisor_is_replaced_without_touching_qemu(tmp_path: Path, qemu_state: Path) -> None:
    """A killed supervisor is re-attached by the next status(); a qemu that then dies is STOPPED."""
    backend = open_backend(qemu_state)
    pid = started(backend, firmware_machine(tmp_path, "orphan"))
    first = supervisor_pid(backend, "orphan")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gone(first), what="the supervisor to die")
    assert backend.status("orphan").state is MachineState.RUNNING
    replacement = [p for p in pids_mentioning(str(backend.root / "orphan")) if p != pid]
    assert len(replacement) == 1, "exactly one new supervisor (attach mode)"
    assert qemu_pids(backend.root / "orphan") == [pid]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: backend.status("orphan").state is MachineState.STOPPED, what="the kill to be noticed")
    status = backend.status("orphan")
    # The replacement is not qemu's parent: it saw qemu go, not how.
    assert (status.exit_reason, status.exit_code) == ("Killed", -1), status
    wait_until(lambda: gone(replacement[0]), what="the replacement supervisor to finish")
    assert_clean(backend, "orphan")


def test_stale_pidfile_whose_pid_was_reused_is_never_signalled(tmp_path: Path, qemu_state: Path) -> None:
    """qemu and its supervisor died unseen; their pid now belongs to another program."""
    state = qemu_state
    backend = open_backend(state)
    pid = started(backend, firmware_machine(tmp_path, "stale"))
    machine_dir = backend.root / "stale"
    keeper = supervisor_pid(backend, "stale")
    os.kill(keeper, signal.SIGKILL)
    wait_until(lambda: gone(keeper), what="the supervisor to die")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), what="qemu to die")
    backend.close()

    # Another program now has the pid the files name (simulated: the files are pointed at it).
    other = subprocess.Popen(["sleep", "600"])
    try:
        run = read_json(machine_dir / "run.json")
        assert run is not None
        write_json(machine_dir / "run.json", {**run, "pid": other.pid})
        (machine_dir / "qemu.pid").write_text(f"{other.pid}\n")

        backend = open_backend(state)  # a vmpod restart: must not adopt or attach to the stranger
        status = backend.status("stale")
        assert status.state is MachineState.STOPPED
        assert (status.exit_reason, status.exit_code) == ("Killed", -1)
        assert backend.stop("stale", 1).state is MachineState.STOPPED
        with pytest.raises(InvalidTransition):
            backend.console("stale")
        assert [info.state for info in backend.list()] == [MachineState.STOPPED]
        assert_clean(backend, "stale")
        assert other.poll() is None, "the program that reused the pid was signalled"
        assert proc_starttime(other.pid) is not None
    finally:
        other.kill()
        other.wait()


def test_start_failure_keeps_qemus_message(tmp_path: Path, qemu_state: Path) -> None:
    backend = open_backend(qemu_state)
    machine = firmware_machine(tmp_path, "broken")
    missing = attrs.evolve(machine.disks[0], path=str(tmp_path / "no-such-disk.img"))
    backend.create(attrs.evolve(machine, disks=(missing,)))
    with pytest.raises(BackendError, match=r"no-such-disk\.img"):
        backend.start("broken")
    status = backend.status("broken")
    assert (status.state, status.exit_reason) == (MachineState.STOPPED, "StartError")
    assert "no-such-disk.img" in status.message
    assert qemu_pids(backend.root / "broken") == []
    assert_clean(backend, "broken")


def test_deep_state_directory(tmp_path: Path) -> None:
    """Socket paths beyond the 108-byte unix limit: QMP and the console still work."""
    state = tmp_path / ("deep-" + "x" * 60) / ("deeper-" + "y" * 40)
    backend = open_backend(state)
    name = "a-machine-with-a-rather-long-name"
    try:
        started(backend, firmware_machine(tmp_path, name))
        assert len(str(backend.root / name / "qmp.sock")) > 108
        assert backend.status(name).message == "qemu: running"
        endpoint = backend.console(name)
        assert len(endpoint.path) < 108
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
            console.connect(endpoint.path)
        assert backend.stop(name, 0).exit_reason == "Killed"
        assert_clean(backend, name)
        assert not Path(endpoint.path).exists(), "the console link was left behind"
    finally:
        destroy_all(state)


def test_not_a_machine_name(tmp_path: Path, qemu_state: Path) -> None:
    backend = open_backend(qemu_state)
    backend.destroy("../escape")
    with pytest.raises(LookupError):
        backend.status("../escape")
    assert os.listdir(backend.root) == []


def test_concurrent_starts_run_one_qemu(tmp_path: Path, qemu_state: Path) -> None:
    """Two vmpod processes (here: backend objects in two threads) starting one machine: one qemu."""
    state = qemu_state
    first, second = open_backend(state), open_backend(state)
    first.create(firmware_machine(tmp_path, "twice"))
    statuses = []
    threads = [threading.Thread(target=lambda b=b: statuses.append(b.start("twice"))) for b in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [s.state for s in statuses] == [MachineState.RUNNING] * 2
    assert statuses[0].started_at == statuses[1].started_at
    assert len(qemu_pids(first.root / "twice")) == 1
    assert_clean(first, "twice")
