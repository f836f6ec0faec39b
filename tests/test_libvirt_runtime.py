"""The installed ``vmpod`` console script with ``--backend libvirt`` and the tiny guest.

* ``vmpod run`` of a pod with a root size and an extra qcow2 flexvolume: the guest sees both disks at
  their sizes and the pod's instance-id on its console; ``vmpod logs -f`` streams it as it comes;
  ``vmpod delete`` powers the guest off and leaves no domain, volume or file behind.
* ``vmpod run`` SIGKILLed (``VMPOD_FAULT_POINT``) after libvirt defined the domain, before vmpod recorded
  it: the next command reconciles and no domain is left.
* Bad input refused by the command: clear error, exit 1, no traceback, no domain, nothing under the pod
  directory.  A root size smaller than the image is not an error (as in Virtlet, the image size wins).

One real boot (the fault and bad-input cases never start a guest).  The state directory is under
``/var/tmp``: libvirt's qemu runs as ``libvirt-qemu`` and cannot reach pytest's ``tmp_path``.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vmpod_libvirt.testing import Daemons, ensure_daemons

from tests.support.cli import get_pods, leftovers, store_problems, tiny_manifest, vmpod
from tests.support.libvirtstate import domains, libvirt_state_dir
from vmpod.guests.tiny import build_tiny_guest

pytestmark = pytest.mark.guest

ROOT_SIZE = 256 << 20
VOLUME_SIZE = 96 << 20


@pytest.fixture(scope="module")
def libvirtd() -> Daemons:
    return ensure_daemons()


@pytest.fixture
def state(libvirtd: Daemons) -> Iterator[Path]:
    """A state directory libvirt's qemu can reach; vmpod's domains in it are destroyed after the test."""
    with libvirt_state_dir("vmpod-libvirt-runtime-") as path:
        yield path


def lvpod(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``vmpod --state-dir STATE --backend libvirt ARGS...``."""
    return vmpod(state, "--backend", "libvirt", *args, env=env)


def virsh_names(libvirtd: Daemons) -> set[str]:
    result = subprocess.run(["virsh", "-c", libvirtd.uri, "list", "--all", "--name"], capture_output=True,
                            text=True, check=True)
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def manifest(path: Path, image: Path, name: str, *, root_size: str = "256Mi", volumes: str = "",
             devices: str = "") -> Path:
    """One tiny-guest pod (as :func:`tiny_manifest`) with extra ``volumes`` and ``volumeDevices`` YAML."""
    text = tiny_manifest(path, image, [name]).read_text().replace("256Mi", root_size)
    if devices:
        text += "    volumeDevices:\n" + devices
    if volumes:
        text += "  volumes:\n" + volumes
    path.write_text(text)
    return path


def flexvolume(name: str, capacity: str) -> str:
    return (f"  - name: {name}\n    flexVolume:\n      driver: virtlet/flexvolume_driver\n"
            f"      options:\n        type: qcow2\n        capacity: {capacity}\n")


class Follower:
    """``vmpod logs -f`` as a subprocess: its lines as they arrive, read by a thread."""

    def __init__(self, state: Path, name: str) -> None:
        script = shutil.which("vmpod")
        assert script
        self.process = subprocess.Popen([script, "--state-dir", str(state), "logs", "-f", name],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\r\n")))

    def wait_for(self, text: str, timeout: float = 300) -> float:
        """Wait until a line containing ``text`` arrives; when it arrived (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self.lines.empty()):
                stderr = self.process.stderr.read() if self.process.poll() is not None and self.process.stderr else ""
                raise AssertionError(f"no {text!r} from vmpod logs -f (exit {self.process.poll()}):\n"
                                     + "\n".join(self.seen[-40:]) + f"\n{stderr}")
            try:
                arrived, line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return arrived

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        finally:
            self.reader.join(timeout=5)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


BLOCK_CLAIM = """apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: raw-claim
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources:
    requests:
      storage: 1Gi
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: raw-pv
spec:
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  local:
    path: {path}
  claimRef:
    name: raw-claim
    namespace: default
"""


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_run_logs_follow_and_delete_with_libvirt(tmp_path: Path, state: Path, libvirtd: Daemons) -> None:
    image = build_tiny_guest()
    pod_yaml = manifest(tmp_path / "pod.yaml", image, "lvtiny", devices="",
                        volumes=flexvolume("data", "96MiB"))
    pod_yaml.write_text(pod_yaml.read_text().replace(
        "    resources:", "    volumeMounts:\n    - name: data\n      mountPath: /data\n    resources:"))

    # Killed after libvirt defined the domain, before vmpod recorded it: the next command removes it.
    killed = lvpod(state, "run", str(pod_yaml), env={"VMPOD_FAULT_POINT": "create.machine.after"})
    assert killed.returncode == -9, f"exit {killed.returncode}\n{killed.stderr}"
    orphans = domains(str(state), libvirtd)
    assert len(orphans) == 1, f"the fault fired before the domain was defined: {orphans}"
    assert orphans[0] in virsh_names(libvirtd)
    pods = get_pods(state)  # reconciles
    assert domains(str(state), libvirtd) == [], "the interrupted create left its domain"
    assert orphans[0] not in virsh_names(libvirtd)
    assert store_problems(state) == []
    if "lvtiny" in pods:
        assert pods["lvtiny"]["status"]["phase"] == "Pending", pods["lvtiny"]["status"]
    found = leftovers(state)
    assert not [f for f in found if "root.qcow2" in f or "seed.iso" in f or f.startswith("process")], found

    # The real run (the one boot).  `vmpod logs -f` prints what is there and keeps streaming: the guest's
    # VMPOD-POWEROFF arrives only after the delete below, through the same process.
    result = lvpod(state, "run", "--wait", str(pod_yaml))
    assert result.returncode == 0, result.stderr
    pod = get_pods(state)["lvtiny"]
    assert (pod["vmpod"]["backend"], pod["status"]["phase"]) == ("libvirt", "Running"), pod
    machine = pod["vmpod"]["machine"]
    assert domains(str(state), libvirtd) == [machine]
    follower = Follower(state, "lvtiny")
    try:
        seed_at = follower.wait_for("VMPOD-SEED ")
        ready_at = follower.wait_for("VMPOD-READY")
        assert ready_at >= seed_at
        assert "VMPOD-SEED instance-id=lvtiny.default hostname=lvtiny" in follower.seen
        assert follower.process.poll() is None, "vmpod logs -f ended while the pod runs"
        disks = [line.split()[1:] for line in follower.seen if line.startswith("VMPOD-DISK ")]
        sizes = sorted(int(size) for _, size, *rest in disks if rest)  # disks with a serial: root and volume
        assert sizes == [VOLUME_SIZE, ROOT_SIZE], disks
        assert any(rest == ["serial=data"] for _, _, *rest in disks), disks

        # A graceful delete: the guest gets the ACPI power button and powers off, the follower sees it
        # and ends by itself once the pod no longer runs.
        deleted = lvpod(state, "delete", "lvtiny")
        assert deleted.returncode == 0, deleted.stderr
        follower.wait_for("VMPOD-POWEROFF", timeout=60)
        assert follower.process.wait(timeout=30) == 0
    finally:
        assert follower.stop() in (0, -15)
    assert get_pods(state) == {}
    assert machine not in virsh_names(libvirtd)
    assert domains(str(state), libvirtd) == []
    assert store_problems(state) == []
    assert leftovers(state) == []
    assert list((state / "pods").rglob("*")) == [] if (state / "pods").exists() else True
    assert not Path(f"/etc/libvirt/qemu/{machine}.xml").exists()


def test_bad_input_is_refused_with_libvirt(tmp_path: Path, state: Path, libvirtd: Daemons) -> None:
    image = build_tiny_guest()
    shared = state.parent

    def nothing_made(name: str) -> None:
        assert domains(str(state), libvirtd) == [], "a domain was defined"
        assert get_pods(state) == {}, "the refused pod was kept"
        assert leftovers(state) == [], "files, a log or a process were left"
        pod_files = list((state / "pods").rglob("*")) if (state / "pods").exists() else []
        assert pod_files == [], pod_files
        assert store_problems(state) == []

    # Not a disk image.
    text = shared / "not-a-disk.img"
    text.write_text("this is not a disk image\n" * 100)
    result = lvpod(state, "run", str(manifest(tmp_path / "text.yaml", text, "textimg")))
    assert_refused(result, "spec.containers[0].image: not a disk image")
    nothing_made("textimg")

    # More disks than the bus allows (the default, SCSI: 26 with the root disk and the seed).
    many = "".join(flexvolume(f"v{i}", "1MiB") for i in range(26))
    result = lvpod(state, "run", str(manifest(tmp_path / "many.yaml", image, "manydisks", volumes=many)))
    assert_refused(result, "spec.volumes: too many scsi block devices: 28 disks with the root disk and the "
                           "cloud-init seed")
    nothing_made("manydisks")

    # A block device outside the allowed list (/dev/loop*): a node nothing can open (loop250).
    device = shared / "blockdev"
    subprocess.run(["mknod", str(device), "b", "7", "250"], check=True)
    block = "  - name: raw\n    persistentVolumeClaim:\n      claimName: raw-claim\n"
    block_yaml = manifest(tmp_path / "block.yaml", image, "blockdev", volumes=block,
                          devices="    - name: raw\n      devicePath: /dev/raw\n")
    block_yaml.write_text(BLOCK_CLAIM.format(path=device) + "---\n" + block_yaml.read_text())
    result = lvpod(state, "run", str(block_yaml))
    assert_refused(result, "is not one the libvirt backend may use")
    nothing_made("blockdev")

    # A root size smaller than the image: the image's size is used (Virtlet's behaviour), not an error.
    # Interrupted just before the start: the domain exists, its root overlay has the image's size.
    small = manifest(tmp_path / "small.yaml", image, "smallroot", root_size="1Mi")
    killed = lvpod(state, "run", str(small), env={"VMPOD_FAULT_POINT": "start.before"})
    assert killed.returncode == -9, f"exit {killed.returncode}\n{killed.stderr}"
    pod: dict[str, Any] = get_pods(state)["smallroot"]
    assert pod["vmpod"]["backend"] == "libvirt"
    assert domains(str(state), libvirtd) == [pod["vmpod"]["machine"]]
    overlays = list((state / "pods").rglob("root.qcow2"))
    assert len(overlays) == 1, overlays
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(overlays[0])],
                                     capture_output=True, text=True, check=True).stdout)
    image_info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                                           capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == image_info["virtual-size"] > (1 << 20)
    result = lvpod(state, "delete", "smallroot", "--now")
    assert result.returncode == 0, result.stderr
    assert domains(str(state), libvirtd) == []
    assert leftovers(state) == []
