"""The ``cni`` network mode through the runtime and the ``vmpod`` command, on the fake backend (no guest:
the network side is all real: namespaces, the bridge/host-local/tuning plugins, the tap and the seed).

* a pod gets a namespace, an address from host-local, a tap NIC with eth0's MAC, and a seed whose
  network-config is that static address (no DHCP); ``get -o wide``/``-o json`` and ``describe`` show it;
* delete, and remove-container, run CNI DEL and remove the namespace (the address is released);
* a missing or bad CNI configuration, and the libvirt backend, are refused with one clear line and
  nothing made;
* SIGKILLed (``VMPOD_FAULT_POINT``) at each step of create and delete: the next command reconciles,
  runs CNI DEL, releases the address and removes the namespace.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import store_problems, vmpod
from tests.support.cni import PLUGIN_DIRS, CNINetwork, state_namespaces
from tests.support.isoread import read_seed
from tests.support.runtime_pods import POD_YAML, make_image, make_pod
from vmpod.machine import NetworkMode
from vmpod.network import NetworkOptions, PodNetworkMode, netns
from vmpod.runtime import Runtime
from vmpod.runtime.check import check_consistency


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    yield directory
    for name in state_namespaces(directory):  # only after a failure
        netns.delete(name)


def options(network: CNINetwork) -> NetworkOptions:
    return NetworkOptions(mode=PodNetworkMode.CNI, conf_dir=str(network.conf_dir), bin_dirs=PLUGIN_DIRS)


def cni_vmpod(state: Path, network: CNINetwork, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return vmpod(state, "--backend", "fake", "--network", "cni", "--cni-conf-dir", str(network.conf_dir),
                 "--cni-bin-dir", ":".join(PLUGIN_DIRS), *args, env=env)


def manifest(path: Path, image: Path, index: int = 0) -> Path:
    path.write_text(POD_YAML.format(name=f"vm{index}", namespace="default", app="web", index=index, image=image,
                                    mounts="", volumes=""))
    return path


def test_a_pod_owns_its_cni_address(network: CNINetwork, image: Path, state: Path) -> None:
    pod = make_pod(image, 0)
    with Runtime.open(state, backend="fake", network=options(network)) as runtime:
        record = runtime.run_pod(pod)
        address = ipaddress.ip_address(record.pod_ip)
        assert address in network.subnet
        assert network.reservations() == [record.pod_ip]
        attachment = runtime.store.network(pod.uid)
        assert attachment is not None
        assert netns.exists(attachment.netns)
        link = attachment.pod_link()
        assert link is not None
        machine = runtime.machine(record)
        assert machine is not None
        [nic] = machine.nics
        assert nic.mode is NetworkMode.TAP
        assert (nic.tap, nic.netns, nic.mac, nic.mtu) == (link.tap, attachment.netns_path, link.vm_mac, network.mtu)
        assert nic.forwards == ()
        # The seed gives the guest the static address, gateway, DNS and the MAC/MTU of its NIC.
        files, _ = read_seed(Path(machine.seed_disk.path if machine.seed_disk else ""))
        config = yaml.safe_load(files["network-config"])
        assert config == {"version": 1, "config": [
            {"type": "physical", "name": "eth0", "mac_address": link.vm_mac, "mtu": network.mtu,
             "subnets": [{"type": "static", "address": record.pod_ip, "netmask": "255.255.255.0",
                          "gateway": str(network.gateway)}]},
            {"type": "nameserver", "address": [str(network.gateway)], "search": ["pods.vmpod.test"]}]}
        assert check_consistency(runtime) == []
        runtime.run_pod(pod)  # again: unchanged, no second address
        assert network.reservations() == [record.pod_ip]

        # remove_container tears the network down with the VM; creating it again attaches again.
        runtime.stop_container(pod.uid, timeout=0)
        runtime.remove_container(pod.uid)
        assert network.reservations() == []
        assert not netns.exists(attachment.netns)
        assert runtime.get("vm0").pod_ip == ""
        runtime.create_container(pod.uid)
        assert runtime.get("vm0").pod_ip in [str(a) for a in network.subnet.hosts()]
        assert len(network.reservations()) == 1

        runtime.delete_pod(runtime.get("vm0"), timeout=0)
        assert network.reservations() == []
        assert not netns.exists(attachment.netns)
        assert runtime.store.networks() == []
        assert check_consistency(runtime) == []


def test_the_command_shows_the_pod_ip(network: CNINetwork, image: Path, state: Path, tmp_path: Path) -> None:
    result = cni_vmpod(state, network, "run", "--wait", str(manifest(tmp_path / "pod.yaml", image)))
    assert result.returncode == 0, result.stderr
    [ip] = network.reservations()
    wide = vmpod(state, "get", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = (line.split() for line in wide.stdout.splitlines())
    assert row[header.index("IP")] == ip
    data: dict[str, Any] = json.loads(vmpod(state, "get", "vm0", "-o", "json").stdout)
    assert data["status"]["podIP"] == ip
    assert data["status"]["podIPs"] == [{"ip": ip}]
    assert f"IP:                   {ip}\n" in vmpod(state, "describe", "vm0").stdout
    # Without --network the command does not change existing pods (their mode is recorded with them).
    deleted = vmpod(state, "--backend", "fake", "--cni-bin-dir", ":".join(PLUGIN_DIRS), "delete", "vm0")
    assert deleted.returncode == 0, deleted.stderr
    assert network.reservations() == []
    assert state_namespaces(state) == []


def test_user_mode_pods_show_no_ip(image: Path, state: Path, tmp_path: Path) -> None:
    result = vmpod(state, "--backend", "fake", "run", str(manifest(tmp_path / "pod.yaml", image)),
                   env={"VMPOD_NETWORK": "user"})
    assert result.returncode == 0, result.stderr
    header, row = (line.split() for line in vmpod(state, "get", "-o", "wide").stdout.splitlines())
    assert row[header.index("IP")] == "<none>"
    assert "podIP" not in json.loads(vmpod(state, "get", "vm0", "-o", "json").stdout)["status"]
    assert vmpod(state, "--backend", "fake", "delete", "vm0").returncode == 0


def _refused(result: subprocess.CompletedProcess[str], message: str, state: Path) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == f"vmpod: error: {message}\n"
    assert json.loads(vmpod(state, "get", "-o", "json").stdout)["items"] == []
    assert state_namespaces(state) == []
    assert store_problems(state) == []


def test_bad_cni_setups_are_refused_and_leave_nothing(network: CNINetwork, image: Path, state: Path,
                                                      tmp_path: Path) -> None:
    pod = str(manifest(tmp_path / "pod.yaml", image))
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(vmpod(state, "--backend", "fake", "--network", "cni", "--cni-conf-dir", str(empty), "run", pod),
             f"no CNI network configuration in {empty} (files ending in .conf, .conflist, .json; set the "
             "directory with --cni-conf-dir or $VMPOD_CNI_CONF_DIR)", state)
    _refused(vmpod(state, "--backend", "fake", "--network", "cni", "--cni-conf-dir", str(network.conf_dir),
                   "--cni-bin-dir", str(tmp_path), "run", pod),
             f"CNI plugin 'bridge' not found in {tmp_path} (set the plugin directories with --cni-bin-dir or "
             "$VMPOD_CNI_BIN_DIR)", state)
    _refused(vmpod(state, "--backend", "fake", "run", pod, env={"VMPOD_NETWORK": "slirp"}),
             "$VMPOD_NETWORK: unknown network mode: 'slirp' (accepted: user, cni)", state)
    # A configuration the plugins reject: the failed ADD is undone (DEL), the pod is not kept.
    config = json.loads((network.conf_dir / "10-vmpod-test.conflist").read_text())
    config["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.0.0.0/33"}]]
    (network.conf_dir / "10-vmpod-test.conflist").write_text(json.dumps(config))
    result = cni_vmpod(state, network, "run", pod)
    assert result.returncode == 1
    assert result.stderr.startswith("vmpod: error: CNI plugin bridge ADD failed (code "), result.stderr
    assert "10.0.0.0/33" in result.stderr
    assert "Traceback" not in result.stderr
    _refused(result, result.stderr.removeprefix("vmpod: error: ").rstrip("\n"), state)
    assert network.reservations() == []


def test_libvirt_refuses_the_cni_mode(network: CNINetwork, image: Path, state: Path, tmp_path: Path) -> None:
    from vmpod_libvirt.testing import ensure_daemons  # noqa: PLC0415

    ensure_daemons()
    result = vmpod(state, "--backend", "libvirt", "--network", "cni", "--cni-conf-dir", str(network.conf_dir),
                   "run", str(manifest(tmp_path / "pod.yaml", image)))
    _refused(result, "network: the libvirt backend cannot run a VM in the pod's network namespace (its network "
                     "modes: user, tap): 'cni' (accepted: network mode user (--network user), or a backend with "
                     "cni in its network modes (qemu))", state)
    assert network.reservations() == []


CREATE_POINTS = ["create.network", "create.seed", "create.machine.before", "create.machine.after"]
DELETE_POINTS = ["delete.intent", "delete.stopped", "delete.destroyed", "delete.volumes", "delete.network",
                 "delete.files"]


@pytest.mark.parametrize("point", CREATE_POINTS)
def test_an_interrupted_create_releases_the_address(point: str, network: CNINetwork, image: Path, state: Path,
                                                    tmp_path: Path) -> None:
    pod = str(manifest(tmp_path / "pod.yaml", image))
    killed = cni_vmpod(state, network, "run", pod, env={"VMPOD_FAULT_POINT": point})
    assert killed.returncode == -9, killed.stderr
    assert len(network.reservations()) == 1
    assert len(state_namespaces(state)) == 1
    # The next command reconciles: the create is undone, CNI DEL released the address.
    listed = cni_vmpod(state, network, "get", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    pods = json.loads(listed.stdout)["items"]
    assert [p["metadata"]["name"] for p in pods] == ["vm0"]
    assert "containerStatuses" not in pods[0]["status"]
    assert network.reservations() == []
    assert state_namespaces(state) == []
    assert store_problems(state) == []
    # The retry attaches again and runs.
    result = cni_vmpod(state, network, "run", "--wait", pod)
    assert result.returncode == 0, result.stderr
    assert len(network.reservations()) == 1
    assert cni_vmpod(state, network, "delete", "vm0").returncode == 0
    assert network.reservations() == []


@pytest.mark.parametrize("point", DELETE_POINTS)
def test_an_interrupted_delete_is_finished_with_cni_del(point: str, network: CNINetwork, image: Path,
                                                         state: Path, tmp_path: Path) -> None:
    result = cni_vmpod(state, network, "run", "--wait", str(manifest(tmp_path / "pod.yaml", image)))
    assert result.returncode == 0, result.stderr
    assert len(network.reservations()) == 1
    killed = cni_vmpod(state, network, "delete", "vm0", env={"VMPOD_FAULT_POINT": point})
    assert killed.returncode == -9, killed.stderr
    # The next command (any) reconciles: the delete is finished, the address released, the namespace gone.
    listed = cni_vmpod(state, network, "get", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"] == [], listed.stderr
    assert network.reservations() == [], listed.stderr
    assert state_namespaces(state) == [], listed.stderr
    assert store_problems(state) == []


def test_a_version_1_store_is_upgraded_in_place(image: Path, state: Path) -> None:
    """Stores made before networking (schema 1: no ``networks``, no ``pods.pod_ip``) open and keep their pods."""
    import sqlite3  # noqa: PLC0415

    from vmpod.runtime.store import SCHEMA_VERSION, Store  # noqa: PLC0415

    with Runtime.open(state, backend="fake", network=NetworkOptions()) as runtime:
        runtime.run_pod(make_pod(image, 0))
    with sqlite3.connect(state / "vmpod.db") as db:  # take it back to what version 1 wrote
        db.execute("DROP TABLE networks")
        db.execute("ALTER TABLE pods DROP COLUMN pod_ip")
        db.execute("PRAGMA user_version = 1")
    store = Store.open(state / "vmpod.db")
    try:
        assert store._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 2
        [pod] = store.pods()
        assert (pod.name, pod.pod_ip) == ("vm0", "")
        assert store.networks() == []
    finally:
        store.close()
    with Runtime.open(state, backend="fake", network=NetworkOptions()) as runtime:
        assert check_consistency(runtime) == []
        runtime.delete_pod(runtime.get("vm0"), timeout=0)
