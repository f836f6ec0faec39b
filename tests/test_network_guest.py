"""Two Debian VM pods on one CNI bridge network, on the qemu backend, through the ``vmpod`` command.

The network is real (bridge + host-local + tuning plugins, a fresh host bridge and /24, no DHCP
server anywhere on it).  Each guest's cloud-init ``runcmd`` prints what it sees to the serial
console, which is the pod's log:

* ``ip -4 -o addr``: the guest holds the address host-local gave its pod (``vmpod get``'s IP), with the
  CNI prefix, and as a static address (``valid_lft forever``, not ``dynamic``): it came from the seed's
  network-config, not from DHCP (there is no DHCP server to ask);
* the default route via the CNI gateway and the MTU the tuning plugin set;
* pod A connects to pod B's IP on port 22 and prints sshd's banner: VM to VM over the CNI bridge.

Deleting the pods releases both addresses and removes both namespaces.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.support.cli import leftovers, vmpod
from tests.support.cni import PLUGIN_DIRS, CNINetwork, state_namespaces
from vmpod.guests import build_debian_cloud_guest

pytestmark = pytest.mark.guest

#: A Debian guest under TCG on a busy two-core machine: generous; the test prints the time it took.
BOOT_TIMEOUT = 900.0

REPORT = "ip -4 -o addr show scope global; ip -4 route show default; ip -o link show | grep -v ' lo:'"
USER_DATA_B = f"""runcmd:
- [sh, -c, "({REPORT}) | sed 's/^/VMPOD-NET /' > /dev/ttyS0; echo VMPOD-NET-DONE > /dev/ttyS0"]
"""
CONNECT = ("for i in $(seq 1 300); do "
           "if banner=$(timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/22 && head -c 8 <&3'); then "
           "echo \"VMPOD-REACHED {ip} $banner\" > /dev/ttyS0; exit 0; fi; sleep 2; done; "
           "echo VMPOD-UNREACHABLE > /dev/ttyS0")


def manifest(path: Path, name: str, image: Path, user_data: str) -> Path:
    lines = "\n".join("      " + line for line in user_data.splitlines())
    path.write_text(f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletCloudInitUserData: |
{lines}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: vm
    image: file://{image}
    resources:
      limits: {{memory: 512Mi}}
""")
    return path


def wait_for(state: Path, name: str, pattern: str, timeout: float = BOOT_TIMEOUT) -> str:
    """Poll ``vmpod logs NAME`` until ``pattern`` (a regex) matches a line; returns the log."""
    deadline = time.monotonic() + timeout
    output = ""
    while time.monotonic() < deadline:
        output = vmpod(state, "logs", name).stdout
        if re.search(pattern, output, re.MULTILINE):
            return output
        time.sleep(3)
    raise AssertionError(f"no {pattern!r} in the log of {name} after {timeout:g} s:\n{output[-4000:]}")


def net_lines(log: str) -> list[str]:
    return [line.split("VMPOD-NET ", 1)[1].strip() for line in log.splitlines() if "VMPOD-NET " in line]


def check_static_address(log: str, ip: str, network: CNINetwork) -> None:
    lines = net_lines(log)
    [addr] = [line for line in lines if " inet " in line]
    assert f" inet {ip}/{network.subnet.prefixlen} " in addr, lines
    assert "valid_lft forever" in addr, lines  # static: from the seed
    assert "dynamic" not in addr, lines  # a DHCP lease would be dynamic
    assert f"default via {network.gateway} " in "\n".join(lines) + " ", lines
    assert any(f"mtu {network.mtu} " in line for line in lines if "link/ether" in line), lines


def test_two_vm_pods_on_one_cni_network(tmp_path: Path, network: CNINetwork) -> None:
    image = build_debian_cloud_guest()
    state = tmp_path / "state"

    def run(*args: str) -> str:
        result = vmpod(state, "--backend", "qemu", "--network", "cni", "--cni-conf-dir", str(network.conf_dir),
                       "--cni-bin-dir", ":".join(PLUGIN_DIRS), *args, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def pod_ip(name: str) -> str:
        ip = json.loads(run("get", name, "-o", "json"))["status"]["podIP"]
        assert isinstance(ip, str)
        return ip

    started = time.monotonic()
    try:
        run("run", "--wait", str(manifest(tmp_path / "b.yaml", "net-b", image, USER_DATA_B)))
        ip_b = pod_ip("net-b")
        user_data_a = USER_DATA_B + f"- [bash, -c, {json.dumps(CONNECT.format(ip=ip_b))}]\n"
        run("run", "--wait", str(manifest(tmp_path / "a.yaml", "net-a", image, user_data_a)))
        ip_a = pod_ip("net-a")
        assert sorted(network.reservations()) == sorted([ip_a, ip_b])
        assert len(state_namespaces(state)) == 2

        log_b = wait_for(state, "net-b", "VMPOD-NET-DONE")
        check_static_address(log_b, ip_b, network)
        log_a = wait_for(state, "net-a", f"VMPOD-REACHED {re.escape(ip_b)} |VMPOD-UNREACHABLE")
        print(f"both guests configured and A reached B after {time.monotonic() - started:.0f} s")
        check_static_address(log_a, ip_a, network)
        assert f"VMPOD-REACHED {ip_b} SSH-2.0-" in log_a, log_a[-3000:]
    finally:
        for name in ("net-a", "net-b"):
            vmpod(state, "--backend", "qemu", "--cni-bin-dir", ":".join(PLUGIN_DIRS), "delete", name,
                  timeout=600)
    assert network.reservations() == []
    assert state_namespaces(state) == []
    assert leftovers(state) == []
