"""``vmpod run`` and ``vmpod delete`` SIGKILLed mid-operation with the real qemu backend and the tiny guest.

Each interruption uses ``VMPOD_FAULT_POINT`` (:mod:`vmpod.runtime.faults`) on the installed console
script: the command kills itself at the named step, as an OOM kill or a power cut of vmpod would.
After each one the next command (``vmpod get``) reconciles, and the test checks:

* the store agrees with the backend and the files (:func:`vmpod.runtime.check.check_consistency`);
* the acknowledged pod (``keeper``, run before any fault) is still Running on the very same qemu
  process and its guest keeps logging;
* the interrupted pod has nothing orphaned: no qemu process or supervisor, no socket or machine
  directory, no overlay or seed ISO;
* finishing the interrupted operation (``vmpod run`` again, ``vmpod delete``) works, and in the end
  nothing at all is left.

Two guests boot in total (``keeper`` and the pod interrupted after its start).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import get_pods, leftovers, store_problems, tiny_manifest, vmpod, wait_for_log
from tests.support.qemu import destroy_all, pids_mentioning
from vmpod.guests.tiny import build_tiny_guest
from vmpod.procutil import read_json

pytestmark = pytest.mark.guest


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose qemu machines are destroyed after the test, even when it fails."""
    directory = tmp_path / "state"
    yield directory
    destroy_all(directory)


def killed(result: Any, point: str) -> None:
    assert result.returncode == -9, (f"expected a SIGKILL at {point}, got exit {result.returncode}\n"
                                     f"{result.stdout}\n{result.stderr}")


def qemu_of(state: Path, uid: str) -> tuple[int, int]:
    """(qemu pid, supervisor pid) of a pod's machine, from the backend's run.json."""
    machines = state / "backends" / "qemu" / "machines"
    [directory] = [d for d in machines.iterdir() if uid[:13] in d.name]
    run = read_json(directory / "run.json")
    assert run is not None
    return int(run["pid"]), int(run["supervisor_pid"])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_sigkill_of_run_and_delete_with_the_qemu_backend(tmp_path: Path, state: Path) -> None:
    image = build_tiny_guest()
    keeper_yaml = tiny_manifest(tmp_path / "keeper.yaml", image, ["keeper"])
    victim_yaml = tiny_manifest(tmp_path / "victim.yaml", image, ["victim"])

    # The acknowledged pod: everything below must leave it alone.
    result = vmpod(state, "run", "--wait", str(keeper_yaml))
    assert result.returncode == 0, result.stderr
    keeper_uid = get_pods(state)["keeper"]["metadata"]["uid"]
    keeper_processes = qemu_of(state, keeper_uid)

    def check(expect_victim: set[str]) -> dict[str, dict[str, Any]]:
        """Reconcile (vmpod get), then check the store, keeper and the victim's leftovers."""
        pods = get_pods(state)
        assert store_problems(state) == []
        assert set(pods) == {"keeper"} | expect_victim, pods.keys()
        assert pods["keeper"]["status"]["phase"] == "Running", pods["keeper"]["status"]
        assert qemu_of(state, keeper_uid) == keeper_processes, "keeper's qemu or supervisor was replaced"
        assert all(alive(pid) for pid in keeper_processes), "keeper's qemu or supervisor died"
        return pods

    def victim_leftovers(pods: dict[str, dict[str, Any]], uid: str | None) -> list[str]:
        uids = {uid} if uid else set()
        if "victim" in pods:
            uids.add(pods["victim"]["metadata"]["uid"])
        return leftovers(state, pod_uids=uids) if uids else []

    # 1. Killed before the machine exists (overlay and seed ISO written) and right after the backend
    #    created it (outcome not recorded): reconcile undoes the create, the sandbox may stay.
    victim_uid: str | None = None
    for point in ("create.seed", "create.machine.after"):
        killed(vmpod(state, "run", str(victim_yaml), env={"VMPOD_FAULT_POINT": point}), point)
        machines = state / "backends" / "qemu" / "machines"
        others = [d.name for d in machines.iterdir() if keeper_uid[:13] not in d.name]
        if point == "create.machine.after":
            assert len(others) == 1, f"the fault point fired before the machine was created: {others}"
        else:
            assert others == [], others
        pods = get_pods(state)
        pods = check({"victim"} if "victim" in pods else set())
        if "victim" in pods:
            victim_uid = pods["victim"]["metadata"]["uid"]
            assert pods["victim"]["status"]["phase"] == "Pending", pods["victim"]["status"]
            # The sandbox alone: no machine, no qemu, no overlay or ISO.
            found = victim_leftovers(pods, victim_uid)
            assert not [f for f in found if "root.qcow2" in f or "seed.iso" in f or f.startswith("process")
                        or f.startswith("backends/")], found

    # 2. Finishing the interrupted run works; then killed again right after qemu started (outcome not
    #    recorded): the next command adopts the running machine as it is.
    vmpod(state, "delete", "victim", "--now", "--ignore-not-found")
    assert victim_leftovers(get_pods(state), victim_uid) == []
    killed(vmpod(state, "run", str(victim_yaml), env={"VMPOD_FAULT_POINT": "start.after"}), "start.after")
    pods = check({"victim"})
    victim_uid = pods["victim"]["metadata"]["uid"]
    assert pods["victim"]["status"]["phase"] == "Running", pods["victim"]["status"]
    victim_processes = qemu_of(state, victim_uid)
    assert all(alive(pid) for pid in victim_processes)
    log = wait_for_log(state, "victim", "VMPOD-READY")
    assert "VMPOD-SEED instance-id=victim.default hostname=victim" in log
    result = vmpod(state, "run", "--wait", str(victim_yaml))  # run again: idempotent, the same machine
    assert result.returncode == 0, result.stderr
    assert qemu_of(state, victim_uid) == victim_processes

    # 3. Delete killed after the machine was stopped: the next command finishes it.
    killed(vmpod(state, "delete", "victim", "--now", env={"VMPOD_FAULT_POINT": "delete.stopped"}),
           "delete.stopped")
    pods = check(set())
    assert victim_leftovers(pods, victim_uid) == []
    assert not any(alive(pid) for pid in victim_processes)
    assert "VMPOD-SEED instance-id=keeper.default" in wait_for_log(state, "keeper", "VMPOD-READY")

    # 4. Delete of the acknowledged pod killed after the machine was destroyed, files not yet removed.
    killed(vmpod(state, "delete", "keeper", "--now", env={"VMPOD_FAULT_POINT": "delete.destroyed"}),
           "delete.destroyed")
    assert not any(alive(pid) for pid in keeper_processes)
    assert get_pods(state) == {}  # reconcile finished the delete the user asked for
    assert store_problems(state) == []
    result = vmpod(state, "delete", "keeper", "--ignore-not-found")
    assert result.returncode == 0, result.stderr
    assert leftovers(state) == []
    assert pids_mentioning(str(state)) == []
