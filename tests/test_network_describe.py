"""A CNI result as the guest's network: :func:`vmpod.network.podnet.describe`, then the seed's network files.

The results are shaped as the bridge plugin returns them (the host bridge, the host-side veth, the
container's ``eth0`` with its sandbox), in the 0.4.0 and 1.0.0 layouts.  The VM's NIC gets ``eth0``'s
original MAC and MTU; the guest gets a static address, its gateway, routes and DNS, never DHCP.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from tests.support.isoread import read_seed
from tests.support.runtime_pods import make_pod
from vmpod.cloudinit import configdrive_network_data, generate_seed, nocloud_network_config, write_seed
from vmpod.network import NetworkError
from vmpod.network.podnet import PodLink, describe, pod_ip

LINK = PodLink(ifname="eth0", tap="vmpod-tap0", bridge="vmpod-br0", vm_mac="0a:58:0a:f4:01:05",
               ifname_mac="02:11:22:33:44:55", mtu=1450)

RESULT_100: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "02:aa:bb:cc:dd:ee"},
                   {"name": "veth1234", "mac": "02:aa:bb:cc:dd:ef"},
                   {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/run/netns/vmpod-x"}],
    "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.1"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local", "svc.cluster.local"]},
}

NOCLOUD = {"version": 1, "config": [
    {"type": "physical", "name": "eth0", "mac_address": "0a:58:0a:f4:01:05", "mtu": 1450,
     "subnets": [{"type": "static", "address": "10.244.1.5", "netmask": "255.255.255.0", "gateway": "10.244.1.1",
                  "routes": [{"network": "10.96.0.0", "netmask": "255.240.0.0", "gateway": "10.244.1.1"}]}]},
    {"type": "nameserver", "address": ["10.96.0.10"], "search": ["default.svc.cluster.local", "svc.cluster.local"]},
]}


def result_040() -> dict[str, Any]:
    """The same attachment in the 0.4.0 layout (``version`` on each IP)."""
    result = copy.deepcopy(RESULT_100)
    result["cniVersion"] = "0.4.0"
    result["ips"][0]["version"] = "4"
    return result


@pytest.mark.parametrize("result", [RESULT_100, result_040()], ids=["1.0.0", "0.4.0"])
def test_a_bridge_result_becomes_a_static_nocloud_configuration(result: dict[str, Any]) -> None:
    network = describe(result, LINK)
    assert pod_ip(network) == "10.244.1.5"
    assert nocloud_network_config(network) == NOCLOUD


def test_the_vm_gets_eth0s_original_mac_and_mtu_even_when_the_result_omits_them() -> None:
    result = copy.deepcopy(RESULT_100)
    del result["interfaces"][2]["mac"]  # some plugins leave the MAC out
    network = describe(result, LINK)
    [interface] = network.interfaces
    assert (interface.name, interface.mac, interface.mtu) == ("eth0", LINK.vm_mac, LINK.mtu)
    result["interfaces"][2]["mtu"] = 9000  # an MTU in the result is kept
    assert describe(result, LINK).interfaces[0].mtu == 9000


def test_configdrive_network_data_from_the_same_result() -> None:
    data = configdrive_network_data(describe(RESULT_100, LINK))
    assert data["links"] == [{"id": "eth0", "type": "phy", "ethernet_mac_address": LINK.vm_mac, "mtu": 1450}]
    [net] = data["networks"]
    assert (net["type"], net["ip_address"], net["netmask"]) == ("ipv4", "10.244.1.5", "255.255.255.0")
    assert net["routes"][0] == {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.244.1.1"}
    assert {"type": "dns", "address": "10.96.0.10", "search": ["default.svc.cluster.local", "svc.cluster.local"]} \
        in data["services"]
    assert "dhcp" not in json.dumps(data)


def test_ipv6_and_ipv4_the_pod_ip_is_the_ipv4_one() -> None:
    result = copy.deepcopy(RESULT_100)
    result["ips"].insert(0, {"address": "fd00:10:244:1::5/64", "gateway": "fd00:10:244:1::1", "interface": 2})
    network = describe(result, LINK)
    assert pod_ip(network) == "10.244.1.5"
    subnets = nocloud_network_config(network)["config"][0]["subnets"]
    assert [s["type"] for s in subnets] == ["static6", "static"]


def test_an_unusable_result_is_a_network_error() -> None:
    result = copy.deepcopy(RESULT_100)
    result["ips"][0]["address"] = "10.244.1.5"
    with pytest.raises(NetworkError, match=r"the CNI result cannot be used: cniResult.ips\[0\].address: not an "
                                           r"address with prefix: '10.244.1.5'"):
        describe(result, LINK)


def test_the_seed_of_a_cni_pod_has_the_static_configuration(tmp_path: Any) -> None:
    pod = make_pod(tmp_path / "image.qcow2", 0)
    documents = generate_seed(pod, describe(RESULT_100, LINK))
    seed = tmp_path / "seed.iso"
    write_seed(documents, seed)
    files, _ = read_seed(seed)
    assert yaml.safe_load(files["network-config"]) == NOCLOUD
