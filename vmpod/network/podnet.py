"""Inside the pod's network namespace: a tap for the VM, a bridge to ``eth0``, the pod IP moved to the VM.

After CNI ``ADD`` the namespace has ``eth0`` with the pod's address, routes
and MAC.  As Virtlet does, :func:`plumb` then

* takes the addresses off ``eth0`` (its routes go with them) and gives
  ``eth0`` a new random, locally administered MAC;
* makes a tap device (:data:`TAP`) for the VM's NIC and a bridge
  (:data:`BRIDGE`, no address) joining it with ``eth0``;

so the VM's NIC, which gets ``eth0``'s original MAC, owns the pod IP on the
CNI network: the guest configures the address, routes and DNS from the seed's
network configuration (:func:`describe`), not by DHCP.  :func:`unplumb` undoes
it before CNI ``DEL`` (plugins may look for ``eth0`` as they made it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

import attrs

from vmpod.cloudinit.network import NetworkDescription, from_cni_result
from vmpod.errors import SpecError
from vmpod.network import netns
from vmpod.network.errors import NetworkError

__all__ = ["BRIDGE", "TAP", "PodLink", "describe", "plumb", "pod_ip", "unplumb"]

#: The bridge inside the pod's namespace (names are per namespace, so fixed ones do).
BRIDGE = "vmpod-br0"
#: The VM's tap device inside the pod's namespace.
TAP = "vmpod-tap0"


@attrs.frozen
class PodLink:
    """What :func:`plumb` made.

    :param vm_mac: ``eth0``'s original MAC, now the VM NIC's.
    :param ifname_mac: the new MAC of ``eth0``.
    :param mtu: ``eth0``'s MTU, given to the tap, the bridge and the VM's NIC.
    """

    ifname: str
    tap: str
    bridge: str
    vm_mac: str
    ifname_mac: str
    mtu: int

    def to_json(self) -> str:
        """As JSON (the store keeps it for :func:`unplumb`)."""
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PodLink:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def _link(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        links = json.loads(netns.ip(["-j", "link", "show", "dev", name], netns=namespace) or "[]")
    except NetworkError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return links[0] if links else None


def _random_mac() -> str:
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in octets)


def plumb(namespace: str, ifname: str = "eth0") -> PodLink:
    """Join a new tap and ``ifname`` with a bridge and move ``ifname``'s addresses off it (see the module).

    :raises NetworkError: when ``ifname`` is missing or already plumbed, or ``ip`` fails.
    """
    link = _link(namespace, ifname)
    if link is None:
        raise NetworkError(f"network namespace {namespace}: the CNI plugins made no {ifname}")
    if link.get("master") == BRIDGE:
        raise NetworkError(f"network namespace {namespace}: {ifname} is already joined to {BRIDGE}")
    mac, mtu = str(link["address"]), int(link.get("mtu", 1500))
    new_mac = _random_mac()
    batch = "\n".join([
        f"addr flush dev {ifname}",
        f"link set dev {ifname} down",
        f"link set dev {ifname} address {new_mac}",
        f"link add name {BRIDGE} mtu {mtu} type bridge",
        f"tuntap add dev {TAP} mode tap",
        f"link set dev {TAP} mtu {mtu}",
        f"link set dev {ifname} master {BRIDGE}",
        f"link set dev {TAP} master {BRIDGE}",
        f"link set dev {ifname} up",
        f"link set dev {TAP} up",
        f"link set dev {BRIDGE} up",
    ]) + "\n"
    netns.ip(["-batch", "-"], netns=namespace, stdin=batch)
    return PodLink(ifname=ifname, tap=TAP, bridge=BRIDGE, vm_mac=mac, ifname_mac=new_mac, mtu=mtu)


def unplumb(namespace: str, link: PodLink) -> None:
    """Remove the tap and the bridge and give ``eth0`` its MAC back; a missing namespace or device is fine."""
    if not netns.exists(namespace):
        return
    batch = "\n".join([f"link del dev {link.tap}", f"link del dev {link.bridge}",
                       f"link set dev {link.ifname} address {link.vm_mac}"]) + "\n"
    with contextlib.suppress(NetworkError):  # -force ran every line; a device already gone is what we wanted
        netns.ip(["-force", "-batch", "-"], netns=namespace, stdin=batch)


def describe(result: Mapping[str, Any], link: PodLink) -> NetworkDescription:
    """The guest's network from a CNI result: the VM's NIC (``eth0``'s MAC and MTU), addresses, routes, DNS.

    :raises NetworkError: when the result cannot be read.
    """
    patched = dict(result)
    interfaces = [dict(i) if isinstance(i, Mapping) else i for i in result.get("interfaces") or []]
    for interface in interfaces:
        if isinstance(interface, dict) and interface.get("name") == link.ifname and interface.get("sandbox"):
            interface["mac"] = link.vm_mac
            interface.setdefault("mtu", link.mtu)
    if interfaces:
        patched["interfaces"] = interfaces
    try:
        return from_cni_result(patched)
    except SpecError as exc:
        raise NetworkError(f"the CNI result cannot be used: {exc}") from None


def pod_ip(description: NetworkDescription) -> str:
    """The pod IP: the first IPv4 address of the guest, else its first address, else ``""``."""
    ordered = sorted(description.ips, key=lambda ip: ip.version)
    return str(ordered[0].address) if ordered else ""
