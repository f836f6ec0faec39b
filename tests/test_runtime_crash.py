"""Crash safety: a child process drives the runtime and is SIGKILLed at random points.

The child is forked from the test process (vmpod already imported, so a kill
point costs milliseconds, not an interpreter start-up) and runs a program of
pod operations against the fake backend, reporting on a pipe when each one
starts and when it is acknowledged.  It dies either at a named fault point
(``VMPOD_FAULT_POINT``'s mechanism, :mod:`vmpod.runtime.faults`: inside each
step of run, start, stop and delete) or by a SIGKILL from the parent after a
random delay while the fake backend sleeps in every call.

After each kill the parent reopens the runtime (reconcile) and checks:

* :func:`vmpod.runtime.check.check_consistency` finds nothing (no open
  operation, no orphan machine, no unaccounted file, states agree);
* every acknowledged operation's effect is there (pods run are running,
  deleted pods are gone...), and the interrupted pod is either before or
  after its operation;
* the foreign machine and another store's marked machine are untouched;

then finishes the interrupted operation and checks again.  The sweep test
fails unless every fault point kills the child at least once; the number of
kills per point is printed at the end (``pytest -s``).
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vmpod_fake import FakeBackend

from tests.support.runtime_pods import make_pod
from vmpod.backend import BackendConfig, MachineState
from vmpod.errors import VmpodError
from vmpod.machine import MARKER_LABEL
from vmpod.model import VMPod
from vmpod.plugins import get_plugin_manager
from vmpod.runtime import ContainerState, Runtime, faults
from vmpod.runtime.builder import STORE_LABEL
from vmpod.runtime.check import check_consistency

PODS = 3
Op = tuple[str, int]

KILLS: dict[str, int] = {}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """State directories live on tmpfs when there is one: a kill does not depend on the disk, speed does."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    directory = Path(tempfile.mkdtemp(prefix="vmpod-crash-", dir=base))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
    total = sum(KILLS.values())
    print(f"\ncrash test: {total} SIGKILLs survived; by point: "
          + ", ".join(f"{name}={count}" for name, count in sorted(KILLS.items())))


def _pods(image: Path) -> list[VMPod]:
    return [make_pod(image, i, volumes=(i == 1)) for i in range(PODS)]


def _new_state(scratch: Path) -> Path:
    state = Path(tempfile.mkdtemp(dir=scratch))
    fake = FakeBackend(BackendConfig(str(state)))
    fake.add_foreign("someone-elses-vm")
    fake.add_foreign("other-store-vm", labels={MARKER_LABEL: "true", STORE_LABEL: "another-store"})
    fake.close()
    return state


def _apply(runtime: Runtime, pods: list[VMPod], op: Op) -> None:
    kind, index = op
    pod = pods[index]
    if kind == "run":
        runtime.run_pod(pod)
        return
    record = runtime.find(pod.uid)
    if record is None:
        return
    if kind == "delete":
        runtime.delete_pod(record, timeout=1)
    elif kind == "stop" and record.container is not None:
        runtime.stop_container(pod.uid, timeout=0)
    elif kind == "start" and record.container is not None:
        runtime.start_container(pod.uid)


def _child(state: Path, pods: list[VMPod], program: list[Op], *, fault: str | None, latency: float,
           report: int) -> None:
    """Runs in the forked child: never returns."""
    code = 0
    try:
        faults.configure(fault)
        options = {"latency": str(latency)} if latency else {}
        runtime = Runtime.open(state, backend="fake", backend_options=options,
                               plugin_manager=get_plugin_manager())
        for number, op in enumerate(program):
            os.write(report, f"start {number}\n".encode())
            try:
                _apply(runtime, pods, op)
            except VmpodError:
                os.write(report, f"error {number}\n".encode())
                continue
            os.write(report, f"ack {number}\n".encode())
        runtime.close()
    except BaseException:  # pragma: no cover - reported through the exit code
        code = 3
    finally:
        os._exit(code)


def _run_child(state: Path, pods: list[VMPod], program: list[Op], *, fault: str | None = None,
               kill_after: float | None = None, latency: float = 0.0) -> tuple[set[int], int | None, bool]:
    """Fork the child; returns (acknowledged op numbers, interrupted op number, killed?)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        _child(state, pods, program, fault=fault, latency=latency, report=write)
    os.close(write)
    started = time.monotonic()
    output = b""
    while True:
        timeout = None if kill_after is None else max(0.0, kill_after - (time.monotonic() - started))
        ready, _, _ = select.select([read], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            kill_after = None
            continue
        chunk = os.read(read, 4096)
        if not chunk:
            break
        output += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WEXITSTATUS(status) == 0, f"child failed: status {status}\n{output.decode()}"
    acked: set[int] = set()
    last_started = None
    for line in output.decode().splitlines():
        word, number = line.split()
        if word == "start":
            last_started = int(number)
        elif word in ("ack", "error"):
            if word == "ack":
                acked.add(int(number))
            if last_started == int(number):
                last_started = None
    # A kill sent just after the child finished normally is fine: it then counts as not killed.
    return acked, (last_started if killed else None), killed


def _observe(runtime: Runtime, pod: VMPod) -> str:
    record = runtime.find(pod.uid)
    if record is None:
        return "absent"
    if record.container is None:
        return "sandbox"
    return record.container.state.name


def _model(program: list[Op], acked: set[int], interrupted: int | None) -> tuple[dict[int, str], dict[int, str]]:
    """Expected state of every pod after the acknowledged ops, and (for the interrupted pod) its state before."""
    state = dict.fromkeys(range(PODS), "absent")
    before: dict[int, str] = {}
    for number, (kind, index) in enumerate(program):
        if number == interrupted:
            before[index] = state[index]
        if number not in acked:
            continue
        current = state[index]
        if kind == "run" and current == "absent":
            state[index] = "RUNNING"
        elif kind == "delete":
            state[index] = "absent"
        elif kind == "stop" and current == "RUNNING":
            state[index] = "EXITED"
        elif kind == "start" and current in ("EXITED", "CREATED"):
            state[index] = "RUNNING"
    return state, before


def _allowed(kind: str, before: str) -> set[str]:
    if kind == "run":
        return {"absent", "sandbox", "CREATED", "RUNNING"} if before == "absent" else {before}
    if kind == "delete":
        return {before, "absent"}
    if kind == "stop":
        return {before, "EXITED"} if before == "RUNNING" else {before}
    return {before, "RUNNING"} if before in ("EXITED", "CREATED") else {before}


def _finished(kind: str, before: str, now: str) -> str:
    if kind == "run":
        return "RUNNING" if before == "absent" else before
    if kind == "delete":
        return "absent"
    if kind == "stop":
        return "EXITED" if now == "RUNNING" else now
    return "RUNNING" if now in ("EXITED", "CREATED") else now


def _check_foreign(runtime: Runtime) -> None:
    machines = {m.name: m for m in runtime.backend("fake").list()}
    assert machines["someone-elses-vm"].state is MachineState.RUNNING
    assert machines["other-store-vm"].state is MachineState.RUNNING


def _verify(state: Path, pods: list[VMPod], program: list[Op], acked: set[int], interrupted: int | None) -> None:
    expected, before = _model(program, acked, interrupted)
    with Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager()) as runtime:
        assert check_consistency(runtime) == []
        _check_foreign(runtime)
        for index, pod in enumerate(pods):
            seen = _observe(runtime, pod)
            if interrupted is not None and program[interrupted][1] == index:
                kind = program[interrupted][0]
                assert seen in _allowed(kind, before[index]), (program, interrupted, seen, before[index])
            else:
                assert seen == expected[index], (program, acked, interrupted, index, seen)
        if interrupted is None:
            return
        kind, index = program[interrupted]
        now = _observe(runtime, pods[index])
        _apply(runtime, pods, program[interrupted])  # finish the interrupted operation
        assert _observe(runtime, pods[index]) == _finished(kind, before[index], now)
        assert check_consistency(runtime) == []
        _check_foreign(runtime)


def _count(label: str) -> None:
    KILLS[label] = KILLS.get(label, 0) + 1


# A fixed program that reaches every fault point: create, start, stop, start again, delete.
SWEEP: list[Op] = [("run", 0), ("run", 1), ("stop", 0), ("start", 0), ("stop", 1), ("delete", 1), ("delete", 0)]


@pytest.mark.parametrize("point", faults.POINTS)
def test_every_fault_point_every_occurrence(point: str, image: Path, scratch: Path) -> None:
    """Kill at each named point, at each time the sweep program reaches it."""
    pods = _pods(image)
    occurrence = 1
    while True:
        state = _new_state(scratch)
        acked, interrupted, killed = _run_child(state, pods, SWEEP, fault=f"{point}@{occurrence}")
        _verify(state, pods, SWEEP, acked, interrupted)
        if not killed:
            assert occurrence > 1, f"the sweep program never reaches fault point {point}"
            break
        _count(point)
        occurrence += 1


ops = st.tuples(st.sampled_from(["run", "run", "delete", "stop", "start"]), st.integers(0, PODS - 1))
# Programs start by running some pods, so that every later operation has something to act on.
programs = st.builds(lambda first, rest: [("run", i) for i in sorted(first)] + rest,
                     st.sets(st.integers(0, PODS - 1), min_size=1), st.lists(ops, max_size=8))


_TARGETED: dict[str, list[str]] = {"create": [], "start": ["stop", "start"], "stop": ["stop"], "delete": ["delete"]}


@settings(max_examples=250, deadline=None)
@given(program=programs, seed=st.integers(0, 2**32), occurrence=st.integers(1, 3))
def test_random_programs_killed_at_fault_points(program: list[Op], seed: int, occurrence: int, image: Path,
                                                 scratch: Path) -> None:
    """A random program, then the operations that reach a fault point chosen uniformly; killed at that point."""
    rng = random.Random(seed)
    point = rng.choice(faults.POINTS)
    target = rng.choice(sorted({index for kind, index in program if kind == "run"}))
    program = program + [(kind, target) for kind in _TARGETED[point.split(".")[0]]]
    pods = _pods(image)
    state = _new_state(scratch)
    acked, interrupted, killed = _run_child(state, pods, program, fault=f"{point}@{occurrence}")
    if killed:
        _count(point)
    _verify(state, pods, program, acked, interrupted)
    shutil.rmtree(state, ignore_errors=True)


@settings(max_examples=150, deadline=None)
@given(program=programs, delay=st.floats(0.0, 0.15), seed=st.integers(0, 2**32))
def test_random_programs_killed_at_random_times(program: list[Op], delay: float, seed: int, image: Path,
                                               scratch: Path) -> None:
    """SIGKILL after a random delay while every backend call sleeps 2 ms: kills land anywhere, not only at points."""
    pods = _pods(image)
    state = _new_state(scratch)
    jitter = random.Random(seed).uniform(0, 0.002)
    acked, interrupted, killed = _run_child(state, pods, program, kill_after=delay + jitter, latency=0.002)
    if killed:
        _count("random-time")
    _verify(state, pods, program, acked, interrupted)
    shutil.rmtree(state, ignore_errors=True)


def test_cli_fault_point_env(image: Path, scratch: Path, tmp_path: Path) -> None:
    """The documented knob works on the real command: VMPOD_FAULT_POINT kills ``vmpod run`` mid-way."""
    state = _new_state(scratch)
    manifest = tmp_path / "pod.yaml"
    pod = _pods(image)[1]
    manifest.write_text(f"""apiVersion: v1
kind: Pod
metadata:
  name: {pod.name}
  annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}
spec:
  containers:
  - name: vm
    image: {image}
""")
    env = {**os.environ, "VMPOD_STATE_DIR": str(state), "VMPOD_BACKEND": "fake",
           "VMPOD_FAULT_POINT": "create.seed"}
    result = subprocess.run(["vmpod", "run", str(manifest)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == -signal.SIGKILL
    _count("create.seed (cli)")
    env.pop("VMPOD_FAULT_POINT")
    result = subprocess.run(["vmpod", "get", "-o", "json", pod.name], env=env, capture_output=True, text=True,
                            check=True)
    assert '"phase": "Pending"' in result.stdout  # the unfinished create was undone; the sandbox stays
    result = subprocess.run(["vmpod", "run", str(manifest)], env=env, capture_output=True, text=True, check=True)
    assert f"pod/{pod.name} created" in result.stdout
    with Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager()) as runtime:
        record = runtime.get(pod.name)
        assert record.container is not None
        assert record.container.state is ContainerState.RUNNING
        assert check_consistency(runtime) == []
