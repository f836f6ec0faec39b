"""The cached Debian cloud guest: it boots from a NoCloud seed and is reachable over ssh.

Also the accelerator detection the guest harness relies on.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.support.guestvm import boot_guest, make_ssh_key
from vmpod.accel import detect_accelerator, kvm_unusable_reason
from vmpod.guests import GuestBuildError, build_debian_cloud_guest, debian, disk


def _kvm_can_create_vm() -> bool:
    """Independent of vmpod.accel: can /dev/kvm create a VM at all?"""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.close(fcntl.ioctl(fd, 0xAE01, 0))  # KVM_CREATE_VM
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def test_detect_accelerator_agrees_with_trying_kvm(caplog: pytest.LogCaptureFixture) -> None:
    detect_accelerator.cache_clear()
    with caplog.at_level(logging.INFO, logger="vmpod.accel"):
        first = detect_accelerator()
        second = detect_accelerator()
    assert first in ("kvm", "tcg")
    assert second == first
    messages = [r.getMessage() for r in caplog.records if r.name == "vmpod.accel"]
    assert len(messages) == 1, messages  # probed and logged once per process
    reason = kvm_unusable_reason()
    if first == "kvm":
        assert _kvm_can_create_vm()
        assert reason is None
        assert messages[0] == "KVM is usable: using kvm"
    else:
        assert reason, "TCG chosen without a reason"
        assert messages[0] == f"KVM not usable ({reason}): falling back to TCG software emulation"
    if not _kvm_can_create_vm():
        assert first == "tcg"


def test_kvm_probe_explains_each_kind_of_failure(tmp_path: Path) -> None:
    missing = kvm_unusable_reason(str(tmp_path / "no-such-kvm"))
    assert missing == f"cannot open {tmp_path / 'no-such-kvm'}: {os.strerror(errno.ENOENT)}"
    not_kvm = kvm_unusable_reason("/dev/null")
    assert not_kvm is not None
    assert not_kvm.startswith("KVM_GET_API_VERSION failed: ENOTTY")
    if _kvm_can_create_vm():
        # A KVM implemented by something other than kvm_intel/kvm_amd is rejected.
        fake_sys = tmp_path / "module"
        (fake_sys / "kvm_pvm").mkdir(parents=True)
        reason = kvm_unusable_reason(sys_module_dir=fake_sys)
        assert reason is not None
        assert "kvm_pvm" in reason


def test_image_key_depends_on_every_input(monkeypatch: pytest.MonkeyPatch) -> None:
    base = debian.image_key()
    assert base == debian.image_key("bookworm", "http://deb.debian.org/debian")
    assert debian.image_key("trixie") != base
    assert debian.image_key(mirror="http://mirror.example/debian") != base
    monkeypatch.setattr(debian, "PACKAGES", (*debian.PACKAGES, "vim"))
    assert debian.image_key() != base
    monkeypatch.undo()
    monkeypatch.setattr(debian, "RECIPE_VERSION", debian.RECIPE_VERSION + 1)
    assert debian.image_key() != base


def test_default_cache_dir_is_outside_the_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMPOD_CACHE_DIR", str(tmp_path))
    assert debian.default_cache_dir() == tmp_path / "guests"
    monkeypatch.delenv("VMPOD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert debian.default_cache_dir() == tmp_path / "xdg" / "vmpod" / "guests"


def test_debian_guest_uses_the_shared_disk_steps() -> None:
    assert debian.GuestBuildError is disk.GuestBuildError
    assert GuestBuildError is disk.GuestBuildError
    assert debian.default_cache_dir is disk.default_cache_dir
    assert {"debootstrap", "chroot", "fstrim", "extlinux", "qemu-img"} <= set(debian.BUILD_TOOLS)
    entry = debian._boot_entry(kernel="vmlinuz-6.1.0-1-cloud-amd64", initrd="initrd.img-6.1.0-1-cloud-amd64",
                               fs_uuid="0123")
    # The text the image has always had (the cache key does not cover it): no SERIAL line, TIMEOUT 1.
    assert entry.extlinux_conf() == (
        "DEFAULT debian\nPROMPT 0\nTIMEOUT 1\n\nLABEL debian\n  LINUX /boot/vmlinuz-6.1.0-1-cloud-amd64\n"
        "  INITRD /boot/initrd.img-6.1.0-1-cloud-amd64\n"
        f"  APPEND root=UUID=0123 {debian.KERNEL_CMDLINE}\n")


def test_main_prints_the_image_or_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert debian.main(["--help"]) == 2
    assert "usage: python3 -m vmpod.guests.debian" in capsys.readouterr().err
    monkeypatch.setattr(debian, "build_debian_cloud_guest", lambda: tmp_path / "x.qcow2")
    assert debian.main([]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'x.qcow2'}\n"

    def failing() -> Path:
        raise GuestBuildError("no mirror")

    monkeypatch.setattr(debian, "build_debian_cloud_guest", failing)
    assert debian.main([]) == 1
    assert capsys.readouterr().err == "error: no mirror\n"


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the real (root, network, minutes) build steps with a quick fake; record work dirs."""
    calls: list[Path] = []

    def build(workdir: Path, *, suite: str, mirror: str, deb_cache: Path) -> Path:
        calls.append(workdir)
        assert workdir.parent == deb_cache.parent.parent  # built next to the cache: same file system
        (workdir / "disk.raw").write_bytes(b"partial")
        time.sleep(0.3)
        image = workdir / "disk.qcow2"
        image.write_bytes(b"QFI\xfb fake image")
        return image

    monkeypatch.setattr(debian, "check_tools", lambda tools: None)
    monkeypatch.setattr(debian.os, "geteuid", lambda: 0)
    monkeypatch.setattr(debian, "_build_image", build)
    return calls


def test_concurrent_builders_build_once(tmp_path: Path, fake_build: list[Path]) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_debian_cloud_guest(tmp_path))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_build) == 1
    assert len(set(results)) == 1
    assert len(results) == 3
    image = results[0]
    assert image.parent == tmp_path
    assert image.name == f"debian-bookworm-cloud-{debian.image_key()}.qcow2"
    assert image.read_bytes() == b"QFI\xfb fake image"
    assert not list(tmp_path.glob(".build-*"))
    assert build_debian_cloud_guest(tmp_path) == image  # cached: no new build
    assert len(fake_build) == 1


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, fake_build: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / ".build-killed"
    stale.mkdir()
    (stale / "disk.raw").write_bytes(b"left by a killed builder")

    def failing(workdir: Path, *, suite: str, mirror: str, deb_cache: Path) -> Path:
        (workdir / "disk.raw").write_bytes(b"partial")
        raise GuestBuildError("debootstrap failed")

    monkeypatch.setattr(debian, "_build_image", failing)
    with pytest.raises(GuestBuildError, match="debootstrap failed"):
        build_debian_cloud_guest(tmp_path)
    assert not list(tmp_path.glob(".build-*"))
    assert not list(tmp_path.glob("*.qcow2"))


@pytest.mark.guest
def test_debian_guest_boots_from_a_nocloud_cdrom_and_accepts_ssh(tmp_path: Path) -> None:
    image = build_debian_cloud_guest()
    assert image.suffix == ".qcow2"
    before = image.stat()
    key, public_key = make_ssh_key(tmp_path / "ssh")
    hostname = f"vmpod-{uuid.uuid4().hex[:8]}"
    instance_id = f"iid-{uuid.uuid4().hex[:12]}"
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "user-data").write_text(
        f"#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {public_key}\n"
    )
    (seed_dir / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
    seed = tmp_path / "seed.iso"
    subprocess.run(
        ["cloud-localds", str(seed), str(seed_dir / "user-data"), str(seed_dir / "meta-data")],
        check=True,
        capture_output=True,
    )

    with boot_guest(image, seed, workdir=tmp_path / "vm") as vm:
        waited = vm.wait_for_ssh(key, timeout=420)
        print(f"ssh after {waited:.0f} s ({vm.accelerator})")

        result = vm.ssh("hostname", key=key)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == hostname

        status = vm.ssh("cloud-init status --wait --long", key=key, timeout=300)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "status: done" in status.stdout
        assert "DataSourceNoCloud [seed=/dev/sr0]" in status.stdout

        iid = vm.ssh("cat /var/lib/cloud/data/instance-id", key=key)
        assert iid.stdout.strip() == instance_id
        resolv = vm.ssh("cat /etc/resolv.conf", key=key)
        assert "nameserver 10.0.2.3" in resolv.stdout  # slirp's DNS, from DHCP via resolvconf
        assert "Cloud-init v." in vm.console_text()

    after = image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns), "cached image changed"
    assert not (tmp_path / "vm" / "overlay.qcow2").exists()
