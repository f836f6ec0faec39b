"""The tiny test guest's builder: initramfs archive, kernel module order, the build cache, the image."""

from __future__ import annotations

import json
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmpod.guests.disk import BootEntry, GuestBuildError, boot_disk, cached_build, run
from vmpod.guests.tiny import CpioEntry, build_tiny_guest, module_load_order, tiny_guest_key, write_newc


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """An independent newc reader: ``(name, mode, data, (rdevmajor, rdevminor))`` per member."""
    members, offset = [], 0
    while True:
        assert data[offset : offset + 6] == b"070701", f"bad magic at {offset}"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = offset + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return members
        members.append((name, fields[1], data[body : body + filesize], (fields[9], fields[10])))
        offset = body + filesize + (-filesize % 4)


def test_newc_archive_reads_back() -> None:
    entries = [
        CpioEntry("bin", 0o40755),
        CpioEntry("bin/tool", 0o100755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("dev/console", 0o20600, rdev=(5, 1)),
        CpioEntry("odd", 0o100644, b"x" * 5),
    ]
    archive = write_newc(entries)
    assert len(archive) % 512 == 0
    assert read_newc(archive) == [
        ("bin", 0o40755, b"", (0, 0)),
        ("bin/tool", 0o100755, b"#!/bin/sh\necho hi\n", (0, 0)),
        ("dev/console", 0o20600, b"", (5, 1)),
        ("odd", 0o100644, b"xxxxx", (0, 0)),
    ]
    listing = subprocess.run(["busybox", "cpio", "-t"], input=archive, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["bin", "bin/tool", "dev/console", "odd"]


def fake_module(path: Path, depends: str) -> None:
    """A minimal 64-bit ELF file with a ``.modinfo`` section, as the kernel's module tools read it."""
    modinfo = f"license=GPL\0depends={depends}\0name={path.stem}\0".encode()
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    header_size, section_size = 64, 64
    modinfo_at = header_size
    shstrtab_at = modinfo_at + len(modinfo)
    sections_at = shstrtab_at + len(shstrtab)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sections_at, 0, header_size, 0, 0, section_size, 3, 2)
    null = bytes(section_size)
    info = struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, modinfo_at, len(modinfo), 0, 0, 1, 0)
    names = struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstrtab_at, len(shstrtab), 0, 0, 1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + modinfo + shstrtab + null + info + names)


def test_module_load_order_follows_dependencies(tmp_path: Path) -> None:
    mods = tmp_path / "lib" / "modules" / "6.1.0-test"
    fake_module(mods / "kernel/fs/9p/9p.ko", "9pnet,netfs")
    fake_module(mods / "kernel/net/9p/9pnet.ko", "")
    fake_module(mods / "kernel/net/9p/9pnet_virtio.ko", "9pnet,virtio_ring")
    fake_module(mods / "kernel/fs/netfs/netfs.ko", "fscache")
    fake_module(mods / "kernel/fs/fscache/fscache.ko", "")
    fake_module(mods / "kernel/drivers/virtio/virtio_ring.ko", "")
    fake_module(mods / "kernel/drivers/scsi/sr_mod.ko", "scsi-common")
    fake_module(mods / "kernel/drivers/scsi/scsi_common.ko", "crc_builtin")
    (mods / "modules.builtin").write_text("kernel/lib/crc_builtin.ko\n")
    order = [p.name for p in module_load_order(mods, ["9pnet_virtio", "9p", "sr-mod"])]
    assert order == ["9pnet.ko", "virtio_ring.ko", "9pnet_virtio.ko", "fscache.ko", "netfs.ko", "9p.ko",
                     "scsi_common.ko", "sr_mod.ko"]
    with pytest.raises(GuestBuildError, match="kernel module nosuch is neither"):
        module_load_order(mods, ["nosuch"])
    fake_module(mods / "kernel/a.ko", "b")
    fake_module(mods / "kernel/b.ko", "a")
    with pytest.raises(GuestBuildError, match="dependency cycle: a -> b -> a"):
        module_load_order(mods, ["a"])


def test_extlinux_config() -> None:
    entry = BootEntry(kernel="/boot/vmlinuz", initrd="/boot/initrd.img", append="console=ttyS0 quiet")
    assert entry.extlinux_conf() == (
        "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\n\nLABEL linux\n  LINUX /boot/vmlinuz\n"
        "  INITRD /boot/initrd.img\n  APPEND console=ttyS0 quiet\n")
    quiet = BootEntry(kernel="/vmlinuz", initrd=None, append="ro", label="x", serial=False, timeout=1)
    assert quiet.extlinux_conf() == "DEFAULT x\nPROMPT 0\nTIMEOUT 1\n\nLABEL x\n  LINUX /vmlinuz\n  APPEND ro\n"


def test_boot_disk_rejects_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match="unknown disk format 'vmdk'"), \
            boot_disk(tmp_path / "d.vmdk", size=1 << 20, fs_label="x", fs_uuid="0", output_format="vmdk"):
        pass
    assert not list(tmp_path.iterdir())


def test_run_with_a_log_file_reports_its_tail(tmp_path: Path) -> None:
    log_file = tmp_path / "step.log"
    assert run(["sh", "-c", "echo out; echo err >&2"], log_file=log_file) == ""
    assert log_file.read_text() == "out\nerr\n"
    with pytest.raises(GuestBuildError, match=r"sh failed \(exit 3\):\n(.*\n){29}line 40$"):
        run(["sh", "-c", "seq -f 'line %g' 40; exit 3"], log_file=log_file)


def test_cached_build_publishes_atomically_and_once(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(work: Path) -> Path:
        calls.append(work)
        time.sleep(0.2)
        (work / "out.img").write_bytes(b"image")
        return work / "out.img"

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        cached_build(tmp_path, "thing.img", build, lock_name=".lock", work_prefix=".work-"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1, "concurrent callers must wait for one build"
    assert results == [tmp_path / "thing.img"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "thing.img"]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def build(work: Path) -> Path:
        (work / "half.img").write_bytes(b"partial")
        raise GuestBuildError("step 3 failed")

    with pytest.raises(GuestBuildError, match="step 3 failed"):
        cached_build(tmp_path, "thing.img", build, lock_name=".lock", work_prefix=".work-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    (tmp_path / ".work-killed").mkdir()  # what a killed builder leaves: removed by the next build
    cached_build(tmp_path, "thing.img", lambda w: (w / "x").write_bytes(b"ok") and w / "x", lock_name=".lock",
                 work_prefix=".work-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "thing.img"]


@pytest.mark.guest
def test_tiny_guest_image_is_cached_and_bootable_by_a_bios(tmp_path: Path) -> None:
    image = build_tiny_guest()
    assert image.name == f"tiny-{tiny_guest_key()}.qcow2"
    started = time.monotonic()
    assert build_tiny_guest() == image
    assert time.monotonic() - started < 2, "a cached image must be found without building"
    assert not list(image.parent.glob(".tiny-build-*")), "a build directory was left behind"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True,
                                     check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * 1024 * 1024
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={image}", f"of={tmp_path / 'mbr'}",
                    "bs=512", "count=1"], capture_output=True, check=True)
    mbr = (tmp_path / "mbr").read_bytes()
    assert mbr[510:512] == b"\x55\xaa"
    status, kind, start = mbr[446], mbr[446 + 4], struct.unpack_from("<I", mbr, 446 + 8)[0]
    assert (status, kind, start) == (0x80, 0x83, 2048), "one bootable Linux partition at 1 MiB"
