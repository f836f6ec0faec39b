"""The network model, CNI results, and the two network formats, checked with cloud-init's own renderer."""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cloudinit_cases import CNI_BRIDGE, CNI_TWO_NICS
from vmpod.cloudinit import (
    DNS,
    Interface,
    IPConfig,
    NetworkDescription,
    Route,
    configdrive_network_data,
    from_cni_result,
    nocloud_network_config,
)
from vmpod.errors import SpecError, SpecErrors

ip = ipaddress.ip_address
net = ipaddress.ip_network


# --------------------------------------------------------------------------- the model


def test_model_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="MAC"):
        Interface(name="eth0", mac="52:54:00:12:34")
    with pytest.raises(ValueError, match="interface name"):
        Interface(name="a/b", mac="52:54:00:12:34:56")
    with pytest.raises(ValueError, match="from 68"):
        Interface(name="eth0", mac="52:54:00:12:34:56", mtu=20)
    with pytest.raises(ValueError, match="prefix length"):
        IPConfig(interface=0, address=ip("10.0.0.1"), prefix_len=33)
    with pytest.raises(ValueError, match="not an IPv4"):
        IPConfig(interface=0, address=ip("10.0.0.1"), prefix_len=8, gateway=ip("fd00::1"))
    with pytest.raises(ValueError, match="not an IPv6"):
        Route(dst=net("fd00::/8"), gateway=ip("10.0.0.1"))
    eth0 = Interface(name="eth0", mac="52:54:00:12:34:56")
    with pytest.raises(ValueError, match="refers to interface 1"):
        NetworkDescription(interfaces=(eth0,), ips=(IPConfig(interface=1, address=ip("10.0.0.2"), prefix_len=8),))
    with pytest.raises(ValueError, match="names must be unique"):
        NetworkDescription(interfaces=(eth0, Interface(name="eth0", mac="52:54:00:12:34:57")))
    with pytest.raises(ValueError, match="MACs must be unique"):
        NetworkDescription(interfaces=(eth0, Interface(name="eth1", mac="52:54:00:12:34:56")))


def test_interface_mac_is_lower_case_and_ip_config_knows_its_subnet() -> None:
    assert Interface(name="eth0", mac="52:54:00:AB:CD:EF").mac == "52:54:00:ab:cd:ef"
    config = IPConfig(interface=0, address=ip("10.0.2.15"), prefix_len=24)
    assert config.network == net("10.0.2.0/24")
    assert str(config.netmask) == "255.255.255.0"
    assert config.version == 4
    assert Route(dst=net("0.0.0.0/0")).is_default
    assert not Route(dst=net("10.0.0.0/8")).is_default
    assert not DNS()
    assert DNS(search=("x",))


# --------------------------------------------------------------------------- CNI results


def test_cni_bridge_result_keeps_only_the_sandbox_interface() -> None:
    description = from_cni_result(CNI_BRIDGE)
    assert description == NetworkDescription(
        interfaces=(Interface(name="eth0", mac="0a:58:0a:f4:01:05"),),
        ips=(IPConfig(interface=0, address=ip("10.244.1.5"), prefix_len=24, gateway=ip("10.244.1.1")),),
        routes=(Route(dst=net("0.0.0.0/0")), Route(dst=net("10.96.0.0/12"), gateway=ip("10.244.1.1"))),
        dns=DNS(nameservers=(ip("10.96.0.10"),), search=("default.svc.cluster.local", "svc.cluster.local"),
                options=("ndots:5",)),
    )


def test_cni_1_0_result_without_sandboxes_and_with_domain() -> None:
    result = copy.deepcopy(CNI_TWO_NICS)
    for interface in result["interfaces"]:
        del interface["sandbox"]
    description = from_cni_result(result)
    assert [i.name for i in description.interfaces] == ["eth0", "net1"]
    assert [(c.interface, str(c.address), c.prefix_len) for c in description.ips] == [
        (0, "10.1.0.10", 16), (0, "fd00:10::a", 64), (1, "192.168.50.7", 24)]
    assert description.dns.search == ("example.internal",)
    assert description.dns.nameservers == (ip("10.1.0.2"), ip("fd00:10::2"))


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_every_supported_cni_version_reads_with_mtu(version: str) -> None:
    result = {"cniVersion": version,
              "interfaces": [{"name": "eth0", "mac": "52:54:00:12:34:56", "mtu": 1400, "sandbox": "/x"}],
              "ips": [{"address": "10.0.2.15/24", "gateway": "10.0.2.2"}]}
    description = from_cni_result(result)
    assert description.interfaces[0].mtu == 1400
    assert description.ips[0].interface == 0  # no "interface": the only guest interface


def test_ip_of_a_host_side_interface_is_an_error() -> None:
    result = copy.deepcopy(CNI_BRIDGE)
    result["ips"][0]["interface"] = 1
    with pytest.raises(SpecError) as info:
        from_cni_result(result)
    assert info.value.path == "cniResult.ips[0].interface"
    assert "host-side" in info.value.message


@pytest.mark.parametrize(("mutate", "path", "words"), [
    (lambda r: r.update(cniVersion="0.2.0"), "cniResult.cniVersion", "unsupported CNI result version"),
    (lambda r: r.pop("cniVersion"), "cniResult.cniVersion", "unsupported CNI result version"),
    (lambda r: r["interfaces"][2].pop("mac"), "cniResult.interfaces[2].mac", "needs a MAC"),
    (lambda r: r["interfaces"][2].update(mac="nope"), "cniResult.interfaces[2].mac", "invalid MAC"),
    (lambda r: r["interfaces"][2].update(name=""), "cniResult.interfaces[2].name", "invalid interface name"),
    (lambda r: r["interfaces"][2].update(mtu=True), "cniResult.interfaces[2].mtu", "invalid MTU"),
    (lambda r: r.update(interfaces={}), "cniResult.interfaces", "must be a list"),
    (lambda r: r["ips"][0].update(address="10.244.1.5"), "cniResult.ips[0].address", "not an address with prefix"),
    (lambda r: r["ips"][0].update(address="10.244.1.300/24"), "cniResult.ips[0].address",
     "not an address with prefix"),
    (lambda r: r["ips"][0].update(version="6"), "cniResult.ips[0].version", "does not match"),
    (lambda r: r["ips"][0].update(gateway="fd00::1"), "cniResult.ips[0].gateway", "not an IPv4 address"),
    (lambda r: r["ips"][0].update(interface=7), "cniResult.ips[0].interface", "not the index"),
    (lambda r: r["ips"][0].update(interface="2"), "cniResult.ips[0].interface", "not the index"),
    (lambda r: r["routes"].append({"dst": "nowhere"}), "cniResult.routes[2].dst", "not a network"),
    (lambda r: r["routes"].append({"dst": "::/0", "gw": "10.0.0.1"}), "cniResult.routes[2].gw", "not an IPv6"),
    (lambda r: r["routes"].append("0.0.0.0/0"), "cniResult.routes[2]", "must be an object"),
    (lambda r: r["dns"].update(nameservers="10.0.0.1"), "cniResult.dns.nameservers", "list of strings"),
    (lambda r: r["dns"].update(nameservers=["dns.example"]), "cniResult.dns.nameservers[0]", "not an IP address"),
    (lambda r: r.update(dns=[]), "cniResult.dns", "must be an object"),
])
def test_malformed_cni_results_name_the_bad_field(mutate: Any, path: str, words: str) -> None:
    result = copy.deepcopy(CNI_BRIDGE)
    mutate(result)
    with pytest.raises(SpecError) as info:
        from_cni_result(result)
    assert info.value.path == path
    assert words in info.value.message


def test_not_a_mapping_and_several_errors_at_once() -> None:
    with pytest.raises(SpecError, match="must be a JSON object"):
        from_cni_result(["not", "a", "result"])
    result = copy.deepcopy(CNI_BRIDGE)
    result["ips"][0]["address"] = "bad"
    result["routes"][1]["gw"] = "bad"
    with pytest.raises(SpecErrors) as info:
        from_cni_result(result, path="result.json")
    assert [e.path for e in info.value.errors] == ["result.json.ips[0].address", "result.json.routes[1].gw"]


def test_ip_without_interface_needs_a_single_guest_interface() -> None:
    result = copy.deepcopy(CNI_TWO_NICS)
    del result["ips"][0]["interface"]
    with pytest.raises(SpecError, match="not exactly one guest interface"):
        from_cni_result(result)


def test_duplicate_macs_in_a_result_are_an_error() -> None:
    result = copy.deepcopy(CNI_TWO_NICS)
    result["interfaces"][1]["mac"] = result["interfaces"][0]["mac"].upper()
    with pytest.raises(SpecError, match="same MAC"):
        from_cni_result(result)


# --------------------------------------------------------------------------- route placement and formats


def _network(*routes: Route, gateway: str | None = "10.0.2.2") -> NetworkDescription:
    return NetworkDescription(
        interfaces=(Interface(name="eth0", mac="52:54:00:12:34:56", mtu=1400),),
        ips=(IPConfig(interface=0, address=ip("10.0.2.15"), prefix_len=24,
                      gateway=ip(gateway) if gateway else None),),
        routes=routes,
    )


def test_nocloud_default_route_becomes_the_subnet_gateway() -> None:
    config = nocloud_network_config(_network(Route(dst=net("0.0.0.0/0")),
                                             Route(dst=net("192.168.0.0/16"), gateway=ip("10.0.2.3"))))
    assert config == {"version": 1, "config": [{
        "type": "physical", "name": "eth0", "mac_address": "52:54:00:12:34:56", "mtu": 1400,
        "subnets": [{"type": "static", "address": "10.0.2.15", "netmask": "255.255.255.0", "gateway": "10.0.2.2",
                     "routes": [{"network": "192.168.0.0", "netmask": "255.255.0.0", "gateway": "10.0.2.3"}]}],
    }]}


def test_unreachable_duplicate_and_second_default_routes_are_dropped() -> None:
    config = nocloud_network_config(_network(
        Route(dst=net("0.0.0.0/0"), gateway=ip("10.0.2.2")),
        Route(dst=net("0.0.0.0/0"), gateway=ip("10.0.2.9")),   # a second default route
        Route(dst=net("172.16.0.0/12"), gateway=ip("10.9.9.9")),  # gateway on no subnet
        Route(dst=net("172.16.0.0/12")),  # no gateway: the subnet's
        Route(dst=net("172.16.0.0/12"), gateway=ip("10.0.2.2")),  # the same again
    ))
    subnet = config["config"][0]["subnets"][0]
    assert subnet["gateway"] == "10.0.2.2"
    assert subnet["routes"] == [{"network": "172.16.0.0", "netmask": "255.240.0.0", "gateway": "10.0.2.2"}]


def test_routes_without_gateway_and_no_subnet_gateway_are_dropped_and_no_ips_means_dhcp() -> None:
    config = nocloud_network_config(_network(Route(dst=net("0.0.0.0/0")), gateway=None))
    assert "gateway" not in config["config"][0]["subnets"][0]
    assert "routes" not in config["config"][0]["subnets"][0]
    bare = NetworkDescription(interfaces=(Interface(name="eth0", mac="52:54:00:12:34:56"),))
    assert nocloud_network_config(bare)["config"] == [
        {"type": "physical", "name": "eth0", "mac_address": "52:54:00:12:34:56", "subnets": [{"type": "dhcp"}]}]
    assert configdrive_network_data(bare) == {
        "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}],
        "networks": [{"id": "dhcp-eth0", "network_id": "dhcp-eth0", "type": "ipv4_dhcp", "link": "eth0"}],
        "services": []}


def test_configdrive_keeps_the_default_route_in_routes() -> None:
    data = configdrive_network_data(_network(Route(dst=net("0.0.0.0/0"))))
    assert data == {
        "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56", "mtu": 1400}],
        "networks": [{"id": "network0", "network_id": "network0", "type": "ipv4", "link": "eth0",
                      "ip_address": "10.0.2.15", "netmask": "255.255.255.0",
                      "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}]}],
        "services": [],
    }


# --------------------------------------------------------------------------- cloud-init's own renderer


def _net_convert(tmp_path: Path, document: str, kind: str, output: str, macs: dict[str, str] | None = None) -> str:
    source = tmp_path / f"input.{kind}"
    source.write_text(document)
    out = tmp_path / f"out-{kind}-{output}"
    argv = ["cloud-init", "devel", "net-convert", "-p", str(source), "-k", kind, "-D", "debian", "-O", output,
            "-d", str(out)]
    for name, mac in (macs or {}).items():
        argv += ["-m", f"{name},{mac}"]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    return "\n".join(path.read_text() for path in sorted(out.rglob("*")) if path.is_file())


def test_cloud_init_renders_nocloud_v1_for_ifupdown_and_netplan(tmp_path: Path) -> None:
    description = from_cni_result(CNI_TWO_NICS)
    document = yaml.safe_dump(nocloud_network_config(description), sort_keys=False)
    eni = _net_convert(tmp_path, document, "yaml", "eni")
    assert "iface eth0 inet static\n    address 10.1.0.10/16\n    gateway 10.1.0.1\n" in eni
    assert "post-up route add -net 10.2.0.0/16 gw 10.1.0.1 || true" in eni
    assert "iface eth0 inet6 static\n    address fd00:10::a/64\n    gateway fd00:10::1" in eni
    assert "iface net1 inet static\n    address 192.168.50.7/24\n    post-up route add -net 172.16.0.0/12 gw " \
           "192.168.50.1 || true" in eni
    assert "dns-nameservers 10.1.0.2 fd00:10::2" in eni
    assert "dns-search example.internal" in eni
    assert 'ATTR{address}=="52:54:00:aa:00:02", NAME="net1"' in eni
    netplan = yaml.safe_load(_net_convert(tmp_path, document, "yaml", "netplan").split("\n", 5)[-1])
    eth0 = netplan["network"]["ethernets"]["eth0"]
    assert eth0["addresses"] == ["10.1.0.10/16", "fd00:10::a/64"]
    assert eth0["gateway4"] == "10.1.0.1"
    assert eth0["gateway6"] == "fd00:10::1"
    assert eth0["match"] == {"macaddress": "52:54:00:aa:00:01"}
    assert eth0["routes"] == [{"to": "10.2.0.0/16", "via": "10.1.0.1"}]


def test_cloud_init_renders_nocloud_mtu(tmp_path: Path) -> None:
    document = yaml.safe_dump(nocloud_network_config(_network(Route(dst=net("0.0.0.0/0")))), sort_keys=False)
    eni = _net_convert(tmp_path, document, "yaml", "eni")
    assert "iface eth0 inet static\n    address 10.0.2.15/24\n    gateway 10.0.2.2\n    mtu 1400" in eni


def test_cloud_init_renders_configdrive_network_data(tmp_path: Path) -> None:
    description = from_cni_result(CNI_TWO_NICS)
    document = json.dumps(configdrive_network_data(description))
    eni = _net_convert(tmp_path, document, "network_data.json", "eni",
                       macs={"ens3": "52:54:00:aa:00:01", "ens4": "52:54:00:aa:00:02"})
    assert "iface ens3 inet static\n    address 10.1.0.10/16\n    post-up route add default gw 10.1.0.1" in eni
    assert "post-up route add -net 10.2.0.0/16 gw 10.1.0.1 || true" in eni
    assert "iface ens3 inet6 static\n    address fd00:10::a/64\n    post-up route add -A inet6 default gw " \
           "fd00:10::1" in eni
    assert "iface ens4 inet static\n    address 192.168.50.7/24" in eni
    assert "dns-nameservers 10.1.0.2 fd00:10::2" in eni
    assert "dns-search example.internal" in eni
    mtu_doc = json.dumps(configdrive_network_data(_network(Route(dst=net("0.0.0.0/0")))))
    assert "mtu 1400" in _net_convert(tmp_path, mtu_doc, "network_data.json", "eni",
                                      macs={"ens3": "52:54:00:12:34:56"})


def test_ipv6_link_local_gateway_is_reachable_from_any_ipv6_address() -> None:
    description = NetworkDescription(
        interfaces=(Interface(name="eth0", mac="52:54:00:12:34:56"),),
        ips=(IPConfig(interface=0, address=ip("10.0.0.5"), prefix_len=24),
             IPConfig(interface=0, address=ip("2001:db8::5"), prefix_len=64)),
        routes=(Route(dst=net("::/0"), gateway=ip("fe80::1")),
                Route(dst=net("0.0.0.0/0"), gateway=ip("10.9.0.1"))),  # unreachable: dropped
    )
    subnets = nocloud_network_config(description)["config"][0]["subnets"]
    assert "gateway" not in subnets[0]
    assert subnets[1] == {"type": "static6", "address": "2001:db8::5/64", "gateway": "fe80::1"}
