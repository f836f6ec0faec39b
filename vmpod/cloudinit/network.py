"""The network a VM pod's guest is given, and the two seed formats for it.

:class:`NetworkDescription` is the typed, hypervisor-neutral description a
seed's network configuration is generated from: the guest's interfaces (name,
MAC, MTU), their addresses (with prefix length and gateway), routes, and DNS.
The runtime builds it from a CNI result with :func:`from_cni_result`; the
kubelet's DNS settings, when it gives any, replace the CNI ones
(``attrs.evolve(description, dns=...)``), as in Virtlet.

"No network description" is ``None``: the seed then carries no network
configuration and the guest falls back to its own default (DHCP on the first
NIC for cloud-init).

Two pure renderers turn a description into a document:

* :func:`nocloud_network_config`: cloud-init's network config version 1
  (NoCloud ``network-config``);
* :func:`configdrive_network_data`: OpenStack's ``network_data.json``
  (ConfigDrive ``openstack/latest/network_data.json``).

How routes are placed (both formats): a route goes to the first address of
the same IP version whose subnet contains its gateway (any IPv6 address for a
link-local IPv6 gateway); a route without a
gateway uses the gateway of the first address of its version that has one; a
route whose gateway is on no subnet of the guest is left out (the guest could
not reach it).  Each route appears once, in CNI order.  NoCloud puts the first
default route of each IP version into the subnet's ``gateway`` key (which
every cloud-init renderer applies with ``ip``/netplan); ConfigDrive keeps it
in ``routes`` as OpenStack does.  Further default routes of the same version
are dropped: a guest has one default route per version.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import attrs

from vmpod.errors import ErrorCollector, SpecError, join_path

__all__ = [
    "CNI_VERSIONS",
    "DNS",
    "IPAddress",
    "IPConfig",
    "IPNetwork",
    "Interface",
    "NetworkDescription",
    "Route",
    "configdrive_network_data",
    "from_cni_result",
    "nocloud_network_config",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: CNI result versions :func:`from_cni_result` reads (the ``interfaces``/``ips`` layout).
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# Linux interface names: at most 15 bytes, no '/', ':' or whitespace.
_IFNAME_RE = re.compile(r"[^/:\s]{1,15}")
_MAX_MTU = 65535
_MIN_MTU = 68


def _lower(value: str) -> str:
    return value.lower()


def _check_mac(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _MAC_RE.fullmatch(value):
        raise ValueError(f"{attribute.name} must be a lower-case MAC address like 52:54:00:12:34:56, not {value!r}")


def _check_ifname(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{attribute.name} must be a Linux interface name (1-15 characters, no '/', ':' "
                         f"or spaces), not {value!r}")


def _check_mtu(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not _MIN_MTU <= value <= _MAX_MTU:
        raise ValueError(f"{attribute.name} must be from {_MIN_MTU} to {_MAX_MTU}, not {value!r}")


@attrs.frozen
class Interface:
    """A network interface of the guest.

    :param name: the interface name from CNI (``eth0``); NoCloud asks the guest to use it.
    :param mac: the MAC address the VM's NIC gets, lower case; the guest's interface is matched by it.
    :param mtu: the MTU, or None for the guest's default.
    """

    name: str = attrs.field(validator=_check_ifname)
    mac: str = attrs.field(converter=_lower, validator=_check_mac)
    mtu: int | None = attrs.field(default=None, validator=_check_mtu)


@attrs.frozen
class IPConfig:
    """An address of the guest on one of its interfaces.

    :param interface: index of the interface in :attr:`NetworkDescription.interfaces`.
    :param address: the address itself.
    :param prefix_len: the prefix length of its subnet (24 for a /24).
    :param gateway: the subnet's gateway, if it has one.
    """

    interface: int
    address: IPAddress
    prefix_len: int
    gateway: IPAddress | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.prefix_len <= self.address.max_prefixlen:
            raise ValueError(f"prefix length {self.prefix_len} is out of range for {self.address}")
        if self.gateway is not None and self.gateway.version != self.address.version:
            raise ValueError(f"gateway {self.gateway} is not an IPv{self.address.version} address")
        if self.interface < 0:
            raise ValueError(f"interface index must not be negative, not {self.interface}")

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.address.version

    @property
    def network(self) -> IPNetwork:
        """The subnet the address is on."""
        return ipaddress.ip_network(f"{self.address}/{self.prefix_len}", strict=False)

    @property
    def netmask(self) -> IPAddress:
        """The subnet mask (``255.255.255.0`` for a /24)."""
        return self.network.netmask


@attrs.frozen
class Route:
    """A route of the guest: ``dst`` via ``gateway`` (None: the gateway of the subnet it goes with)."""

    dst: IPNetwork
    gateway: IPAddress | None = None

    def __attrs_post_init__(self) -> None:
        if self.gateway is not None and self.gateway.version != self.dst.version:
            raise ValueError(f"gateway {self.gateway} is not an IPv{self.dst.version} address")

    @property
    def is_default(self) -> bool:
        """True for ``0.0.0.0/0`` and ``::/0``."""
        return self.dst.prefixlen == 0


@attrs.frozen
class DNS:
    """The guest's resolver settings (CNI ``dns``, or the kubelet's ``dns_config`` which replaces it)."""

    nameservers: tuple[IPAddress, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.nameservers or self.search or self.options)


@attrs.frozen
class NetworkDescription:
    """Everything the seed says about the guest's network."""

    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()

    def __attrs_post_init__(self) -> None:
        for ip in self.ips:
            if ip.interface >= len(self.interfaces):
                raise ValueError(f"address {ip.address} refers to interface {ip.interface}, "
                                 f"but there are {len(self.interfaces)} interfaces")
        names = [i.name for i in self.interfaces]
        if len(set(names)) != len(names):
            raise ValueError(f"interface names must be unique: {names}")
        macs = [i.mac for i in self.interfaces]
        if len(set(macs)) != len(macs):
            raise ValueError(f"interface MACs must be unique: {macs}")

    def ips_of(self, index: int) -> tuple[IPConfig, ...]:
        """The addresses on interface ``index``."""
        return tuple(ip for ip in self.ips if ip.interface == index)


# --------------------------------------------------------------------------- CNI results


def from_cni_result(result: object, path: str = "cniResult") -> NetworkDescription:
    """Read a CNI ``ADD`` result (spec 0.3.0 to 1.1.0) into a :class:`NetworkDescription`.

    Only the container-side interfaces become guest interfaces: those with a
    ``sandbox``, or all of them when none has one.  Addresses are re-indexed
    to those interfaces; an address without ``interface`` belongs to the only
    guest interface.  The CNI ``domain`` is used as the search list when
    ``search`` is empty.

    :param result: the parsed JSON result.
    :param path: how errors name the input (``cniResult.ips[0].address``).
    :raises SpecError: for anything malformed, every problem at once.
    """
    errors = ErrorCollector()
    if not isinstance(result, Mapping):
        raise SpecError(path, "a CNI result must be a JSON object", value=result,
                        accepted="a CNI result object with cniVersion, interfaces, ips, routes, dns")
    version = result.get("cniVersion")
    if version not in CNI_VERSIONS:
        raise SpecError(join_path(path, "cniVersion"), "unsupported CNI result version",
                        value=version, accepted=", ".join(CNI_VERSIONS))
    raw_interfaces = _list(result, "interfaces", path, errors)
    parsed: list[tuple[int, str, str | None, int | None, bool]] = []
    for index, raw in enumerate(raw_interfaces):
        where = f"{join_path(path, 'interfaces')}[{index}]"
        if not isinstance(raw, Mapping):
            errors.add(SpecError(where, "an interface must be an object", value=raw))
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
            errors.add(SpecError(join_path(where, "name"), "invalid interface name", value=name,
                                 accepted="1 to 15 characters, no '/', ':' or spaces"))
            continue
        mac = raw.get("mac")
        if mac is not None and (not isinstance(mac, str) or not _MAC_RE.fullmatch(mac.lower())):
            errors.add(SpecError(join_path(where, "mac"), "invalid MAC address", value=mac,
                                 accepted="six hex pairs separated by ':'"))
            continue
        mtu = raw.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                or not _MIN_MTU <= mtu <= _MAX_MTU):
            errors.add(SpecError(join_path(where, "mtu"), "invalid MTU", value=mtu,
                                 accepted=f"an integer from {_MIN_MTU} to {_MAX_MTU}"))
            continue
        sandbox = raw.get("sandbox")
        parsed.append((index, name, mac.lower() if isinstance(mac, str) else None, mtu,
                       isinstance(sandbox, str) and sandbox != ""))
    any_sandbox = any(entry[4] for entry in parsed)
    guest = [entry for entry in parsed if entry[4] or not any_sandbox]
    new_index = {entry[0]: position for position, entry in enumerate(guest)}
    interfaces: list[Interface] = []
    for cni_index, name, mac, mtu, _ in guest:
        if mac is None:
            errors.add(SpecError(f"{join_path(path, 'interfaces')}[{cni_index}].mac",
                                 "a guest interface needs a MAC address (the VM's NIC gets it, and the "
                                 "guest matches its configuration by it)", accepted="a MAC address"))
            continue
        interfaces.append(Interface(name=name, mac=mac, mtu=mtu))

    ips: list[IPConfig] = []
    for index, raw in enumerate(_list(result, "ips", path, errors)):
        where = f"{join_path(path, 'ips')}[{index}]"
        with errors.catch():
            ips.append(_cni_ip(raw, where, new_index, len(raw_interfaces)))
    routes: list[Route] = []
    for index, raw in enumerate(_list(result, "routes", path, errors)):
        where = f"{join_path(path, 'routes')}[{index}]"
        with errors.catch():
            routes.append(_cni_route(raw, where))
    dns = DNS()
    if result.get("dns") is not None:
        with errors.catch():
            dns = _cni_dns(result["dns"], join_path(path, "dns"))
    errors.raise_if_any()
    if len({i.mac for i in interfaces}) != len(interfaces):
        raise SpecError(join_path(path, "interfaces"), "two guest interfaces have the same MAC address",
                        value=[i.mac for i in interfaces])
    if len({i.name for i in interfaces}) != len(interfaces):
        raise SpecError(join_path(path, "interfaces"), "two guest interfaces have the same name",
                        value=[i.name for i in interfaces])
    return NetworkDescription(interfaces=tuple(interfaces), ips=tuple(ips), routes=tuple(routes), dns=dns)


def _list(result: Mapping[str, Any], key: str, path: str, errors: ErrorCollector) -> list[Any]:
    value = result.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(SpecError(join_path(path, key), "must be a list", value=value))
        return []
    return value


def _address(value: object, where: str) -> IPAddress:
    if not isinstance(value, str):
        raise SpecError(where, "not an IP address", value=value, accepted="an IPv4 or IPv6 address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise SpecError(where, "not an IP address", value=value, accepted="an IPv4 or IPv6 address") from None


def _cni_ip(raw: object, where: str, new_index: Mapping[int, int], cni_count: int) -> IPConfig:
    if not isinstance(raw, Mapping):
        raise SpecError(where, "an IP configuration must be an object", value=raw)
    text = raw.get("address")
    accepted = "ADDRESS/PREFIX, e.g. 10.1.2.3/24"
    if not isinstance(text, str) or "/" not in text:
        raise SpecError(join_path(where, "address"), "not an address with prefix", value=text, accepted=accepted)
    try:
        interface_address = ipaddress.ip_interface(text)
    except ValueError:
        raise SpecError(join_path(where, "address"), "not an address with prefix", value=text,
                        accepted=accepted) from None
    address = interface_address.ip
    declared = raw.get("version")
    if declared is not None and declared != str(address.version):
        raise SpecError(join_path(where, "version"), f"does not match the address {address}", value=declared,
                        accepted=f'"{address.version}"')
    gateway = None
    if raw.get("gateway") is not None:
        gateway = _address(raw["gateway"], join_path(where, "gateway"))
        if gateway.version != address.version:
            raise SpecError(join_path(where, "gateway"), f"not an IPv{address.version} address", value=str(gateway))
    cni_interface = raw.get("interface")
    if cni_interface is None:
        if len(new_index) != 1:
            raise SpecError(join_path(where, "interface"), "missing, and there is not exactly one guest interface",
                            accepted="the index of an interface in the result")
        index = next(iter(new_index.values()))
    else:
        if isinstance(cni_interface, bool) or not isinstance(cni_interface, int) \
                or not 0 <= cni_interface < cni_count:
            raise SpecError(join_path(where, "interface"), "not the index of an interface in the result",
                            value=cni_interface, accepted=f"an integer from 0 to {cni_count - 1}")
        if cni_interface not in new_index:
            raise SpecError(join_path(where, "interface"),
                            "refers to a host-side interface (one without a sandbox) or an invalid one",
                            value=cni_interface, accepted="the index of a container-side interface")
        index = new_index[cni_interface]
    return IPConfig(interface=index, address=address, prefix_len=interface_address.network.prefixlen,
                    gateway=gateway)


def _cni_route(raw: object, where: str) -> Route:
    if not isinstance(raw, Mapping):
        raise SpecError(where, "a route must be an object", value=raw)
    text = raw.get("dst")
    try:
        if not isinstance(text, str):
            raise ValueError
        dst = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SpecError(join_path(where, "dst"), "not a network", value=text,
                        accepted="NETWORK/PREFIX, e.g. 0.0.0.0/0") from None
    gateway = None
    if raw.get("gw") is not None:
        gateway = _address(raw["gw"], join_path(where, "gw"))
        if gateway.version != dst.version:
            raise SpecError(join_path(where, "gw"), f"not an IPv{dst.version} address", value=str(gateway))
    return Route(dst=dst, gateway=gateway)


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(join_path(where, key), "must be a list of strings", value=value)
    return tuple(value)


def _cni_dns(raw: object, where: str) -> DNS:
    if not isinstance(raw, Mapping):
        raise SpecError(where, "must be an object", value=raw, accepted="{nameservers, domain, search, options}")
    nameservers = tuple(_address(server, f"{join_path(where, 'nameservers')}[{i}]")
                        for i, server in enumerate(_strings(raw, "nameservers", where)))
    search = _strings(raw, "search", where)
    domain = raw.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise SpecError(join_path(where, "domain"), "must be a string", value=domain)
    if not search and domain:
        search = (domain,)
    return DNS(nameservers=nameservers, search=search, options=_strings(raw, "options", where))


# --------------------------------------------------------------------------- route placement


@attrs.frozen
class _Placed:
    """The routes of one address: its default gateway (if it holds the default route) and the others."""

    gateway: IPAddress | None
    routes: tuple[Route, ...]


def _place_routes(network: NetworkDescription) -> list[_Placed]:
    """Give every route to the address whose subnet reaches its gateway (see the module docstring)."""
    defaults: dict[int, int] = {}  # IP version -> index of the address holding the default route
    gateways: list[IPAddress | None] = [None] * len(network.ips)
    others: list[list[Route]] = [[] for _ in network.ips]
    seen: set[tuple[IPNetwork, IPAddress]] = set()
    for route in network.routes:
        owner: int | None = None
        via = route.gateway
        for index, ip in enumerate(network.ips):
            if ip.version != route.dst.version:
                continue
            if via is None and ip.gateway is not None:
                owner, via = index, ip.gateway
                break
            if via is not None and (via in ip.network or (via.version == 6 and via.is_link_local)):
                owner = index  # an IPv6 router is often known by its link-local address
                break
        if owner is None or via is None or (route.dst, via) in seen:
            continue
        seen.add((route.dst, via))
        if route.is_default:
            if route.dst.version in defaults:
                continue
            defaults[route.dst.version] = owner
            gateways[owner] = via
        else:
            others[owner].append(Route(dst=route.dst, gateway=via))
    return [_Placed(gateway=gateways[i], routes=tuple(others[i])) for i in range(len(network.ips))]


# --------------------------------------------------------------------------- NoCloud (v1)


def _v1_route(route: Route) -> dict[str, Any]:
    if route.dst.version == 4:
        return {"network": str(route.dst.network_address), "netmask": str(route.dst.netmask),
                "gateway": str(route.gateway)}
    return {"network": str(route.dst.network_address), "prefix": route.dst.prefixlen,
            "gateway": str(route.gateway)}


def _v1_subnet(ip: IPConfig, placed: _Placed) -> dict[str, Any]:
    subnet: dict[str, Any]
    if ip.version == 4:
        subnet = {"type": "static", "address": str(ip.address), "netmask": str(ip.netmask)}
    else:
        subnet = {"type": "static6", "address": f"{ip.address}/{ip.prefix_len}"}
    if placed.gateway is not None:
        subnet["gateway"] = str(placed.gateway)
    if placed.routes:
        subnet["routes"] = [_v1_route(route) for route in placed.routes]
    return subnet


def nocloud_network_config(network: NetworkDescription) -> dict[str, Any]:
    """cloud-init network config version 1 for ``network`` (NoCloud ``network-config``).

    One ``physical`` entry per interface (name, ``mac_address``, ``mtu``) with
    a ``static``/``static6`` subnet per address, or ``dhcp`` when the
    interface has none; then one ``nameserver`` entry when there is DNS.
    """
    placed = _place_routes(network)
    config: list[dict[str, Any]] = []
    for index, interface in enumerate(network.interfaces):
        entry: dict[str, Any] = {"type": "physical", "name": interface.name, "mac_address": interface.mac}
        if interface.mtu is not None:
            entry["mtu"] = interface.mtu
        subnets = [_v1_subnet(ip, placed[i]) for i, ip in enumerate(network.ips) if ip.interface == index]
        entry["subnets"] = subnets or [{"type": "dhcp"}]
        config.append(entry)
    if network.dns.nameservers or network.dns.search:
        nameserver: dict[str, Any] = {"type": "nameserver"}
        if network.dns.nameservers:
            nameserver["address"] = [str(server) for server in network.dns.nameservers]
        if network.dns.search:
            nameserver["search"] = list(network.dns.search)
        config.append(nameserver)
    return {"version": 1, "config": config}


# --------------------------------------------------------------------------- ConfigDrive (OpenStack)


def _openstack_route(route: Route) -> dict[str, Any]:
    return {"network": str(route.dst.network_address), "netmask": str(route.dst.netmask),
            "gateway": str(route.gateway)}


def configdrive_network_data(network: NetworkDescription) -> dict[str, Any]:
    """OpenStack ``network_data.json`` for ``network`` (ConfigDrive).

    ``links`` has one ``phy`` link per interface (``id`` = the interface
    name, ``ethernet_mac_address``, ``mtu``); ``networks`` one ``ipv4``/``ipv6``
    network per address (``ip_address``, ``netmask``, ``routes`` with the
    default route), or ``ipv4_dhcp`` for an interface without addresses;
    ``services`` one ``dns`` entry per nameserver, the first also carrying the
    search list (cloud-init reads it; other readers ignore it).
    """
    placed = _place_routes(network)
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for index, interface in enumerate(network.interfaces):
        link: dict[str, Any] = {"id": interface.name, "type": "phy", "ethernet_mac_address": interface.mac}
        if interface.mtu is not None:
            link["mtu"] = interface.mtu
        links.append(link)
        own = [(i, ip) for i, ip in enumerate(network.ips) if ip.interface == index]
        for i, ip in own:
            routes = list(placed[i].routes)
            if placed[i].gateway is not None:
                default = ipaddress.ip_network("0.0.0.0/0" if ip.version == 4 else "::/0")
                routes.insert(0, Route(dst=default, gateway=placed[i].gateway))
            entry: dict[str, Any] = {
                "id": f"network{i}",
                "network_id": f"network{i}",
                "type": f"ipv{ip.version}",
                "link": interface.name,
                "ip_address": str(ip.address),
                "netmask": str(ip.netmask),
                "routes": [_openstack_route(route) for route in routes],
            }
            networks.append(entry)
        if not own:
            networks.append({"id": f"dhcp-{interface.name}", "network_id": f"dhcp-{interface.name}",
                             "type": "ipv4_dhcp", "link": interface.name})
    services: list[dict[str, Any]] = [{"type": "dns", "address": str(server)}
                                      for server in network.dns.nameservers]
    if network.dns.search:
        if services:
            services[0]["search"] = list(network.dns.search)
        else:
            services.append({"type": "dns", "search": list(network.dns.search)})
    return {"links": links, "networks": networks, "services": services}

