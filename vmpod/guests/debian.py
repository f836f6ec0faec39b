"""A cached, bootable Debian cloud guest image with real cloud-init and sshd.

:func:`build_debian_cloud_guest` returns a qcow2 image that boots under qemu
(MBR + extlinux, Debian's ``linux-image-cloud-amd64`` kernel, systemd) and
configures itself with cloud-init from a NoCloud (``cidata``) or ConfigDrive
(``config-2``) seed, on a cdrom or a disk.  The image is built once with
``debootstrap`` from a Debian mirror and kept in a cache directory outside the
repository, under a name derived from a hash of every input of the build.
Callers must never write to it: boot it through a qcow2 overlay.

The disk, its cache and its cleanup are :mod:`vmpod.guests.disk`'s: debootstrap
installs straight into the file system of :func:`~vmpod.guests.disk.boot_disk`.
Building needs root (loop devices, mount, chroot) and the Debian packages
``debootstrap``, ``extlinux``, ``syslinux-common``, ``qemu-utils``,
``e2fsprogs``, ``fdisk``/``util-linux``.

Run ``python3 -m vmpod.guests.debian`` to build (or find) the image and print
its path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from vmpod.guests.disk import (
    DISK_TOOLS,
    PARTITION_OFFSET,
    BootEntry,
    GuestBuildError,
    boot_disk,
    cached_build,
    check_tools,
    default_cache_dir,
    guest_main,
    inputs_key,
    install_extlinux,
    run,
)

__all__ = [
    "DEFAULT_MIRROR",
    "DEFAULT_SUITE",
    "GuestBuildError",
    "build_debian_cloud_guest",
    "default_cache_dir",
    "image_key",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_SUITE: Final = "bookworm"
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"

#: Bump whenever the build *steps* change in a way the constants below do not
#: show (the constants themselves are part of the cache key already).
RECIPE_VERSION: Final = 1

#: Packages installed on top of debootstrap's ``minbase`` variant.
PACKAGES: Final[tuple[str, ...]] = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "cloud-init",
    # cloud-init -> python3-cryptography -> python3-cffi-backend-api-*, a
    # virtual package debootstrap's resolver cannot satisfy on its own.
    "python3-cffi-backend",
    "cloud-guest-utils",  # growpart, for cloud-init's growpart module
    "fdisk",  # sfdisk, used by growpart
    "openssh-server",
    "sudo",
    "ifupdown",  # cloud-init's network renderer on Debian 12 is "eni"
    "isc-dhcp-client",
    "resolvconf",  # applies dns-nameservers of static configs (DHCP works without it)
    "iproute2",
    "netbase",
    "procps",
    "less",
)

#: Units that only slow a TCG boot down or do background work a test VM never needs.
MASKED_UNITS: Final[tuple[str, ...]] = (
    "apt-daily.timer",
    "apt-daily.service",
    "apt-daily-upgrade.timer",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "dpkg-db-backup.service",
    "e2scrub_all.timer",
    "e2scrub_all.service",
    "e2scrub_reap.service",
    "fstrim.timer",
    "logrotate.timer",
    "man-db.timer",
    "systemd-tmpfiles-clean.timer",
    "systemd-timesyncd.service",
)

#: Kernel modules the guest needs early: the root disk, and a seed on a cdrom
#: (virtio-scsi or IDE) or a second virtio disk.  They are forced into the
#: initramfs so that ``/dev/sr0`` exists before systemd's generators run
#: cloud-init's ``ds-identify``, which otherwise may find no datasource.
#: The initramfs holds only these (``MODULES=list``), which boots faster
#: than Debian's default ``MODULES=most``.
REQUIRED_MODULES: Final[tuple[str, ...]] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "sd_mod",
    "sr_mod",
    "cdrom",
    "ata_piix",
    "isofs",  # iso9660
    "vfat",
    "ext4",
)

DISK_SIZE: Final = 3 * 1024**3
KERNEL_CMDLINE: Final = "ro console=ttyS0,115200n8 scsi_mod.scan=sync no_timer_check"
FS_LABEL: Final = "vmpod-root"
#: What a build runs: the disk tools of :mod:`vmpod.guests.disk` (but ``cp``) and these.
BUILD_TOOLS: Final = ("debootstrap", "chroot", "fstrim", *(t for t in DISK_TOOLS if t != "cp"))

CLOUD_CFG: Final = """\
# Written by vmpod's guest image builder.
datasource_list: [NoCloud, ConfigDrive, None]
# No grub in this image: skip grub-dpkg's debconf probing.
grub_dpkg:
  enabled: false
"""

# No "lo" stanza here: cloud-init's interfaces.d/50-cloud-init has one, with the
# dns-nameservers of a static configuration, and ifupdown would take the first
# stanza of the two and so lose them.  systemd brings lo up in any case.
NETWORK_INTERFACES: Final = """\
# Written by vmpod's guest image builder; cloud-init writes interfaces.d/50-cloud-init.
source /etc/network/interfaces.d/*
"""

#: Files written into the image: path -> (text, mode).  Part of the cache key.
CONFIG_FILES: Final[Mapping[str, tuple[str, int]]] = {
    "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": (CLOUD_CFG, 0o644),
    "/etc/network/interfaces": (NETWORK_INTERFACES, 0o644),
    "/etc/default/locale": ("LANG=C.UTF-8\n", 0o644),
    "/etc/hostname": ("debian\n", 0o644),
    "/etc/hosts": ("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
    "/etc/initramfs-tools/modules": ("\n".join(REQUIRED_MODULES) + "\n", 0o644),
    "/etc/initramfs-tools/conf.d/vmpod.conf": ("MODULES=list\n", 0o644),
    "/etc/systemd/journald.conf.d/vmpod.conf": ("[Journal]\nStorage=persistent\n", 0o644),
    "/etc/sudoers.d/README": ("# sudo rules for users come from cloud-init.\n", 0o440),
}

_CHROOT_ENV: Final[Mapping[str, str]] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}


def image_key(suite: str = DEFAULT_SUITE, mirror: str = DEFAULT_MIRROR) -> str:
    """The hash naming the image built from these inputs (and this recipe)."""
    return inputs_key({
        "recipe_version": RECIPE_VERSION,
        "suite": suite,
        "mirror": mirror,
        "variant": "minbase",
        "packages": sorted(PACKAGES),
        "masked_units": sorted(MASKED_UNITS),
        "config_files": {path: [text, mode] for path, (text, mode) in sorted(CONFIG_FILES.items())},
        "kernel_cmdline": KERNEL_CMDLINE,
        "disk_size": DISK_SIZE,
        "partition_offset": PARTITION_OFFSET,
    })


def build_debian_cloud_guest(
    cache_dir: Path | None = None,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str = DEFAULT_MIRROR,
) -> Path:
    """Return the path of the cached guest qcow2 image, building it first if needed.

    The image lives in ``cache_dir`` (default :func:`default_cache_dir`) as
    ``debian-<suite>-cloud-<key>.qcow2``.  A build holds an exclusive lock on
    ``cache_dir/.build.lock``, so concurrent callers wait for one build instead
    of doing their own; it works in a temporary directory inside ``cache_dir``
    and renames the finished image into place, so a reader never sees a partial
    image, and a failed build leaves nothing behind (mounts and loop devices
    are released in every case).

    :raises GuestBuildError: when not root, a tool is missing or a step fails.
    """
    cache = (cache_dir if cache_dir is not None else default_cache_dir()).resolve()
    name = f"debian-{suite}-cloud-{image_key(suite, mirror)}.qcow2"
    if (cache / name).is_file():
        log.debug("guest image cached: %s", cache / name)
        return cache / name
    if os.geteuid() != 0:
        raise GuestBuildError(f"building the guest image {name} needs root (loop devices, mount)")
    check_tools(BUILD_TOOLS)
    debs = cache / ".debs" / hashlib.sha256(f"{suite} {mirror}".encode()).hexdigest()[:16]
    started = time.monotonic()

    def build(workdir: Path) -> Path:
        debs.mkdir(parents=True, exist_ok=True)
        return _build_image(workdir, suite=suite, mirror=mirror, deb_cache=debs)

    image = cached_build(cache, name, build, lock_name=".build.lock", work_prefix=".build-")
    log.info(
        "guest image ready in %.0f s: %s (%.0f MiB)",
        time.monotonic() - started,
        image,
        image.stat().st_size / 1024**2,
    )
    return image


# -- the build ---------------------------------------------------------------


def _build_image(workdir: Path, *, suite: str, mirror: str, deb_cache: Path) -> Path:
    qcow2 = workdir / "disk.qcow2"
    fs_uuid = str(uuid.uuid4())
    with boot_disk(qcow2, size=DISK_SIZE, fs_label=FS_LABEL, fs_uuid=fs_uuid) as root:
        log.info("debootstrap %s from %s (takes a minute or two)", suite, mirror)
        started = time.monotonic()
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--components=main",
                f"--include={','.join(PACKAGES)}",
                f"--cache-dir={deb_cache}",
                suite,
                str(root),
                mirror,
            ],
            log_file=workdir / "debootstrap.log",
        )
        log.info("debootstrap done in %.0f s", time.monotonic() - started)

        for sub, fstype in (("proc", "proc"), ("sys", "sysfs")):
            run(["mount", "-t", fstype, fstype, str(root / sub)])
        _configure(root, suite=suite, mirror=mirror, fs_uuid=fs_uuid)
        kernel, initrd, kver = _kernel_files(root)
        _check_modules(root, kver)
        _chroot(root, ["update-initramfs", "-u", "-k", kver])
        _check_initramfs(root, kver, initrd)
        log.info("installing extlinux")
        install_extlinux(root, _boot_entry(kernel=kernel, initrd=initrd, fs_uuid=fs_uuid))
        _clean(root)
        run(["fstrim", str(root)])  # so that deleted files' blocks do not land in the qcow2
    return qcow2


def _configure(root: Path, *, suite: str, mirror: str, fs_uuid: str) -> None:
    log.info("configuring the guest")
    for path, (text, mode) in CONFIG_FILES.items():
        _write(root, path, text, mode)
    _write(root, "/etc/fstab", f"UUID={fs_uuid}\t/\text4\terrors=remount-ro\t0\t1\n", 0o644)
    _write(root, "/etc/apt/sources.list", f"deb {mirror} {suite} main\n", 0o644)
    _chroot(root, ["passwd", "--lock", "root"])
    _chroot(root, ["systemctl", "mask", *MASKED_UNITS])


def _kernel_files(root: Path) -> tuple[str, str, str]:
    """``(kernel, initrd, version)``: file names in ``/boot`` of the one installed kernel."""
    kernels = sorted(p.name for p in (root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"expected exactly one kernel in the guest's /boot, found {kernels}")
    kver = kernels[0].removeprefix("vmlinuz-")
    return kernels[0], f"initrd.img-{kver}", kver


def _check_modules(root: Path, kver: str) -> None:
    """Fail the build when the kernel lacks a module the guest needs (built in counts)."""
    mod_dir = root / "lib" / "modules" / kver
    available: set[str] = set()
    for index in ("modules.dep", "modules.builtin"):
        path = mod_dir / index
        if path.is_file():
            for line in path.read_text().splitlines():
                module = line.split(":", 1)[0].rsplit("/", 1)[-1]
                available.add(module.split(".ko", 1)[0].replace("-", "_"))
    missing = [m for m in REQUIRED_MODULES if m not in available]
    if missing:
        raise GuestBuildError(f"the guest kernel {kver} lacks modules {missing}")


def _check_initramfs(root: Path, kver: str, initrd: str) -> None:
    listing = _chroot(root, ["lsinitramfs", f"/boot/{initrd}"])
    present = {
        line.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_") for line in listing.splitlines()
    }
    builtin_file = root / "lib" / "modules" / kver / "modules.builtin"
    builtin = {
        line.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")
        for line in builtin_file.read_text().splitlines()
    }
    missing = [m for m in REQUIRED_MODULES if m not in present and m not in builtin]
    if missing:
        raise GuestBuildError(f"the initramfs {initrd} lacks modules {missing}")


def _boot_entry(*, kernel: str, initrd: str, fs_uuid: str) -> BootEntry:
    return BootEntry(
        kernel=f"/boot/{kernel}",
        initrd=f"/boot/{initrd}",
        append=f"root=UUID={fs_uuid} {KERNEL_CMDLINE}",
        label="debian",
        serial=False,
        timeout=1,
    )


def _clean(root: Path) -> None:
    """Remove what must differ per instance or only takes space."""
    patterns = (
        "etc/ssh/ssh_host_*",
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_*",
        "var/log/*.log",
    )
    for pattern in patterns:
        for found in root.glob(pattern):
            found.unlink()
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # The host's resolv.conf, copied by debootstrap: resolvconf manages it in the guest.
    resolv = root / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/resolvconf/resolv.conf")
    (root / "etc" / "machine-id").write_text("")  # systemd makes a new one on first boot
    shutil.rmtree(root / "var" / "lib" / "cloud", ignore_errors=True)
    if any(root.glob("etc/ssh/ssh_host_*")):
        raise GuestBuildError("ssh host keys are still in the image")


# -- helpers -------------------------------------------------------------------


def _write(root: Path, path: str, text: str, mode: int) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # never write through a symlink into the host
    target.write_text(text)
    target.chmod(mode)


def _chroot(root: Path, argv: Sequence[str]) -> str:
    return run(["chroot", str(root), *argv], env=_CHROOT_ENV)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or find) the default guest image and print its path; ``0`` on success."""
    return guest_main(build_debian_cloud_guest, "vmpod.guests.debian", argv)


if __name__ == "__main__":
    sys.exit(main())
