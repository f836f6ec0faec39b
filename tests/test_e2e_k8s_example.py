"""The seed's story end to end: the nested-Kubernetes StatefulSet as a user drives it, on both real backends.

The seed's ``k8s.yaml`` (Virtlet's example), adapted only where this machine needs it: one replica, the
image is the locally built Debian guest (real cloud-init, sshd) instead of Ubuntu's cloud image, and the
``ssh-authorized-keys`` entry is a key made by the test (the example's private key is not published).
Everything else stays: 4Gi root volume, 2 vCPUs, the user-data with ``write_files`` and the provisioning
``runcmd`` (which fails here without internet, as it would on an offline node; cloud-init carries on),
and the ``tcpSocket: 22`` readiness probe with ``initialDelaySeconds: 5``.

Through the installed ``vmpod`` command, in user-mode networking:

* ``vmpod logs -f k8s-0`` streams cloud-init's output while the guest boots;
* the readiness probe on port 22 turns the pod READY ``1/1`` in ``vmpod get``;
* ``vmpod ssh root@k8s-0 -i KEY -- hostname`` prints ``k8s-0``;
* ``vmpod attach k8s-0`` receives console output and a line typed into it reaches the guest's console
  (the serial getty echoes it back, and it shows up in the pod log);
* ``vmpod delete`` leaves nothing behind.
"""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.conftest import VIRTLET_EXAMPLES
from tests.support.cli import backend_cli, leftovers
from tests.support.guestvm import make_ssh_key
from vmpod.guests import build_debian_cloud_guest

pytestmark = pytest.mark.guest

K8S = VIRTLET_EXAMPLES / "k8s.yaml"
EXAMPLE_KEY = (VIRTLET_EXAMPLES / "vmkey.pub").read_text().strip()
#: A Debian guest under TCG on a busy two-core machine: generous, the test reports the time it took.
BOOT_TIMEOUT = 900.0

Runner = Callable[..., subprocess.CompletedProcess[str]]


def adapted_k8s_manifest(path: Path, image: Path, public_key: str) -> Path:
    """``k8s.yaml`` with one replica, the local Debian guest image and the test's ssh key; nothing else changed."""
    documents = list(yaml.safe_load_all(K8S.read_text()))
    statefulset = next(d for d in documents if d and d.get("kind") == "StatefulSet")
    statefulset["spec"]["replicas"] = 1
    template = statefulset["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert EXAMPLE_KEY in annotations["VirtletCloudInitUserData"]
    annotations["VirtletCloudInitUserData"] = annotations["VirtletCloudInitUserData"].replace(EXAMPLE_KEY, public_key)
    container = template["spec"]["containers"][0]
    container["image"] = f"file://{image}"
    assert container["readinessProbe"]["tcpSocket"]["port"] == 22
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


class LogFollower:
    """``vmpod logs -f POD`` in the background; every line with the monotonic time it arrived."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.drain()


def _ready(run: Runner) -> bool:
    table = run("get")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    row = next((r for r in rows if r and r[0] == "k8s-0"), None)
    assert row is not None, table.stdout
    assert row[2] in ("Running", "Pending", "ContainerCreating"), table.stdout
    return row[1] == "1/1"


def _attach(run_argv: list[str], line: str) -> str:
    """``vmpod attach k8s-0`` over a pipe, typing like a person: wake the getty with a newline, wait for
    its login prompt, then type ``line`` (again if it was not echoed: agetty discards what is typed while
    it sets up the terminal, and cloud-init may still be writing to the console).  What came back."""
    attach = subprocess.Popen([*run_argv, "attach", "k8s-0", "--linger", "3"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert attach.stdin is not None
    assert attach.stdout is not None
    received = bytearray()

    def read(stream: IO[bytes]) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            received.extend(chunk)

    def shows(text: str, since: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text.encode() not in received[since:]:
            if time.monotonic() > deadline or attach.poll() is not None:
                return False
            time.sleep(0.1)
        return True

    reader = threading.Thread(target=read, args=(attach.stdout,), daemon=True)
    reader.start()
    try:
        for _ in range(3):
            since = len(received)
            attach.stdin.write(b"\n")
            attach.stdin.flush()
            shows("login:", since, 30)
            time.sleep(1)
            since = len(received)
            attach.stdin.write(f"{line}\n".encode())
            attach.stdin.flush()
            if shows(line, since, 15):
                break
    finally:
        attach.stdin.close()
        attach.wait(timeout=60)
        reader.join(timeout=10)
        assert attach.stderr is not None
        errors = attach.stderr.read().decode(errors="replace")
        attach.stdout.close()
        attach.stderr.close()
    assert attach.returncode == 0, errors
    return received.decode(errors="replace")


def _scenario(run: Runner, run_argv: list[str], tmp_path: Path, leftover_check: Callable[[], list[str]]) -> None:
    image = build_debian_cloud_guest()
    key, public_key = make_ssh_key(tmp_path / "ssh")
    manifest = adapted_k8s_manifest(tmp_path / "k8s.yaml", image, public_key)
    started = time.monotonic()
    created = run("run", str(manifest))
    assert created.returncode == 0, created.stderr
    assert "pod/k8s-0 created" in created.stdout
    follower = LogFollower([*run_argv, "logs", "-f", "k8s-0"])
    try:
        deadline = started + BOOT_TIMEOUT
        while not _ready(run):
            assert time.monotonic() < deadline, f"k8s-0 not ready after {BOOT_TIMEOUT} s:\n" + "\n".join(
                line for _, line in follower.drain()[-60:])
            assert follower.process.poll() is None, "vmpod logs -f exited while the pod runs"
            time.sleep(2)
        ready_at = time.monotonic()
        print(f"k8s-0 ready {ready_at - started:.1f} s after vmpod run")
        # Live streaming: cloud-init's own lines arrived through the running `logs -f`, before the pod was ready.
        cloud_init = [(t, line) for t, line in follower.drain() if "cloud-init" in line.lower()]
        assert cloud_init, "no cloud-init output streamed by vmpod logs -f"
        assert cloud_init[0][0] < ready_at

        ssh = run("ssh", "root@k8s-0", "-i", str(key), "--", "hostname")
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.strip() == "k8s-0"

        marker = f"vmpod-attach-{secrets.token_hex(4)}"
        echoed = _attach(run_argv, marker)
        assert "login:" in echoed, echoed  # console output reached the attached client
        assert marker in echoed, echoed  # the getty echoed the typed line: it reached the guest's console
        deadline = time.monotonic() + 30
        while not any(marker in line for _, line in follower.drain()):
            assert time.monotonic() < deadline, "the typed line never reached the pod log"
            time.sleep(0.5)
    finally:
        follower.stop()
        deleted = run("delete", "k8s-0")
    assert deleted.returncode == 0, deleted.stderr
    assert leftover_check() == []


def test_k8s_example_on_qemu(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run, argv = backend_cli(state, "qemu")
    _scenario(run, argv, tmp_path, lambda: leftovers(state))


@pytest.fixture
def libvirt_state() -> Iterator[Path]:
    from tests.support.libvirtstate import libvirt_state_dir  # noqa: PLC0415

    with libvirt_state_dir("vmpod-e2e-k8s-") as state:
        yield state


def test_k8s_example_on_libvirt(libvirt_state: Path, tmp_path: Path) -> None:
    from vmpod_libvirt.testing import ensure_daemons  # noqa: PLC0415

    from tests.support.libvirtstate import domains  # noqa: PLC0415

    state = libvirt_state
    daemons = ensure_daemons()
    run, argv = backend_cli(state, "libvirt")

    def left() -> list[str]:
        found = [f"domain {name}" for name in domains(state.parent.name, daemons)]
        pods = state / "pods"
        found += [str(p) for p in pods.iterdir()] if pods.is_dir() else []
        return found

    _scenario(run, argv, tmp_path, left)
