"""The fake backend's own features: persistence across processes, locking, faults, latency, logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import attrs
import pytest
from vmpod_fake import FakeBackend, Faults

from vmpod.backend import Backend, BackendConfig, MachineState
from vmpod.consolemux import connect_unix
from vmpod.errors import BackendError, ConflictError, InvalidTransition, NotFoundError, SpecError
from vmpod.machine import MARKER_LABEL, Disk, DiskFormat, DiskRole, Machine
from vmpod.plugins import get_plugin_manager
from vmpod.runtime.logs import read_lines
from vmpod.testing.conformance import default_machine

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F (?P<text>.*)$")


def open_fake(state_dir: Path, **options: str) -> FakeBackend:
    return FakeBackend(BackendConfig(state_dir=str(state_dir), options=options))


def machine(state_dir: Path, name: str = "vm") -> Machine:
    built = default_machine(name, state_dir / "pods" / name)
    seed = Path(built.runtime_dir).parent / "seed.iso"
    seed.write_bytes(b"seed")
    disks = (*built.disks, Disk(name="seed", path=str(seed), format=DiskFormat.RAW, role=DiskRole.SEED, cdrom=True))
    return attrs.evolve(built, disks=disks, labels={MARKER_LABEL: "true", "vmpod.io/pod": name})


def log_texts(path: str) -> list[str]:
    texts = []
    for line in Path(path).read_text().splitlines():
        match = CRI_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        texts.append(match["text"])
    return texts


def run_child(state_dir: Path, code: str) -> str:
    """Run ``code`` in a new Python process with ``backend`` opened on ``state_dir``; returns its stdout."""
    script = textwrap.dedent("""
        import json, sys
        from vmpod.backend import BackendConfig
        from vmpod_fake import FakeBackend
        backend = FakeBackend(BackendConfig(state_dir=sys.argv[1]))
    """) + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script, str(state_dir)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --------------------------------------------------------------------------- persistence


NO_FAULTS = {"fail_create": [], "fail_start": [], "hang_stop": [], "latency": 0.0, "op_latency": {}}


def test_files_are_under_the_backend_directory(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    directory = state_dir / "backends" / "fake"
    assert sorted(p.name for p in directory.iterdir()) == ["consoles", "faults.json", "machines", "state.lock"]
    assert json.loads((directory / "faults.json").read_text()) == {"format": 2, "faults": NO_FAULTS}
    assert list((directory / "machines").iterdir()) == []
    backend.create(machine(state_dir))
    (stored,) = (directory / "machines").iterdir()
    assert stored.name == "vm.json"
    data = json.loads(stored.read_text())
    assert (data["format"], data["machine"]["name"], data["machine"]["state"]) == (2, "vm", "created")
    backend.destroy("vm")
    assert sorted(p.name for p in directory.iterdir()) == ["consoles", "faults.json", "machines", "state.lock"]
    assert list((directory / "machines").iterdir()) == []


def test_a_call_touches_only_its_machine_file(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    for name in ("a", "b"):
        backend.create(default_machine(name, state_dir / "pods" / name))
    machines = state_dir / "backends" / "fake" / "machines"
    before = {p.name: p.stat().st_mtime_ns for p in machines.iterdir()}
    time.sleep(0.01)
    backend.start("a")
    after = {p.name: p.stat().st_mtime_ns for p in machines.iterdir()}
    assert after["b.json"] == before["b.json"]
    assert after["a.json"] != before["a.json"]


@pytest.mark.parametrize("name", ["with/slash", ".", "..", "a b%c", "ünï", "é" * 100, "x" * 300, "x" * 299 + "y"])
def test_any_machine_name_has_its_own_file(state_dir: Path, name: str) -> None:
    backend = open_fake(state_dir)
    backend.create(default_machine(name, state_dir / "pods" / "m"))
    backend.create(default_machine("other", state_dir / "pods" / "other"))
    assert backend.status(name).state is MachineState.CREATED
    assert [info.name for info in backend.list()] == sorted([name, "other"])
    files = list((state_dir / "backends" / "fake" / "machines").iterdir())
    assert len(files) == 2
    assert all(len(f.name) <= 220 and "/" not in f.name for f in files)
    backend.destroy(name)
    assert [info.name for info in backend.list()] == ["other"]
    with pytest.raises(NotFoundError):
        backend.status(name)


def test_a_format_1_state_file_is_split_on_open(state_dir: Path) -> None:
    directory = state_dir / "backends" / "fake"
    directory.mkdir(parents=True)
    record = {"name": "old", "uuid": str(uuid.uuid4()), "state": "running", "created_at": 1, "labels": {"k": "v"},
              "started_at": 2, "finished_at": 0, "exit_code": 0, "exit_reason": "", "message": "",
              "cpu_time_ns": 0, "memory_bytes": 1 << 20, "vcpus": 1, "serial_log": "", "disks": [], "seed": ""}
    (directory / "state.json").write_text(json.dumps({
        "format": 1, "machines": {"old": record}, "faults": {**NO_FAULTS, "fail_start": ["x*"]}}))
    backend = open_fake(state_dir)
    assert not (directory / "state.json").exists()
    (info,) = backend.list()
    assert (info.name, info.state, dict(info.labels)) == ("old", MachineState.RUNNING, {"k": "v"})
    assert backend.status("old").started_at == 2
    assert backend.faults().fail_start == ("x*",)


def test_an_unknown_format_is_refused(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.create(machine(state_dir))
    stored = state_dir / "backends" / "fake" / "machines" / "vm.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "format": 99}))
    with pytest.raises(BackendError, match="unsupported state file format 99"):
        backend.status("vm")
    with pytest.raises(BackendError, match="unsupported state file format 99"):
        backend.list()


def test_a_child_process_sees_the_running_machine_and_does_not_restart_it(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    vm = machine(state_dir)
    backend.create(vm)
    started = backend.start("vm")
    seen = json.loads(run_child(state_dir, """
        status = backend.start("vm")  # idempotent: must not reboot it
        print(json.dumps({"state": status.state, "started_at": status.started_at}))
    """))
    assert seen == {"state": "running", "started_at": started.started_at}
    assert backend.status("vm") == started
    assert sum("booting vm" in text for text in log_texts(vm.serial_log)) == 1


def test_a_change_made_by_a_child_process_is_seen_here(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.create(machine(state_dir))
    backend.start("vm")
    run_child(state_dir, 'backend.stop("vm", 5)')
    status = backend.status("vm")
    assert (status.state, status.exit_reason) == (MachineState.STOPPED, "Stopped")


def test_a_new_backend_object_sees_the_same_machines(state_dir: Path) -> None:
    first = open_fake(state_dir)
    first.create(machine(state_dir, "a"))
    first.create(machine(state_dir, "b"))
    first.start("b")
    before = {name: first.status(name) for name in ("a", "b")}
    first.close()
    second = open_fake(state_dir)
    assert {name: second.status(name) for name in ("a", "b")} == before
    assert [info.name for info in second.list()] == ["a", "b"]


def test_concurrent_processes_lose_no_update(state_dir: Path) -> None:
    open_fake(state_dir)
    code = textwrap.dedent("""
        import sys
        from vmpod.backend import BackendConfig
        from vmpod.testing.conformance import default_machine
        from vmpod_fake import FakeBackend
        from pathlib import Path
        backend = FakeBackend(BackendConfig(state_dir=sys.argv[1]))
        for i in range(15):
            name = f"p{sys.argv[2]}-{i}"
            backend.create(default_machine(name, Path(sys.argv[1]) / "pods" / name))
            backend.start(name)
    """)
    children = [subprocess.Popen([sys.executable, "-c", code, str(state_dir), str(n)]) for n in range(4)]
    assert [child.wait(timeout=120) for child in children] == [0, 0, 0, 0]
    infos = open_fake(state_dir).list()
    assert len(infos) == 60
    assert {info.state for info in infos} == {MachineState.RUNNING}


def test_concurrent_threads_lose_no_update(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    machines = [default_machine(f"t{n}", state_dir / "pods" / f"t{n}") for n in range(40)]
    errors: list[BaseException] = []

    def work(part: list[Machine]) -> None:
        try:
            for vm in part:
                backend.create(vm)
                backend.start(vm.name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(machines[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(info.name for info in backend.list()) == sorted(vm.name for vm in machines)
    assert all(backend.status(vm.name).state is MachineState.RUNNING for vm in machines)


# --------------------------------------------------------------------------- the protocol, simulated


def test_start_writes_a_boot_banner_as_cri_log_lines(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    vm = machine(state_dir)
    backend.create(vm)
    backend.start("vm")
    texts = log_texts(vm.serial_log)
    # what `vmpod logs` shows: the runtime's own reader agrees
    assert [line.content.decode().rstrip("\n") for line in read_lines(Path(vm.serial_log))] == texts
    assert {line.stream for line in read_lines(Path(vm.serial_log))} == {"stdout"}
    assert texts[0].startswith(f"[fake] booting vm (uuid {vm.uuid}, 1 vCPU, 64 MiB)")
    assert texts[1] == f"[fake] cloud-init seed: {vm.seed_disk.path if vm.seed_disk else ''}"
    assert texts[2] == "vm login: "
    backend.stop("vm", 5)
    assert log_texts(vm.serial_log)[3:] == ["[fake] vm: powered off by request"]


def test_create_is_idempotent_but_refuses_another_uuid(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    vm = machine(state_dir)
    assert backend.create(vm) == backend.create(vm)
    with pytest.raises(ConflictError, match="another UUID"):
        backend.create(attrs.evolve(vm, uuid=uuid.uuid4()))


def test_unknown_names(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    for call in (lambda: backend.status("x"), lambda: backend.start("x"), lambda: backend.stop("x", 1),
                 lambda: backend.console("x"), lambda: backend.stats("x")):
        with pytest.raises(NotFoundError, match="'x'"):
            call()
    backend.destroy("x")  # gone is fine


def test_stats_and_console_need_a_running_machine(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.create(machine(state_dir))
    with pytest.raises(InvalidTransition, match="not running"):
        backend.stats("vm")
    backend.start("vm")
    time.sleep(0.05)
    stats = backend.stats("vm")
    assert stats.memory_bytes == 64 << 20
    assert stats.cpu_time_ns > 0  # 1% of 50 ms is 0.5 ms
    assert backend.stats("vm").cpu_time_ns >= stats.cpu_time_ns
    assert backend.capabilities().console is True
    endpoint = backend.console("vm")
    assert endpoint.kind == "unix"
    with connect_unix(endpoint.path, timeout=10) as first, connect_unix(endpoint.path, timeout=10) as second:
        first.sendall(b"typed\n")
        for client in (first, second):  # the echo reaches every attached client
            received = b""
            while not received.endswith(b"typed\n"):
                received += client.recv(100)
    backend.stop("vm", 1)
    assert not Path(endpoint.path).exists()
    with pytest.raises(InvalidTransition, match="not running"):
        backend.console("vm")


def test_a_missing_disk_fails_the_start_like_qemu(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    vm = machine(state_dir)
    backend.create(vm)
    Path(vm.disks[0].path).unlink()
    with pytest.raises(BackendError, match="could not open disk image"):
        backend.start("vm")
    status = backend.status("vm")
    assert (status.state, status.exit_reason) == (MachineState.STOPPED, "StartError")
    assert not Path(vm.serial_log).exists()


def test_create_refuses_what_the_capabilities_exclude(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    vm = machine(state_dir)
    too_many = attrs.evolve(vm, disks=vm.disks * 11)  # 22 virtio disks, the limit is 21
    with pytest.raises(BackendError, match="exceed the virtio limit of 21"):
        backend.create(too_many)
    assert backend.list() == ()


def test_a_closed_backend_refuses_calls(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.list()


# --------------------------------------------------------------------------- faults


def test_create_fault_from_options_creates_nothing(state_dir: Path) -> None:
    backend = open_fake(state_dir, fail_create="bad-*")
    with pytest.raises(BackendError, match="injected fault: cannot create machine 'bad-1'"):
        backend.create(machine(state_dir, "bad-1"))
    backend.create(machine(state_dir, "good"))
    assert [info.name for info in backend.list()] == ["good"]
    other = open_fake(state_dir)  # options belong to one backend object
    assert other.create(machine(state_dir, "bad-1")).state is MachineState.CREATED


def test_stored_faults_reach_other_processes(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.create(machine(state_dir))
    backend.set_faults(Faults(fail_start=("vm",)))
    out = run_child(state_dir, """
        try:
            backend.start("vm")
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    assert out.strip() == "BackendError fake: injected fault: machine 'vm' failed to start"
    status = backend.status("vm")
    assert (status.state, status.exit_reason, status.exit_code) == (MachineState.STOPPED, "StartError", 1)
    backend.clear_faults()
    assert backend.faults() == Faults()
    assert backend.start("vm").state is MachineState.RUNNING


def test_options_and_stored_faults_both_apply(state_dir: Path) -> None:
    backend = open_fake(state_dir, fail_create="a", latency="0.01")
    backend.set_faults(Faults(fail_create=("b",), latency=0.02, op_latency={"start": 0.5}))
    faults = backend.faults()
    assert faults.fail_create == ("a", "b")
    assert faults.delay("status") == pytest.approx(0.03)
    assert faults.delay("start") == pytest.approx(0.53)


def test_stop_that_hangs_is_forced_after_the_timeout(state_dir: Path) -> None:
    backend = open_fake(state_dir, hang_stop="*")
    vm = machine(state_dir)
    backend.create(vm)
    backend.start("vm")
    began = time.monotonic()
    status = backend.stop("vm", 1.0)
    assert time.monotonic() - began >= 1.0
    assert (status.state, status.exit_reason, status.exit_code) == (MachineState.STOPPED, "Killed", 137)
    assert "forced off after 1s" in status.message
    began = time.monotonic()
    assert backend.stop("vm", 1.0) == status  # stopped is fine, and immediate
    assert time.monotonic() - began < 1.0


def test_graceful_stop_is_immediate(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.create(machine(state_dir))
    backend.start("vm")
    began = time.monotonic()
    status = backend.stop("vm", 30)
    assert time.monotonic() - began < 1
    assert (status.state, status.exit_reason, status.exit_code) == (MachineState.STOPPED, "Stopped", 0)


def test_crash_and_power_off(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    vm = machine(state_dir)
    backend.create(vm)
    with pytest.raises(InvalidTransition):
        backend.crash("vm")
    backend.start("vm")
    crashed = backend.crash("vm", exit_code=139, message="kernel panic")
    assert (crashed.state, crashed.exit_reason, crashed.exit_code) == (MachineState.STOPPED, "Crashed", 139)
    assert crashed.finished_at >= crashed.started_at
    assert log_texts(vm.serial_log)[-1] == "[fake] vm: kernel panic"
    backend.start("vm")
    off = backend.power_off("vm")
    assert (off.state, off.exit_reason, off.exit_code) == (MachineState.STOPPED, "Completed", 0)


@pytest.mark.parametrize("operation", ["status", "list"])
def test_latency_applies_to_every_call(state_dir: Path, operation: str) -> None:
    backend = open_fake(state_dir, latency="0.2")
    backend.create(machine(state_dir))
    began = time.monotonic()
    backend.status("vm") if operation == "status" else backend.list()
    assert time.monotonic() - began >= 0.2


def test_latency_per_operation(state_dir: Path) -> None:
    backend = open_fake(state_dir, **{"latency.start": "1"})
    backend.create(machine(state_dir))
    began = time.monotonic()
    backend.status("vm")
    assert time.monotonic() - began < 1
    backend.start("vm")
    assert time.monotonic() - began >= 1


@pytest.mark.parametrize(("options", "path"), [
    ({"latency": "soon"}, "options.latency"),
    ({"latency.start": "-1"}, "options.latency.start"),
    ({"latency.reboot": "1"}, "options.latency.reboot"),
    ({"fail_creat": "*"}, "options.fail_creat"),
])
def test_bad_options_are_spec_errors(state_dir: Path, options: dict[str, str], path: str) -> None:
    with pytest.raises(SpecError) as caught:
        FakeBackend(BackendConfig(state_dir=str(state_dir), options=options))
    assert caught.value.path == path


# --------------------------------------------------------------------------- foreign machines


def test_foreign_machine_is_listed_as_not_owned(state_dir: Path) -> None:
    backend = open_fake(state_dir)
    backend.create(machine(state_dir))
    foreign = backend.add_foreign("someone-elses-vm", labels={"app": "db"})
    assert not foreign.owned
    listed = {info.name: info for info in backend.list()}
    assert listed["someone-elses-vm"].owned is False
    assert listed["someone-elses-vm"].labels == {"app": "db"}
    assert listed["someone-elses-vm"].state is MachineState.RUNNING
    assert listed["vm"].owned is True
    with pytest.raises(ConflictError):
        backend.add_foreign("vm")


# --------------------------------------------------------------------------- through vmpod


def test_fake_backend_fixture_loads_the_entry_point(fake_backend: Backend, state_dir: Path) -> None:
    assert isinstance(fake_backend, FakeBackend)
    assert isinstance(fake_backend, Backend)
    assert fake_backend.directory == state_dir / "backends" / "fake"


def test_registered_as_the_lowest_priority_backend() -> None:
    spec = get_plugin_manager().backend_spec("fake")
    assert spec.factory is FakeBackend
    assert spec.priority < 0
