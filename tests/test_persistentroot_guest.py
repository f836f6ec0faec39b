"""A persistent root (``volumeDevices: [{devicePath: /}]``) on a real loop device, with the tiny guest.

For the qemu backend and the libvirt backend, through the installed ``vmpod`` command:

1. the first ``vmpod run`` writes the image after the header sector and the guest boots from the
   device: ``VMPOD-READY``, and its root disk (serial ``vmpod_root``) is the device size - 512 bytes;
   the header names the image's sha256; the pod's events say the image was written;
2. ``vmpod delete``, a marker is put in a sector of the image region that the image has zero, and
   ``vmpod run`` again: the guest boots, the marker is still there (nothing rewrote the image) and the
   events say the root was kept;
3. ``vmpod delete`` and a run of a *different* image (the same guest converted to raw, so another
   sha256): the image is written again (the marker is gone, the header names the new sha256), and the
   guest boots from it.

Nothing is left behind (no machine, no domain, no files); the loop device is detached.  The device's
backing file is under ``/var/tmp`` (libvirt's qemu cannot reach pytest's ``tmp_path``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmpod_libvirt.testing import ensure_daemons, shared_dir

from tests.support.cli import get_pods, leftovers, store_problems, tiny_manifest, vmpod, wait_for_log
from tests.support.qemu import destroy_all
from vmpod.cloudinit.disks import ROOT_SERIAL
from vmpod.guests.disk import file_digest
from vmpod.guests.tiny import build_tiny_guest
from vmpod.persistentroot import OFFSET, SECTOR, RootHeader, read_header

pytestmark = pytest.mark.guest

DEVICE_SIZE = 96 << 20

CLAIM = """apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: root-claim
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources:
    requests:
      storage: 96Mi
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: root-pv
spec:
  capacity:
    storage: 96Mi
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  local:
    path: {path}
  claimRef:
    name: root-claim
    namespace: default
---
"""

DEVICES = """    volumeDevices:
    - name: root
      devicePath: /
  volumes:
  - name: root
    persistentVolumeClaim:
      claimName: root-claim
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = shared_dir("vmpod-persistentroot-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def loop_device(workdir: Path) -> Iterator[Path]:
    """A loop device over a sparse 96 MiB file full of 0x5a (old data), detached after the test."""
    backing = workdir / "device.img"
    with backing.open("wb") as stream:
        stream.write(b"\x5a" * DEVICE_SIZE)
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        yield Path(device)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def pod_manifest(path: Path, image: Path, name: str, device: Path) -> Path:
    text = tiny_manifest(path, image, [name]).read_text()
    path.write_text(CLAIM.format(path=device) + text + DEVICES)
    return path


def zero_sector_of(image: Path, tmp: Path) -> int:
    """Offset of the last all-zero sector of ``image`` as raw data (the marker goes there)."""
    raw = tmp / "image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    data = raw.read_bytes()
    raw.unlink()
    for offset in range(len(data) - SECTOR, 0, -SECTOR):
        if data[offset:offset + SECTOR] == b"\0" * SECTOR:
            return offset
    raise AssertionError("the tiny guest image has no zero sector")


def read_at(device: Path, offset: int, size: int) -> bytes:
    with device.open("rb") as stream:
        stream.seek(offset)
        return stream.read(size)


def write_at(device: Path, offset: int, data: bytes) -> None:
    with device.open("r+b") as stream:
        stream.seek(offset)
        stream.write(data)


@pytest.mark.parametrize("backend", ["qemu", "libvirt"])
def test_persistent_root_on_a_loop_device(backend: str, workdir: Path, loop_device: Path) -> None:
    if backend == "libvirt":
        ensure_daemons()
    state = workdir / "state"
    image = workdir / "tiny.qcow2"
    shutil.copyfile(build_tiny_guest(), image)
    other = workdir / "tiny.raw"  # the same guest, another file: another sha256
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(other)], check=True)
    name = f"persist-{backend}"
    manifest = pod_manifest(workdir / "pod.yaml", image, name, loop_device)
    other_manifest = pod_manifest(workdir / "other.yaml", other, name, loop_device)
    marker = b"VMPOD-PERSISTENT-ROOT-MARKER".ljust(SECTOR, b"!")
    marker_at = OFFSET + zero_sector_of(image, workdir)

    def run(path: Path) -> str:
        result = vmpod(state, "--backend", backend, "run", "--wait", str(path))
        assert result.returncode == 0, result.stderr
        log = wait_for_log(state, name, "VMPOD-READY", timeout=300)
        disks = [line.split()[1:] for line in log.splitlines() if line.startswith("VMPOD-DISK ")]
        assert [int(size) for _, size, *rest in disks if rest == [f"serial={ROOT_SERIAL}"]] == \
            [DEVICE_SIZE - OFFSET], disks
        described = vmpod(state, "describe", name)
        assert described.returncode == 0, described.stderr
        return described.stdout

    def delete() -> None:
        result = vmpod(state, "--backend", backend, "delete", name)
        assert result.returncode == 0, result.stderr
        assert get_pods(state) == {}

    try:
        # 1. The first run writes the image.
        events = run(manifest)
        assert f"wrote image sha256:{file_digest(image)[:12]} to the persistent root device {loop_device}" in events
        assert read_header(loop_device) == RootHeader(version=1, sha256=file_digest(image))
        assert read_at(loop_device, marker_at, SECTOR) == b"\0" * SECTOR
        delete()

        # 2. Run again: the image is kept (the marker survives) and the guest boots from the device.
        write_at(loop_device, marker_at, marker)
        events = run(manifest)
        assert f"kept the persistent root on {loop_device}" in events, events
        assert "wrote image" not in events
        assert read_at(loop_device, marker_at, SECTOR) == marker
        delete()

        # 3. Another image: written again.
        events = run(other_manifest)
        assert f"wrote image sha256:{file_digest(other)[:12]}" in events, events
        assert read_header(loop_device) == RootHeader(version=1, sha256=file_digest(other))
        assert read_at(loop_device, marker_at, SECTOR) == b"\0" * SECTOR
        delete()
        assert store_problems(state) == []
        assert leftovers(state) == []
    finally:
        destroy_all(state)
        if backend == "libvirt":
            uri = ensure_daemons().uri
            listed = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True,
                                    text=True, check=False).stdout.split()
            for domain in listed:
                if domain.startswith("vmpod-") and str(state) in subprocess.run(
                        ["virsh", "-c", uri, "dumpxml", domain], capture_output=True, text=True,
                        check=False).stdout:
                    subprocess.run(["virsh", "-c", uri, "destroy", domain], capture_output=True, check=False)
                    subprocess.run(["virsh", "-c", uri, "undefine", domain], capture_output=True, check=False)


def test_refused_persistent_roots_write_nothing(workdir: Path, loop_device: Path) -> None:
    """A device too small for the image, and (libvirt) a device outside ``allowed_devices``: refused, unchanged."""
    state = workdir / "state"
    image = workdir / "tiny.qcow2"
    shutil.copyfile(build_tiny_guest(), image)
    backing = workdir / "device.img"
    before = file_digest(backing)

    def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
        assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert file_digest(backing) == before, "the refused device was written"
        assert get_pods(state) == {}
        assert leftovers(state) == []
        assert store_problems(state) == []

    # Too small: the 64 MiB image + the header sector do not fit in 32 MiB (a loop device limited to that).
    small = subprocess.run(["losetup", "-f", "--show", "--sizelimit", str(32 << 20), str(backing)],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        result = vmpod(state, "--backend", "qemu", "run", str(pod_manifest(workdir / "small.yaml", image, "small",
                                                                             Path(small))))
        refused(result, "spec.containers[0].volumeDevices[0].name: the block device of volume 'root' is too small "
                        f"for the image: {32 << 20} bytes, the image needs {64 << 20} bytes + a 512-byte header = "
                        f"{(64 << 20) + 512} bytes")
    finally:
        subprocess.run(["losetup", "-d", small], check=False)

    # libvirt: the same loop device through a node outside /dev (allowed_devices is /dev/loop*): the
    # backend refuses the machine before anything is written.
    ensure_daemons()
    rdev = loop_device.stat().st_rdev
    alias = workdir / "alias-blockdev"
    subprocess.run(["mknod", str(alias), "b", str(os.major(rdev)), str(os.minor(rdev))], check=True)
    result = vmpod(state, "--backend", "libvirt", "run", str(pod_manifest(workdir / "alias.yaml", image, "alias",
                                                                          alias)))
    refused(result, "is not one the libvirt backend may use")
