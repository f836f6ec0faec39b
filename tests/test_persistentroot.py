"""Persistent root devices (:mod:`vmpod.persistentroot`) on regular files, and the machine builder's root branch.

Real ``qemu-img`` writes real images; the device is a sparse regular file here (the guest tests on
loop devices are in ``tests/test_persistentroot_guest.py``).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import attrs
import pytest

from vmpod.backend import Capabilities
from vmpod.cloudinit.disks import ROOT_SERIAL
from vmpod.errors import SpecError
from vmpod.hookspecs import VolumeAttachment
from vmpod.machine import Disk, DiskFormat, DiskRole
from vmpod.manifest import load_manifest_text
from vmpod.model import VMPod
from vmpod.persistentroot import (
    MAGIC,
    OFFSET,
    SECTOR,
    PersistentRootError,
    RootHeader,
    RootPlan,
    decode_header,
    encode_header,
    plan_root,
    read_header,
    write_root,
)
from vmpod.runtime.builder import build_machine, persistent_root_device
from vmpod.runtime.rootdisk import plan_pod_root, write_pod_root

SHA_A = hashlib.sha256(b"image a").hexdigest()
SHA_B = hashlib.sha256(b"image b").hexdigest()
IMAGE_SIZE = 1 << 20
WHERE = "spec.containers[0].volumeDevices[0].name"


def make_image(directory: Path, pattern: int, name: str = "image.qcow2") -> Path:
    """A 1 MiB qcow2 image with ``pattern`` in its first 64 KiB and in its last sector."""
    path = directory / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(IMAGE_SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} 0 64k",
                    "-c", f"write -P {pattern} {IMAGE_SIZE - SECTOR} {SECTOR}", str(path)],
                   check=True, capture_output=True)
    return path


def raw_of(image: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(out)], check=True)
    return out.read_bytes()


def device(tmp_path: Path, size: int = 2 << 20, fill: bytes = b"\0") -> Path:
    path = tmp_path / "device.img"
    path.write_bytes(fill * size)
    return path


def plan(dev: Path, sha: str = SHA_A, size: int = IMAGE_SIZE) -> RootPlan:
    return plan_root("rootvol", str(dev), image_digest=f"sha256:{sha}", virtual_size=size, where=WHERE)


# ------------------------------------------------------------------------------------------ the header


def test_header_layout_is_virtlets() -> None:
    sector = encode_header(f"sha256:{SHA_A}")
    assert len(sector) == SECTOR
    assert sector[:8] == bytes.fromhex("263dbe52ba576702")  # big-endian uint64 magic
    assert sector[8:10] == b"\x00\x01"  # big-endian uint16 version 1
    assert sector[10:42] == bytes.fromhex(SHA_A)
    assert sector[42:] == b"\0" * (SECTOR - 42)
    assert MAGIC == 0x263DBE52BA576702
    assert decode_header(sector) == RootHeader(version=1, sha256=SHA_A)


def test_no_header_corrupted_and_short() -> None:
    assert decode_header(b"\0" * SECTOR) is None
    assert decode_header(b"\x26\x3d") is None
    corrupted = bytearray(encode_header(SHA_A))
    corrupted[3] ^= 0xFF  # the magic no longer matches: the device is treated as blank
    assert decode_header(bytes(corrupted)) is None
    with pytest.raises(ValueError, match="not a sha256"):
        encode_header("abcd")


# ------------------------------------------------------------------------------- plan and write (files)


def test_first_write_then_kept_then_rewritten_for_another_image(tmp_path: Path) -> None:
    image_a = make_image(tmp_path, 0xAB, "a.qcow2")
    image_b = make_image(tmp_path, 0xCD, "b.qcow2")
    dev = device(tmp_path, fill=b"\x5a")  # old contents everywhere
    first = plan(dev)
    assert (first.write, first.block, first.device_size, first.offset) == (True, False, 2 << 20, OFFSET)
    assert first.size == (2 << 20) - SECTOR
    assert write_root(first, image_a, "qcow2") is True
    data = dev.read_bytes()
    assert read_header(dev) == RootHeader(version=1, sha256=SHA_A)
    assert data[OFFSET:OFFSET + IMAGE_SIZE] == raw_of(image_a, tmp_path)
    assert data[OFFSET + IMAGE_SIZE:] == b"\x5a" * ((2 << 20) - OFFSET - IMAGE_SIZE)  # beyond the image: untouched

    # A marker in a sector of the image region: a rewrite would replace it.
    marker_at = OFFSET + 128 * 1024
    with dev.open("r+b") as stream:
        stream.seek(marker_at)
        stream.write(b"VMPOD-MARKER")
    again = plan(dev)
    assert again.write is False
    assert write_root(again, image_a, "qcow2") is False
    assert dev.read_bytes()[marker_at:marker_at + 12] == b"VMPOD-MARKER"

    other = plan(dev, SHA_B)
    assert other.write is True
    assert write_root(other, image_b, "qcow2") is True
    data = dev.read_bytes()
    assert read_header(dev) == RootHeader(version=1, sha256=SHA_B)
    assert data[OFFSET:OFFSET + IMAGE_SIZE] == raw_of(image_b, tmp_path)
    assert data[marker_at:marker_at + 12] == b"\0" * 12


def test_raw_image_and_exact_fit(tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(bytes(range(256)) * (IMAGE_SIZE // 256))
    dev = device(tmp_path, size=IMAGE_SIZE + SECTOR)  # exactly the image + the header sector
    found = plan(dev)
    assert found.size == IMAGE_SIZE
    assert write_root(found, image, "raw")
    assert dev.read_bytes()[OFFSET:] == image.read_bytes()


def test_too_small_device_is_refused_and_untouched(tmp_path: Path) -> None:
    dev = device(tmp_path, size=IMAGE_SIZE, fill=b"\x11")  # no room for the header sector
    with pytest.raises(SpecError) as info:
        plan(dev)
    message = str(info.value)
    assert message.startswith(f"{WHERE}: the block device of volume 'rootvol' is too small for the image: "
                              f"{IMAGE_SIZE} bytes, the image needs {IMAGE_SIZE} bytes + a 512-byte header = "
                              f"{IMAGE_SIZE + SECTOR} bytes"), message
    assert str(dev) in message
    assert dev.read_bytes() == b"\x11" * IMAGE_SIZE


def test_corrupted_header_means_rewrite_and_unknown_version_is_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path, 0xAB)
    dev = device(tmp_path)
    write_root(plan(dev), image, "qcow2")
    with dev.open("r+b") as stream:
        stream.write(b"\x00")  # the magic's first byte
    assert plan(dev).write is True

    header = bytearray(encode_header(SHA_A))
    header[9] = 2  # version 2, for this very image
    with dev.open("r+b") as stream:
        stream.write(header)
    with pytest.raises(PersistentRootError, match="unsupported root device header version 2"):
        plan(dev)
    assert plan(dev, SHA_B).write is True  # another image: rewritten whatever the version (as Virtlet)


def test_failed_write_leaves_no_header(tmp_path: Path) -> None:
    """A crash or failure mid-write: the old header is already gone, so nothing claims a complete image."""
    image_a = make_image(tmp_path, 0xAB)
    dev = device(tmp_path)
    write_root(plan(dev), image_a, "qcow2")
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb" + b"\xff" * 4096)
    with pytest.raises(PersistentRootError, match=r"writing the image to the persistent root device .* failed"):
        write_root(plan(dev, SHA_B), broken, "qcow2")
    assert read_header(dev) is None
    assert plan(dev).write is True  # even image A is written again


def test_missing_device_and_not_a_device(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="persistent root device of volume 'rootvol' cannot be used"):
        plan(tmp_path / "missing")
    with pytest.raises(SpecError, match="not a block device or a file"):
        plan(tmp_path)


# ---------------------------------------------------------------------------------------- the builder

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: p
  uid: 0123456789abcdef-0000
  annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}
spec:
  containers:
  - name: vm
    image: /i.qcow2
    volumeDevices:
{devices}
  volumes:
  - name: rootvol
    persistentVolumeClaim: {{claimName: rootclaim}}
  - name: data
    persistentVolumeClaim: {{claimName: dataclaim}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: rootclaim}}
spec: {{volumeMode: Block, resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: dataclaim}}
spec: {{volumeMode: Block, resources: {{requests: {{storage: 1Gi}}}}}}
"""
ROOT_AND_DATA = "    - {name: rootvol, devicePath: /}\n    - {name: data, devicePath: /dev/data}"


def pod(devices: str = ROOT_AND_DATA) -> VMPod:
    return load_manifest_text(POD.format(devices=devices)).pods[0]


def attachments(*, read_only: bool = False, fmt: DiskFormat = DiskFormat.RAW) -> dict[str, VolumeAttachment]:
    return {
        "rootvol": VolumeAttachment(disks=(Disk(name="rootvol", path="/dev/loop7", format=fmt, role=DiskRole.VOLUME,
                                                block=True, read_only=read_only),)),
        "data": VolumeAttachment(disks=(Disk(name="data", path="/dev/loop6", format=DiskFormat.RAW,
                                             role=DiskRole.VOLUME, block=True),)),
    }


PLAN = RootPlan(volume="rootvol", device="/dev/loop7", block=True, device_size=(1 << 30) + 4096,
                image_sha256=SHA_A, write=True)


def build(the_pod: VMPod, found: dict[str, VolumeAttachment], root_plan: RootPlan | None = PLAN) -> list[Disk]:
    machine = build_machine(the_pod, root_disk=Path("/s/root.qcow2"), seed=Path("/s/seed.iso"), attachments=found,
                            serial_log=Path("/s/log"), runtime_dir=Path("/s/run"), store_id="s",
                            capabilities=Capabilities(filesystems=("9p",)), persistent_root=root_plan)
    return list(machine.disks)


def test_the_root_volume_becomes_the_root_disk_once() -> None:
    disks = build(pod(), attachments())
    assert [(d.name, d.role, d.path) for d in disks] == [
        ("rootvol", DiskRole.ROOT, "/dev/loop7"), ("data", DiskRole.VOLUME, "/dev/loop6"),
        ("seed", DiskRole.SEED, "/s/seed.iso")]
    root = disks[0]
    assert (root.format, root.block, root.offset, root.size, root.serial) == (
        DiskFormat.RAW, True, 512, (1 << 30) + 3584, ROOT_SERIAL)
    assert persistent_root_device(pod()) == (0, "rootvol")
    assert persistent_root_device(pod("    - {name: data, devicePath: /dev/data}")) is None


def test_root_volume_refusals() -> None:
    with pytest.raises(SpecError, match=r"volumeDevices\[0\].name: the persistent root volume is read-only"):
        build(pod(), attachments(read_only=True))
    with pytest.raises(SpecError, match="a persistent root needs a raw block device volume"):
        build(pod(), attachments(fmt=DiskFormat.QCOW2))
    with pytest.raises(SpecError, match="a persistent root needs a raw block device volume"):
        build(pod(), {})
    with pytest.raises(SpecError, match=r"volumeDevices: only one volumeDevice may be the root"):  # the manifest
        pod("    - {name: rootvol, devicePath: /}\n    - {name: data, devicePath: /}")
    with pytest.raises(SpecError, match=r"volumeDevices\[1\].name: the persistent root volume cannot also be"):
        build(pod("    - {name: rootvol, devicePath: /}\n    - {name: rootvol, devicePath: /dev/x}"), attachments())


def test_runtime_plan_and_write_on_a_file(tmp_path: Path) -> None:
    image = make_image(tmp_path, 0xAB)
    dev = device(tmp_path)
    found = {"rootvol": VolumeAttachment(disks=(Disk(name="rootvol", path=str(dev), format=DiskFormat.RAW,
                                                     role=DiskRole.VOLUME),))}
    assert plan_pod_root(pod("    - {name: data, devicePath: /dev/d}"), found, image_digest=f"sha256:{SHA_A}",
                         virtual_size=IMAGE_SIZE) is None
    root_plan = plan_pod_root(pod(), found, image_digest=f"sha256:{SHA_A}", virtual_size=IMAGE_SIZE)
    assert root_plan is not None
    assert (root_plan.write, root_plan.device) == (True, str(dev))
    assert write_pod_root(root_plan, image, "qcow2") == (
        f"wrote image sha256:{SHA_A[:12]} to the persistent root device {dev} (volume rootvol)")
    kept = plan_pod_root(pod(), found, image_digest=f"sha256:{SHA_A}", virtual_size=IMAGE_SIZE)
    assert kept is not None
    assert write_pod_root(kept, image, "qcow2") == (
        f"kept the persistent root on {dev} (volume rootvol): it already holds image sha256:{SHA_A[:12]}")
    with pytest.raises(SpecError, match=r"volumeDevices\[0\].name: the block device of volume 'rootvol' is too small"):
        plan_pod_root(pod(), found, image_digest=f"sha256:{SHA_A}", virtual_size=4 << 20)


# ------------------------------------------------------------------------------ the backends' slices


def test_backends_refuse_bad_slices() -> None:
    from vmpod_libvirt.domain import domain_xml  # noqa: PLC0415
    from vmpod_qemu.argv import QemuPaths, build_argv  # noqa: PLC0415

    from vmpod.errors import BackendError  # noqa: PLC0415

    machine = build_machine(pod(), root_disk=Path("/s/root.qcow2"), seed=Path("/s/seed.iso"),
                            attachments=attachments(), serial_log=Path("/s/log"), runtime_dir=Path("/s/run"),
                            store_id="s", capabilities=Capabilities(filesystems=("9p",)), persistent_root=PLAN)
    root = machine.disks[0]
    assert "offset=512,size=1073745408" in " ".join(build_argv(machine, accel="tcg", paths=QemuPaths("/m")))
    assert '<slice type="storage" offset="512" size="1073745408" />' in domain_xml(machine, "tcg")
    for bad, message in ((attrs.evolve(root, format=DiskFormat.QCOW2), "only a raw disk can start at an offset"),
                         (attrs.evolve(root, size=1000), "multiples of 512"),
                         (attrs.evolve(root, offset=100), "multiples of 512")):
        broken = attrs.evolve(machine, disks=(bad, *machine.disks[1:]))
        with pytest.raises(BackendError, match=message):
            build_argv(broken, accel="tcg", paths=QemuPaths("/m"))
        with pytest.raises(BackendError, match=message):
            domain_xml(broken, "tcg")
