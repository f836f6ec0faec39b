"""Reaching a VM without booting one: the forward helpers, the relay, argument parsing, the fake backend.

The real thing (qemu and libvirt guests, the real ssh client against dropbear, VNC) is in
``test_reach_guest.py``; here every piece is still real (sockets, the ``vmpod`` command, the fake
backend's files), only no hypervisor runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from vmpod_fake import FakeBackend
from vmpod_libvirt.backend import _user_netdev

from vmpod.backend import BackendConfig, GuestAccess
from vmpod.cli import build_parser
from vmpod.cli.port_forward import parse_mapping
from vmpod.cli.ssh import _split_rest, ssh_argv
from vmpod.errors import BackendError, ConflictError, InvalidTransition, SpecError
from vmpod.forwarding import (
    check_forward,
    check_host_port_free,
    hostfwd_add_command,
    hostfwd_remove_command,
    read_hostfwd_reply,
)
from vmpod.machine import Machine, NetworkMode, Nic, PortForward
from vmpod.relay import TcpRelay
from vmpod.testing.conformance import default_machine, make_conformance_test

VMPOD = shutil.which("vmpod")

#: ``info network`` of qemu 7.2 with a ``-netdev user`` NIC (libvirt's ``hostnet0``) after a ``-nic user``.
INFO_NETWORK = ("virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
                " \\ #net028: index=0,type=user,net=10.0.2.0,restrict=off\r\n"
                "net0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:57\r\n"
                " \\ hostnet0: index=0,type=user,net=10.0.2.0,restrict=off\r\n")


def _with_user_nic(name: str, pod_dir: Path) -> Machine:
    return attrs.evolve(default_machine(name, pod_dir), nics=(Nic(mac="52:54:00:00:00:01"),))


test_fake_backend_conforms_with_port_forwards = make_conformance_test(
    FakeBackend, make_machine=_with_user_nic, max_examples=60, stateful_step_count=20)


# ---- helpers of the backends ------------------------------------------------------------------


def test_monitor_commands_and_replies() -> None:
    forward = PortForward(guest_port=80, host_port=8080)
    assert hostfwd_add_command("net0", forward) == "hostfwd_add net0 tcp:127.0.0.1:8080-:80"
    assert hostfwd_remove_command("vmpodnet0", forward) == "hostfwd_remove vmpodnet0 tcp:127.0.0.1:8080"
    read_hostfwd_reply("", forward, adding=True)
    read_hostfwd_reply("host forwarding rule for tcp:127.0.0.1:8080 not found\r\n", forward, adding=False)
    with pytest.raises(ConflictError, match=r"^local port 8080 \(tcp on 127\.0\.0\.1\) is already in use"):
        read_hostfwd_reply("Could not set up host forwarding rule 'tcp:127.0.0.1:8080-:80'\r\n", forward,
                           adding=True)
    with pytest.raises(BackendError, match="invalid netdev"):
        read_hostfwd_reply("invalid netdev\r\n", forward, adding=True)


def test_forwards_are_checked() -> None:
    check_forward(PortForward(guest_port=22, host_port=2222))
    with pytest.raises(SpecError, match="host address: forwards listen on loopback only"):
        check_forward(PortForward(guest_port=22, host_port=2222, host_address="0.0.0.0"))
    with pytest.raises(SpecError, match="protocol"):
        check_forward(PortForward(guest_port=22, host_port=2222, protocol="sctp"))
    with pytest.raises(SpecError, match="guest port"):
        check_forward(PortForward(guest_port=0, host_port=2222))


def test_a_taken_host_port_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(ConflictError, match=f"^local port {port} "):
            check_host_port_free(PortForward(guest_port=80, host_port=port))
    check_host_port_free(PortForward(guest_port=80, host_port=port))


def test_libvirt_finds_the_user_netdev_in_info_network() -> None:
    assert _user_netdev(INFO_NETWORK) == "#net028"
    assert _user_netdev(INFO_NETWORK.split("\r\n", 2)[2]) == "hostnet0"
    assert _user_netdev(" \\ vmpodnet0: index=0,type=user,net=10.0.2.0,restrict=off\r\n") == "vmpodnet0"
    assert _user_netdev("net0: index=0,type=nic\r\n \\ hostnet0: index=0,type=tap,ifname=tap0\r\n") is None


# ---- the fake backend -------------------------------------------------------------------------


def test_fake_backend_records_forwards_for_the_current_run(tmp_path: Path) -> None:
    backend = FakeBackend(BackendConfig(state_dir=str(tmp_path)))
    assert isinstance(backend, GuestAccess)
    assert backend.capabilities().port_forward
    machine = _with_user_nic("m1", tmp_path / "pods" / "m1")
    backend.create(machine)
    forward = PortForward(guest_port=22, host_port=_free_port())
    with pytest.raises(InvalidTransition):
        backend.add_port_forward("m1", forward)
    backend.start("m1")
    backend.add_port_forward("m1", forward)
    assert backend.port_forwards("m1") == (f"tcp:127.0.0.1:{forward.host_port}-:22",)
    with pytest.raises(ConflictError, match=f"local port {forward.host_port} "):
        backend.add_port_forward("m1", attrs.evolve(forward, guest_port=80))
    backend.remove_port_forward("m1", forward)
    backend.remove_port_forward("m1", forward)
    assert backend.port_forwards("m1") == ()
    backend.add_port_forward("m1", forward)
    assert backend.vnc_address("m1") is None
    backend.stop("m1", timeout=1)
    assert backend.port_forwards("m1") == ()  # gone with the run
    backend.remove_port_forward("m1", forward)  # not running: fine
    with pytest.raises(InvalidTransition):
        backend.vnc_address("m1")
    backend.destroy("m1")


def test_fake_backend_refuses_a_machine_without_a_user_nic(tmp_path: Path) -> None:
    backend = FakeBackend(BackendConfig(state_dir=str(tmp_path)))
    tap = attrs.evolve(default_machine("m2", tmp_path / "pods" / "m2"),
                       nics=(Nic(mac="52:54:00:00:00:02", mode=NetworkMode.TAP, tap="tap0"),))
    backend.create(tap)
    backend.start("m2")
    with pytest.raises(BackendError, match="no user-mode NIC"):
        backend.add_port_forward("m2", PortForward(guest_port=22, host_port=_free_port()))
    backend.destroy("m2")


# ---- the relay ---------------------------------------------------------------------------------


@pytest.fixture
def upper_server() -> Iterator[int]:
    """A TCP server answering each connection with everything it received, upper-cased, after the client's EOF."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()


def test_relay_joins_connections_to_the_target_and_passes_half_closes(upper_server: int) -> None:
    payload = os.urandom(3 * 1024 * 1024).hex().encode()[:4_000_000]
    with TcpRelay(0, ("127.0.0.1", upper_server)) as relay:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as client:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := client.recv(65536):
                    received += chunk
            assert received == payload.upper()
        port = relay.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_relay_on_a_taken_port_names_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(ConflictError, match=f"^local port {port} "):
            TcpRelay(port, ("127.0.0.1", 1))


# ---- command lines -----------------------------------------------------------------------------


def test_port_mappings() -> None:
    assert parse_mapping("8080:80") == PortForward(guest_port=80, host_port=8080)
    assert parse_mapping("80") == PortForward(guest_port=80, host_port=80)
    assert parse_mapping(":80") == PortForward(guest_port=80, host_port=0)
    assert parse_mapping("0:80") == PortForward(guest_port=80, host_port=0)
    for bad in ("http", "8080:", "70000", "1:2:3", "-1:80"):
        with pytest.raises(SpecError, match="not a port number"):
            parse_mapping(bad)


def test_ssh_command_lines() -> None:
    assert ssh_argv(2222, "root", identity="/k", options=("ConnectTimeout=5",), command=("hostname",)) == [
        "ssh", "-p", "2222", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-i", "/k", "-o", "ConnectTimeout=5", "root@127.0.0.1", "--", "hostname"]
    assert ssh_argv(2222, "")[-1] == "127.0.0.1"
    parser = build_parser()
    for argv, identity, options, command in (
        (["ssh", "root@vm", "-i", "key", "--", "hostname"], "key", [], ("hostname",)),
        (["ssh", "-i", "key", "root@vm", "--", "ls", "-l"], "key", [], ("ls", "-l")),
        (["ssh", "-o", "A=1", "root@vm", "-o", "B=2", "uptime"], None, ["A=1", "B=2"], ("uptime",)),
        (["ssh", "vm", "-n", "other"], None, [], ()),
    ):
        args = parser.parse_args(argv)
        assert _split_rest(args) == command, argv
        assert (args.identity, args.ssh_option) == (identity, options), argv
    args = parser.parse_args(["ssh", "vm", "-n", "other"])
    _split_rest(args)
    assert args.namespace == "other"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ---- the command on the fake backend -----------------------------------------------------------

MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: fake-vm
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
spec:
  containers:
  - name: vm
    image: {image}
    resources:
      limits: {{memory: 128Mi}}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    (tmp_path / "pod.yaml").write_text(MANIFEST.format(image=image))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VMPOD_")}
    environment["VMPOD_STATE_DIR"] = str(tmp_path / "state")
    environment["VMPOD_BACKEND"] = "fake"
    return environment


def _vmpod(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert VMPOD is not None
    return subprocess.run([VMPOD, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _machine_forwards(state: Path) -> tuple[str, ...]:
    backend = FakeBackend(BackendConfig(state_dir=str(state)))
    (info,) = backend.list()
    return backend.port_forwards(info.name)


def test_port_forward_command_on_the_fake_backend(env: dict[str, str], tmp_path: Path) -> None:
    assert VMPOD is not None
    missing = _vmpod(env, "port-forward", "fake-vm", "80")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'vmpod: error: pod "fake-vm" not found in namespace "default"'
    assert _vmpod(env, "run", str(tmp_path / "pod.yaml")).returncode == 0
    state = Path(env["VMPOD_STATE_DIR"])

    bad = _vmpod(env, "port-forward", "fake-vm", "99999")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert "99999" in bad.stderr, bad.stderr
    assert "1 to 65535" in bad.stderr, bad.stderr
    twice = _vmpod(env, "port-forward", "fake-vm", "8080:80", "8080:22")
    assert twice.returncode == 1
    assert "given twice" in twice.stderr, twice.stderr

    local = _free_port()
    process = subprocess.Popen([VMPOD, "port-forward", "fake-vm", f"{local}:80", ":22"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline().strip()
    second = process.stdout.readline().strip()
    assert first == f"Forwarding from 127.0.0.1:{local} -> 80", (first, process.stderr.read() if not first else "")
    assert second.startswith("Forwarding from 127.0.0.1:")
    assert second.endswith(" -> 22")
    other = int(second.split(":")[1].split()[0])
    assert set(_machine_forwards(state)) == {f"tcp:127.0.0.1:{local}-:80", f"tcp:127.0.0.1:{other}-:22"}
    assert len(list((state / "forwards").glob("*.json"))) == 2  # the leases

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    process.stdout.close()
    assert process.stderr is not None
    process.stderr.close()
    assert _machine_forwards(state) == ()
    assert list((state / "forwards").glob("*.json")) == []

    vnc = _vmpod(env, "vnc", "fake-vm")
    assert vnc.returncode == 1
    assert vnc.stderr.strip() == 'vmpod: error: the VM of pod "default/fake-vm" has no VNC server'

    # A killed client leaves its forward and lease; the next session on that port reaps them.
    killed = subprocess.Popen([VMPOD, "port-forward", "fake-vm", f"{local}:80"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert killed.stdout is not None
    assert killed.stdout.readline().strip() == f"Forwarding from 127.0.0.1:{local} -> 80"
    killed.kill()
    killed.wait(timeout=60)
    killed.stdout.close()
    assert _machine_forwards(state) == (f"tcp:127.0.0.1:{local}-:80",)
    again = subprocess.Popen([VMPOD, "port-forward", "fake-vm", f"{local}:443"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert again.stdout is not None
    assert again.stdout.readline().strip() == f"Forwarding from 127.0.0.1:{local} -> 443"
    assert _machine_forwards(state) == (f"tcp:127.0.0.1:{local}-:443",)
    again.send_signal(signal.SIGINT)
    assert again.wait(timeout=60) == 0
    again.stdout.close()
    assert again.stderr is not None
    again.stderr.close()

    # The VM stops: a running session notices and ends with status 1.
    session = subprocess.Popen([VMPOD, "port-forward", "fake-vm", ":80"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert session.stdout is not None
    assert session.stderr is not None
    assert session.stdout.readline().startswith("Forwarding from")
    assert _vmpod(env, "delete", "fake-vm").returncode == 0
    assert session.wait(timeout=60) == 1
    assert "forwarding ended" in session.stderr.read()
    session.stdout.close()
    session.stderr.close()


# ---- a pod with a pod IP (cni mode, fake backend): the relay reaches the pod IP --------------------


@pytest.fixture
def cni_network(tmp_path: Path) -> Iterator[Any]:
    from tests.support.cni import make_network, plugins_installed  # noqa: PLC0415

    assert plugins_installed(), "the CNI plugins are not installed (bash scripts/setup.sh)"
    made = make_network(tmp_path)
    yield made
    made.cleanup()


def test_port_forward_and_ssh_reach_a_cni_pod_at_its_pod_ip(cni_network: Any, env: dict[str, str],
                                                            tmp_path: Path) -> None:
    """The fake runs no guest, so a stand-in takes the VM's place in the pod's namespace: the pod IP on the
    pod's bridge and a server on it (``ip netns exec``). ``vmpod port-forward`` relays to that address."""
    from tests.support.cni import PLUGIN_DIRS, state_namespaces  # noqa: PLC0415
    from vmpod.network import netns  # noqa: PLC0415
    from vmpod.network.podnet import BRIDGE  # noqa: PLC0415

    assert VMPOD is not None
    state = Path(env["VMPOD_STATE_DIR"])
    cni = ["--network", "cni", "--cni-conf-dir", str(cni_network.conf_dir), "--cni-bin-dir", ":".join(PLUGIN_DIRS)]
    server: subprocess.Popen[str] | None = None
    try:
        created = _vmpod(env, *cni, "run", "--wait", str(tmp_path / "pod.yaml"))
        assert created.returncode == 0, created.stderr
        [pod_ip] = cni_network.reservations()
        [namespace] = state_namespaces(state)
        netns.ip(["addr", "add", f"{pod_ip}/{cni_network.subnet.prefixlen}", "dev", BRIDGE], netns=namespace)
        server = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", _ECHO_SERVER, pod_ip],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"

        session = subprocess.Popen([VMPOD, "port-forward", "fake-vm", ":7000"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert session.stdout is not None
        line = session.stdout.readline().strip()
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local = int(line.split(":")[1].split()[0])
        with socket.create_connection(("127.0.0.1", local), timeout=30) as client:
            client.sendall(b"hello pod\n")
            client.shutdown(socket.SHUT_WR)
            assert client.makefile("rb").read() == f"{pod_ip}: HELLO POD\n".encode()
        session.send_signal(signal.SIGTERM)
        assert session.wait(timeout=60) == 0
        session.stdout.close()
        assert session.stderr is not None
        session.stderr.close()
        assert not (state / "forwards").exists() or list((state / "forwards").iterdir()) == []  # no backend forward
        fake = FakeBackend(BackendConfig(state_dir=str(state)))
        assert fake.port_forwards(fake.list()[0].name) == ()
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        _vmpod(env, "--cni-bin-dir", ":".join(PLUGIN_DIRS), "delete", "fake-vm")


_ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 7000))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        data = conn.makefile("rb").read()
        conn.sendall(sys.argv[1].encode() + b": " + data.upper())
"""
