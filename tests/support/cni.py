"""A throw-away CNI network for tests: a conflist (bridge + host-local + tuning) in a temporary directory.

Every network gets its own host bridge name and a /24 no route of the host uses, and
host-local keeps its reservations under the test's directory, so tests can check that an
address was released.  :meth:`CNINetwork.cleanup` removes the host bridge the plugin made.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import attrs

#: Where the Debian package puts the plugins (tests need them; a Kubernetes node has /opt/cni/bin).
PLUGIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")


def plugins_installed() -> bool:
    """True when the bridge, host-local and tuning plugins are in :data:`PLUGIN_DIRS`."""
    return all(any(os.access(Path(d) / p, os.X_OK) for d in PLUGIN_DIRS) for p in ("bridge", "host-local", "tuning"))


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=True).stdout
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


@attrs.frozen
class CNINetwork:
    """A CNI network made for one test."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    conf_dir: Path
    ipam_dir: Path
    mtu: int

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address (the pods' default gateway)."""
        return self.subnet.network_address + 1

    def reservations(self) -> list[str]:
        """Addresses host-local holds (its reservation files)."""
        directory = self.ipam_dir / self.name
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit())

    def cleanup(self) -> None:
        """Remove the host bridge the bridge plugin made."""
        subprocess.run(["ip", "link", "del", "dev", self.bridge], capture_output=True, check=False)


def make_network(directory: Path, *, mtu: int = 1400, file_name: str = "10-vmpod-test.conflist") -> CNINetwork:
    """Write a conflist for a fresh bridge and subnet into ``directory / "net.d"``."""
    rng = random.Random()
    used = _used_networks()
    while True:
        subnet = ipaddress.IPv4Network(f"10.{rng.randrange(200, 250)}.{rng.randrange(0, 256)}.0/24")
        if not any(subnet.overlaps(n) for n in used):
            break
    suffix = f"{rng.randrange(16**6):06x}"
    network = CNINetwork(name=f"vmpod-test-{suffix}", bridge=f"vmpt{suffix}", subnet=subnet,
                         conf_dir=directory / "net.d", ipam_dir=directory / "ipam", mtu=mtu)
    network.conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": network.name,
        "plugins": [
            {"type": "bridge", "bridge": network.bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(network.ipam_dir)},
             "dns": {"nameservers": [str(network.gateway)], "search": ["pods.vmpod.test"]}},
            {"type": "tuning", "mtu": mtu},
        ],
    }
    (network.conf_dir / file_name).write_text(json.dumps(conflist, indent=2))
    return network


def state_namespaces(state: Path) -> list[str]:
    """Network namespaces of the pods of state directory ``state`` (named after its store id)."""
    db = state / "vmpod.db"
    if not db.exists() or not Path("/run/netns").is_dir():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    return sorted(p.name for p in Path("/run/netns").glob(f"vmpod-{store_id[:8]}-*"))
