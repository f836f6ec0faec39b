"""The ``cni`` network mode on the qemu backend with the tiny guest (no cloud-init: this is about the host side).

* ``vmpod run`` starts qemu inside the pod's network namespace (``/proc/<qemu>/ns/net`` is the
  namespace's), with a tap NIC on the namespace's ``vmpod-tap0`` carrying eth0's original MAC;
* ``vmpod delete`` SIGKILLed after the machine is destroyed, before CNI DEL: the next command
  reconciles, host-local's reservation is released, the namespace is gone, no qemu is left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import leftovers, store_problems, tiny_manifest, vmpod
from tests.support.cni import PLUGIN_DIRS, CNINetwork, state_namespaces
from tests.support.qemu import pids_mentioning
from vmpod.guests.tiny import build_tiny_guest
from vmpod.network import netns

pytestmark = pytest.mark.guest


def test_qemu_runs_in_the_pod_namespace_and_an_interrupted_delete_releases_it(tmp_path: Path,
                                                                               network: CNINetwork) -> None:
    state = tmp_path / "state"

    def cni(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        result = vmpod(state, "--backend", "qemu", "--network", "cni", "--cni-conf-dir", str(network.conf_dir),
                       "--cni-bin-dir", ":".join(PLUGIN_DIRS), *args, env=env)
        return result.returncode, result.stdout, result.stderr

    code, _, err = cni("run", "--wait", str(tiny_manifest(tmp_path / "pod.yaml", build_tiny_guest(), ["tiny-cni"])))
    assert code == 0, err
    try:
        pod = json.loads(cni("get", "tiny-cni", "-o", "json")[1])
        ip = pod["status"]["podIP"]
        assert network.reservations() == [ip]
        [name] = state_namespaces(state)
        machine = pod["vmpod"]["machine"]
        [qemu] = [pid for pid in pids_mentioning(f"guest={machine}")
                  if Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system")]
        assert os.stat(f"/proc/{qemu}/ns/net").st_ino == os.stat(netns.path(name)).st_ino
        assert os.stat(f"/proc/{qemu}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        tap = json.loads(netns.ip(["-j", "-d", "link", "show", "dev", "vmpod-tap0"], netns=name))[0]
        assert tap["master"] == "vmpod-br0"
        assert "LOWER_UP" in tap["flags"]  # qemu holds it open
        killed = vmpod(state, "--backend", "qemu", "delete", "tiny-cni", env={"VMPOD_FAULT_POINT": "delete.destroyed"})
        assert killed.returncode == -9, killed.stderr
        assert network.reservations() == [ip]  # DEL did not run yet
    finally:
        code, out, err = cni("get", "-o", "json")  # reconciles: finishes the delete
        if json.loads(out or "{}").get("items"):  # the test failed before the delete: clean up
            cni("delete", "tiny-cni")
    assert code == 0, err
    assert json.loads(out)["items"] == []
    assert network.reservations() == []
    assert state_namespaces(state) == []
    assert leftovers(state) == []
    assert store_problems(state) == []
