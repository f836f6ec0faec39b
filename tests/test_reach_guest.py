"""Reaching a running tiny guest through the real ``vmpod`` command, on qemu and on libvirt.

One pod per backend (user-mode networking, the tiny guest with busybox httpd on port 80 and
dropbear on port 22, its root key given by ``VirtletSSHKeys``; on libvirt the pod also has a
``hostPort`` for port 80, so its user network is vmpod's ``<qemu:commandline>`` netdev rather
than libvirt's own, and both must take dynamic forwards):

* ``vmpod port-forward POD :80`` prints ``Forwarding from 127.0.0.1:N -> 80``; an HTTP GET on
  that port returns the guest's page with the pod's hostname; SIGTERM ends it with status 0 and
  the local port is free again;
* a taken local port makes ``vmpod port-forward`` exit 1 with one line naming the port;
* a ``vmpod port-forward`` killed with SIGKILL leaves its forward; the next session for the same
  port finds the dead client's lease, removes its forward and forwards again;
* ``vmpod ssh root@POD -i KEY -- hostname`` runs the real ssh client against the guest's dropbear;
* ``vmpod vnc POD`` names the VNC server, which answers with an ``RFB 003.`` banner, also through
  ``vmpod vnc POD 0``'s relay;
* ``vmpod delete`` leaves nothing behind.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cli import backend_cli, tiny_manifest, wait_for_log
from tests.support.guestvm import make_ssh_key
from vmpod.guests.tiny import build_tiny_guest

pytestmark = pytest.mark.guest

Runner = Callable[..., subprocess.CompletedProcess[str]]
_FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$")


def _manifest(path: Path, image: Path, name: str, public_key: str, host_port: int | None = None) -> Path:
    """The tiny guest with ``public_key`` for root and, with ``host_port``, a static forward to port 80."""
    tiny_manifest(path, image, [name])
    text = path.read_text().replace(
        "    VirtletRootVolumeSize: 256Mi\n",
        f"    VirtletRootVolumeSize: 256Mi\n    VirtletSSHKeys: |\n      {public_key}\n")
    assert public_key in text
    if host_port is not None:
        text = text.replace("    resources:\n", f"    ports:\n    - {{containerPort: 80, hostPort: {host_port}}}\n"
                                                "    resources:\n")
        assert f"hostPort: {host_port}" in text
    path.write_text(text)
    return path


class Session:
    """A background ``vmpod ... port-forward``/``vnc`` and the ``Forwarding from`` lines it printed."""

    def __init__(self, argv: list[str], count: int = 1) -> None:
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ports: list[tuple[int, int]] = []
        assert self.process.stdout is not None
        while len(self.ports) < count:
            line = self.process.stdout.readline()
            if not line:
                stderr = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"{argv} ended (status {self.process.wait()}): {self.lines} {stderr}")
            self.lines.append(line.rstrip("\n"))
            match = _FORWARDING.match(self.lines[-1]) or re.match(
                r"^Forwarding from 127\.0\.0\.1:(\d+) -> VNC [\d.]+:(\d+)$", self.lines[-1])
            if match:
                self.ports.append((int(match.group(1)), int(match.group(2))))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as response:
        body: str = response.read().decode()
        return body


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return False
    except ConnectionRefusedError:
        return True


def _rfb_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.settimeout(30)
        data = b""
        while len(data) < 12:
            chunk = sock.recv(12 - len(data))
            if not chunk:
                break
            data += chunk
        return data


def _scenario(run: Runner, argv: list[str], state: Path, tmp_path: Path, name: str, *,
              static_port: bool = False) -> None:
    """The whole story on one pod; ``static_port``: the pod also has a hostPort for port 80 (a static forward)."""
    key, public_key = make_ssh_key(tmp_path / "ssh")
    host_port = _free_port() if static_port else None
    manifest = _manifest(tmp_path / "pod.yaml", build_tiny_guest(), name, public_key, host_port)
    created = run("run", str(manifest))
    assert created.returncode == 0, created.stderr
    try:
        log = wait_for_log(state, name, "VMPOD-READY", timeout=600)
        assert re.search(r"VMPOD-NET eth0 10\.0\.2\.15/24", log), log
        assert "VMPOD-SSH dropbear keys=1" in log, log
        if host_port is not None:
            assert f"<h1>{name}</h1>" in _get(host_port)

        # port-forward to the guest's httpd, then SIGTERM: the forward goes with the client.
        session = Session([*argv, "port-forward", name, ":80"])
        (local, remote), = session.ports
        assert remote == 80
        page = _get(local)
        assert f"<h1>{name}</h1>" in page, page
        assert session.stop() == 0
        assert _refused(local)
        assert not list((state / "forwards").glob("*.json"))

        # A taken local port: exit 1, one line naming the port.
        with socket.create_server(("127.0.0.1", 0)) as holder:
            taken = holder.getsockname()[1]
            refused = run("port-forward", name, f"{taken}:80")
        assert refused.returncode == 1
        assert refused.stderr.strip().count("\n") == 0, refused.stderr
        assert f"local port {taken} " in refused.stderr, refused.stderr
        assert "already in use" in refused.stderr, refused.stderr

        # A killed client's forward is found and replaced by the next session on the same port.
        killed = Session([*argv, "port-forward", name, ":80"])
        (port, _), = killed.ports
        assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
        assert f"<h1>{name}</h1>" in _get(port)  # the forward outlived its client
        again = Session([*argv, "port-forward", name, f"{port}:80"])
        assert again.ports == [(port, 80)]
        assert f"<h1>{name}</h1>" in _get(port)
        assert again.stop(signal.SIGINT) == 0
        assert _refused(port)

        # ssh: the real client against the guest's dropbear.
        ssh = run("ssh", f"root@{name}", "-i", str(key), "--", "hostname")
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.strip() == name
        failing = run("ssh", f"root@{name}", "-i", str(key), "--", "exit", "7")
        assert failing.returncode == 7, failing.stderr

        # vnc: the endpoint, its RFB banner, and the same through a relay.
        shown = run("vnc", name)
        assert shown.returncode == 0, shown.stderr
        match = re.fullmatch(rf"VNC of pod default/{name}: (127\.0\.0\.1):(\d+)", shown.stdout.strip())
        assert match, shown.stdout
        assert _rfb_banner(match.group(1), int(match.group(2))).startswith(b"RFB 003.")
        relay = Session([*argv, "vnc", name, "0"])
        (relay_port, vnc_port), = relay.ports
        assert vnc_port == int(match.group(2))
        assert _rfb_banner("127.0.0.1", relay_port).startswith(b"RFB 003.")
        assert relay.stop() == 0
    finally:
        deleted = run("delete", name)
    assert deleted.returncode == 0, deleted.stderr
    gone = run("port-forward", name, ":80")
    assert gone.returncode == 1
    assert "not found" in gone.stderr, gone.stderr


def test_reach_tiny_guest_on_qemu(tmp_path: Path) -> None:
    from tests.support.cli import leftovers  # noqa: PLC0415

    state = tmp_path / "state"
    run, argv = backend_cli(state, "qemu")

    _scenario(run, argv, state, tmp_path, "reach-q")
    assert leftovers(state) == []


@pytest.fixture
def libvirt_state() -> Iterator[Path]:
    from tests.support.libvirtstate import libvirt_state_dir  # noqa: PLC0415

    with libvirt_state_dir("vmpod-reach-") as state:
        yield state


def test_reach_tiny_guest_on_libvirt(libvirt_state: Path, tmp_path: Path) -> None:
    from vmpod_libvirt.testing import ensure_daemons  # noqa: PLC0415

    from tests.support.libvirtstate import domains  # noqa: PLC0415

    state = libvirt_state
    daemons = ensure_daemons()
    run, argv = backend_cli(state, "libvirt")

    _scenario(run, argv, state, tmp_path, "reach-l",
              static_port=True)
    assert domains(state.parent.name, daemons) == []
