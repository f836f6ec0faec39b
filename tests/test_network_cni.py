"""CNI without a VM: configuration loading, the plugin protocol, ADD/CHECK/DEL against the real bridge,
host-local and tuning plugins in real network namespaces, and the tap/bridge plumbing of a pod namespace.

Each test makes its own network (:mod:`tests.support.cni`: a fresh host bridge and /24, host-local's
reservations under ``tmp_path``) and removes every namespace and bridge it made.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cni import PLUGIN_DIRS, CNINetwork, plugins_installed
from vmpod.errors import SpecError
from vmpod.network import (
    CNIPluginError,
    NetworkError,
    NetworkOptions,
    PodNetwork,
    PodNetworkMode,
    attach,
    cni,
    detach,
    load_network_config,
    netns,
    podnet,
)
from vmpod.network.plugins import Invocation, find_plugin


def test_the_plugins_are_installed() -> None:
    """scripts/setup.sh installs them (containernetworking-plugins); every test here needs them and root."""
    assert os.geteuid() == 0
    assert plugins_installed(), f"bridge, host-local and tuning are not in {PLUGIN_DIRS}"


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"vmpod-test-{uuid.uuid4().hex[:12]}"
    yield name
    netns.delete(name)


def links(name: str) -> dict[str, dict[str, Any]]:
    out = netns.ip(["-j", "addr", "show"], netns=name)
    return {link["ifname"]: link for link in json.loads(out)}


def ipv4(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a["family"] == "inet"]


# ---- options and configuration files -------------------------------------------------------------


def test_options_come_from_arguments_then_environment_then_defaults() -> None:
    assert NetworkOptions.resolve(environ={}) == NetworkOptions()
    assert NetworkOptions().mode is PodNetworkMode.USER
    assert NetworkOptions().bin_dirs == ("/opt/cni/bin", "/usr/lib/cni")
    env = {"VMPOD_NETWORK": "cni", "VMPOD_CNI_CONF_DIR": "/x/net.d", "VMPOD_CNI_BIN_DIR": "/a:/b"}
    assert NetworkOptions.resolve(environ=env) == NetworkOptions(PodNetworkMode.CNI, "/x/net.d", ("/a", "/b"))
    assert NetworkOptions.resolve("user", "/c", ["/d"], environ=env) == NetworkOptions(PodNetworkMode.USER, "/c",
                                                                                        ("/d",))
    with pytest.raises(SpecError, match=r"--network: unknown network mode: 'bridge' \(accepted: user, cni\)"):
        NetworkOptions.resolve("bridge", environ={})
    with pytest.raises(SpecError, match=r"\$VMPOD_NETWORK: unknown network mode: 'calico'"):
        NetworkOptions.resolve(environ={"VMPOD_NETWORK": "calico"})


def test_the_first_valid_file_in_name_order_wins(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a configuration")
    (tmp_path / "30-last.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "last", "plugins": [{"type": "bridge"}]}))
    (tmp_path / "20-single.conf").write_text(json.dumps(
        {"cniVersion": "0.4.0", "name": "single", "type": "ptp", "ipam": {"type": "host-local"}}))
    (tmp_path / "10-broken.conflist").write_text("{not json")
    config = load_network_config(tmp_path)
    assert config.name == "single"
    assert config.cni_version == "0.4.0"
    assert config.plugins == ({"type": "ptp", "ipam": {"type": "host-local"}},)
    assert config.source == str(tmp_path / "20-single.conf")
    stdin = json.loads(config.plugin_config(0, {"cniVersion": "0.4.0"}))
    assert stdin == {"type": "ptp", "ipam": {"type": "host-local"}, "name": "single", "cniVersion": "0.4.0",
                     "prevResult": {"cniVersion": "0.4.0"}}
    assert type(config).from_json(config.to_json()) == config


@pytest.mark.parametrize(("files", "message"), [
    ({}, "no CNI network configuration in {d} (files ending in .conf, .conflist, .json; set the directory "
         "with --cni-conf-dir or $VMPOD_CNI_CONF_DIR)"),
    ({"a.conflist": "[]"}, "no valid CNI network configuration in {d}: CNI network configuration {d}/a.conflist: "
                           "must be a JSON object"),
    ({"a.conflist": '{"cniVersion": "1.0.0", "name": "n", "plugins": []}'},
     "no valid CNI network configuration in {d}: CNI network configuration {d}/a.conflist: plugins must be a "
     "non-empty list of plugin configurations"),
    ({"a.conf": '{"cniVersion": "1.0.0", "name": "bad name!", "type": "bridge"}'},
     "no valid CNI network configuration in {d}: CNI network configuration {d}/a.conf: name must be a network "
     "name (letters, digits, '_', '.', '-'), not 'bad name!'"),
    ({"a.json": '{"cniVersion": "1.0.0", "name": "n", "type": "../bin/sh"}'},
     "no valid CNI network configuration in {d}: CNI network configuration {d}/a.json: plugins[0].type must name "
     "a plugin executable, not '../bin/sh'"),
])
def test_unusable_configuration_directories_are_named(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(NetworkError) as raised:
        load_network_config(tmp_path)
    assert str(raised.value) == message.format(d=tmp_path)


def test_a_missing_directory_or_plugin_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match=f"CNI configuration directory {tmp_path}/nope cannot be read: "
                                           "No such file or directory"):
        load_network_config(tmp_path / "nope")
    with pytest.raises(NetworkError, match=f"CNI plugin 'bridge' not found in {tmp_path}:/nonexistent "
                                           r"\(set the plugin directories with --cni-bin-dir"):
        find_plugin("bridge", [str(tmp_path), "/nonexistent"])
    assert find_plugin("bridge", ["/nonexistent", *PLUGIN_DIRS]).name == "bridge"


def test_an_unsupported_config_version_is_refused_before_any_plugin_runs(network: CNINetwork,
                                                                          namespace: str) -> None:
    config = load_network_config(network.conf_dir)
    old = type(config)(name=config.name, cni_version="0.2.0", plugins=config.plugins, source="x.conflist")
    path = netns.create(namespace)
    with pytest.raises(NetworkError, match=r"x.conflist: cniVersion '0.2.0' is not supported \(accepted: 0.3.0, "
                                           r"0.3.1, 0.4.0, 1.0.0\)"):
        cni.add(old, Invocation(namespace, path, "eth0", PLUGIN_DIRS))
    assert network.reservations() == []


# ---- namespaces --------------------------------------------------------------------------------


def test_namespaces_are_created_and_deleted_idempotently(namespace: str) -> None:
    path = netns.create(namespace)
    assert path == f"/run/netns/{namespace}"
    assert netns.exists(namespace)
    assert netns.create(namespace) == path  # again: the same one
    assert links(namespace)["lo"]["operstate"] == "UNKNOWN"  # up (loopback has no carrier state)
    netns.delete(namespace)
    netns.delete(namespace)
    assert not os.path.lexists(path)
    Path(path).touch()  # a stale name without its mount (left by a reboot) is replaced
    netns.create(namespace)
    assert netns.exists(namespace)


# ---- ADD, CHECK, DEL against the real plugins ---------------------------------------------------


def test_add_check_del_with_prev_result_chaining(network: CNINetwork, namespace: str) -> None:
    config = load_network_config(network.conf_dir)
    invocation = Invocation(namespace, netns.create(namespace), "eth0", PLUGIN_DIRS)
    result = cni.add(config, invocation)
    assert result["cniVersion"] == "1.0.0"
    sandbox = [i for i in result["interfaces"] if i.get("sandbox")]
    assert [i["name"] for i in sandbox] == ["eth0"]
    assert sandbox[0]["sandbox"] == f"/run/netns/{namespace}"
    [ip] = result["ips"]
    address = ipaddress.ip_interface(ip["address"])
    assert address.network == network.subnet
    assert ip["gateway"] == str(network.gateway)
    assert result["dns"] == {"nameservers": [str(network.gateway)], "search": ["pods.vmpod.test"]}
    assert network.reservations() == [str(address.ip)]
    eth0 = links(namespace)["eth0"]
    assert ipv4(eth0) == [str(address)]
    assert eth0["mtu"] == network.mtu  # the second plugin (tuning) ran on the first one's result
    cni.check(config, invocation, result)
    cni.delete(config, invocation, result)
    assert network.reservations() == []
    assert "eth0" not in links(namespace)
    cni.delete(config, invocation, result)  # DEL again: nothing left to do, still fine
    netns.delete(namespace)
    cni.delete(config, invocation, None)  # the namespace is gone and no result is known: fine too


def test_a_plugin_error_carries_the_plugins_message(tmp_path: Path, namespace: str) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "broken", "plugins": [
        {"type": "bridge", "bridge": "vmptbroken", "ipam": {"type": "host-local",
                                                           "ranges": [[{"subnet": "not-a-subnet"}]],
                                                           "dataDir": str(tmp_path / "ipam")}}]}))
    invocation = Invocation(namespace, netns.create(namespace), "eth0", PLUGIN_DIRS)
    try:
        with pytest.raises(CNIPluginError) as raised:
            cni.add(load_network_config(conf), invocation)
        assert raised.value.plugin == "bridge"
        assert raised.value.command == "ADD"
        assert str(raised.value).startswith("CNI plugin bridge ADD failed (code ")
        assert "not-a-subnet" in str(raised.value)
    finally:
        subprocess.run(["ip", "link", "del", "vmptbroken"], capture_output=True, check=False)


def test_attach_plumbs_a_tap_and_detach_releases_everything(network: CNINetwork) -> None:
    config = load_network_config(network.conf_dir)
    name = f"vmpod-test-{uuid.uuid4().hex[:12]}"
    record = PodNetwork(pod_uid="pod", netns=name, container_id=name, config=config.to_json())
    try:
        attached = attach(record, PLUGIN_DIRS)
        result, link = attached.result_data(), attached.pod_link()
        assert result is not None
        assert link is not None
        [sandbox] = [i for i in result["interfaces"] if i.get("sandbox")]
        assert link.vm_mac == sandbox["mac"]  # the VM gets eth0's original MAC ...
        assert link.ifname_mac != link.vm_mac  # ... and eth0 a new, locally administered one
        assert int(link.ifname_mac.split(":")[0], 16) & 0x03 == 0x02
        assert link.mtu == network.mtu
        assert attached.pod_ip == result["ips"][0]["address"].split("/")[0]
        inside = links(name)
        assert ipv4(inside["eth0"]) == []  # the address moved to the VM
        assert inside["eth0"]["address"] == link.ifname_mac
        assert inside["eth0"]["master"] == podnet.BRIDGE
        assert inside[podnet.TAP]["master"] == podnet.BRIDGE
        assert ipv4(inside[podnet.BRIDGE]) == []
        assert inside[podnet.TAP]["mtu"] == network.mtu
        routes = json.loads(netns.ip(["-4", "-j", "route"], netns=name))
        assert routes == []  # the guest routes, not the namespace
        with pytest.raises(NetworkError, match="already joined"):
            podnet.plumb(name)
        assert network.reservations() == [attached.pod_ip]
        detach(attached, PLUGIN_DIRS)
        assert network.reservations() == []
        assert not netns.exists(name)
        detach(attached, PLUGIN_DIRS)  # idempotent
    finally:
        netns.delete(name)


def test_detach_after_an_interrupted_attach(network: CNINetwork) -> None:
    """Only the intent was recorded (no result, no link): DEL still releases the address."""
    config = load_network_config(network.conf_dir)
    name = f"vmpod-test-{uuid.uuid4().hex[:12]}"
    record = PodNetwork(pod_uid="pod", netns=name, container_id=name, config=config.to_json())
    try:
        netns.create(name)
        cni.add(config, record.invocation(PLUGIN_DIRS))
        assert len(network.reservations()) == 1
        detach(record, PLUGIN_DIRS)
        assert network.reservations() == []
        assert not netns.exists(name)
    finally:
        netns.delete(name)


def test_a_0_3_1_network_runs_without_prev_result_on_del(tmp_path: Path, network: CNINetwork,
                                                          namespace: str) -> None:
    """Some node networks still ship 0.3.1 configurations (flannel's default): ADD and DEL work, CHECK is refused."""
    config = load_network_config(network.conf_dir)
    old = type(config)(name=config.name, cni_version="0.3.1", plugins=config.plugins, source=config.source)
    invocation = Invocation(namespace, netns.create(namespace), "eth0", PLUGIN_DIRS)
    result = cni.add(old, invocation)
    assert result["cniVersion"] == "0.3.1"
    assert len(network.reservations()) == 1
    with pytest.raises(NetworkError, match=r"CHECK needs cniVersion 0\.4\.0 or later, not 0\.3\.1"):
        cni.check(old, invocation, result)
    cni.delete(old, invocation, result)  # prevResult is not passed to a 0.3.1 DEL
    assert network.reservations() == []
