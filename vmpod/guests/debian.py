"""A cached, bootable Debian cloud guest image with real cloud-init and sshd.

:func:`build_debian_cloud_guest` returns a qcow2 image that boots under qemu
(MBR + extlinux, Debian's ``linux-image-cloud-amd64`` kernel, systemd) and
configures itself with cloud-init from a NoCloud (``cidata``) or ConfigDrive
(``config-2``) seed, on a cdrom or a disk.  The image is built once with
``debootstrap`` from a Debian mirror and kept in a cache directory outside the
repository, under a name derived from a hash of every input of the build.
Callers must never write to it: boot it through a qcow2 overlay.

Building needs root (loop devices, mount, chroot) and the Debian packages
``debootstrap``, ``extlinux``, ``syslinux-common``, ``qemu-utils``,
``e2fsprogs``, ``fdisk``/``util-linux``.

Run ``python3 -m vmpod.guests.debian`` to build (or find) the image and print
its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from vmpod.errors import VmpodError

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
PARTITION_OFFSET: Final = 1024**2
KERNEL_CMDLINE: Final = "ro console=ttyS0,115200n8 scsi_mod.scan=sync no_timer_check"
MBR_BOOT_CODE: Final = Path("/usr/lib/syslinux/mbr/mbr.bin")
FS_LABEL: Final = "vmpod-root"

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


class GuestBuildError(VmpodError):
    """Building the guest image failed; the message says which step and why."""


def default_cache_dir() -> Path:
    """``$VMPOD_CACHE_DIR/guests``, else ``$XDG_CACHE_HOME/vmpod/guests`` (``~/.cache``)."""
    env = os.environ.get("VMPOD_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "guests"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vmpod" / "guests"


def image_key(suite: str = DEFAULT_SUITE, mirror: str = DEFAULT_MIRROR) -> str:
    """The hash naming the image built from these inputs (and this recipe)."""
    recipe = {
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
    }
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
    image = cache / f"debian-{suite}-cloud-{image_key(suite, mirror)}.qcow2"
    if image.is_file():
        log.debug("guest image cached: %s", image)
        return image
    if os.geteuid() != 0:
        raise GuestBuildError(f"building the guest image {image.name} needs root (loop devices, mount)")
    _check_tools()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".build.lock"):
        if image.is_file():  # somebody else built it while we waited
            log.info("guest image built by another process: %s", image)
            return image
        _remove_stale_builds(cache)
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            debs = cache / ".debs" / hashlib.sha256(f"{suite} {mirror}".encode()).hexdigest()[:16]
            debs.mkdir(parents=True, exist_ok=True)
            qcow2 = _build_image(workdir, suite=suite, mirror=mirror, deb_cache=debs)
            _fsync(qcow2)
            os.replace(qcow2, image)
            _fsync(cache)
        finally:
            _remove_build_dir(workdir)
        log.info(
            "guest image built in %.0f s: %s (%.0f MiB)",
            time.monotonic() - started,
            image,
            image.stat().st_size / 1024**2,
        )
        return image


# -- the build ---------------------------------------------------------------


def _build_image(workdir: Path, *, suite: str, mirror: str, deb_cache: Path) -> Path:
    raw = workdir / "disk.raw"
    root = workdir / "root"
    root.mkdir()
    with raw.open("wb") as f:
        f.truncate(DISK_SIZE)
    table = f"label: dos\nstart={PARTITION_OFFSET // 512}, type=83, bootable\n"
    _run(["sfdisk", "--quiet", str(raw)], input_text=table)
    fs_uuid = str(uuid.uuid4())
    with contextlib.ExitStack() as stack:
        loop = _attach_loop(raw, PARTITION_OFFSET, DISK_SIZE - PARTITION_OFFSET)
        stack.callback(_detach_loop, loop)
        # ^64bit: a 3 GiB file system does not need it and older syslinux cannot read it.
        _run(["mkfs.ext4", "-q", "-F", "-L", FS_LABEL, "-U", fs_uuid, "-O", "^64bit", loop])
        _run(["mount", loop, str(root)])
        stack.callback(_umount_tree, root)

        log.info("debootstrap %s from %s (takes a minute or two)", suite, mirror)
        started = time.monotonic()
        _run(
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
            _run(["mount", "-t", fstype, fstype, str(root / sub)])
        _configure(root, suite=suite, mirror=mirror, fs_uuid=fs_uuid)
        kernel, initrd, kver = _kernel_files(root)
        _check_modules(root, kver)
        _chroot(root, ["update-initramfs", "-u", "-k", kver])
        _check_initramfs(root, kver, initrd)
        _install_bootloader(root, kernel=kernel, initrd=initrd, fs_uuid=fs_uuid)
        _clean(root)
        _run(["fstrim", str(root)])  # so that deleted files' blocks do not land in the qcow2
        _umount_tree(root)
        _run(["e2fsck", "-f", "-p", loop])
    with raw.open("r+b") as f:
        f.write(MBR_BOOT_CODE.read_bytes()[:440])
    qcow2 = workdir / "disk.qcow2"
    log.info("converting to qcow2")
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
    raw.unlink()
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


def _install_bootloader(root: Path, *, kernel: str, initrd: str, fs_uuid: str) -> None:
    log.info("installing extlinux")
    boot = root / "boot" / "extlinux"
    boot.mkdir(parents=True, exist_ok=True)
    _write(
        root,
        "/boot/extlinux/extlinux.conf",
        "DEFAULT debian\nPROMPT 0\nTIMEOUT 1\n\n"
        f"LABEL debian\n  LINUX /boot/{kernel}\n  INITRD /boot/{initrd}\n"
        f"  APPEND root=UUID={fs_uuid} {KERNEL_CMDLINE}\n",
        0o644,
    )
    _run(["extlinux", "--install", str(boot)])


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


def _check_tools() -> None:
    tools = ("debootstrap", "extlinux", "sfdisk", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount",
             "chroot", "qemu-img", "fstrim")
    missing = [t for t in tools if shutil.which(t) is None]
    if not MBR_BOOT_CODE.is_file():
        missing.append(f"{MBR_BOOT_CODE} (syslinux-common)")
    if missing:
        raise GuestBuildError(f"building the guest image needs {', '.join(missing)}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(root: Path, path: str, text: str, mode: int) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # never write through a symlink into the host
    target.write_text(text)
    target.chmod(mode)


def _run(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``argv``; return its stdout, or raise :class:`GuestBuildError` with its output."""
    log.debug("running %s", " ".join(argv))
    if log_file is not None:
        with log_file.open("w") as out:
            proc = subprocess.run(
                list(argv), input=input_text, stdout=out, stderr=subprocess.STDOUT, text=True,
                env=None if env is None else dict(env), check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            raise GuestBuildError(f"{argv[0]} failed (exit {proc.returncode}):\n{tail}")
        return ""
    proc = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True,
        env=None if env is None else dict(env), check=False,
    )
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
        raise GuestBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): {output}")
    return proc.stdout


def _chroot(root: Path, argv: Sequence[str]) -> str:
    return _run(["chroot", str(root), *argv], env=_CHROOT_ENV)


def _attach_loop(backing: Path, offset: int, size: int) -> str:
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), str(backing)]
    return _run(argv).strip()


def _detach_loop(device: str) -> None:
    try:
        _run(["losetup", "--detach", device])
    except GuestBuildError as exc:
        log.warning("could not detach %s: %s", device, exc)


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _umount_tree(path: Path) -> None:
    """Unmount everything mounted at or below ``path``; lazily if a plain umount fails."""
    for point in _mounts_under(path):
        try:
            _run(["umount", str(point)])
        except GuestBuildError as exc:
            log.warning("umount %s failed (%s); detaching lazily", point, exc)
            _run(["umount", "--lazy", str(point)])


def _loops_backed_by(directory: Path) -> list[str]:
    out = _run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])
    devices = []
    for line in out.splitlines():
        name, _, back = line.strip().partition(" ")
        back = back.strip().removesuffix(" (deleted)")
        if back.startswith(str(directory) + "/"):
            devices.append(name)
    return devices


def _remove_build_dir(workdir: Path) -> None:
    """Delete a build directory, releasing its mounts and loop devices first.

    Refuses to delete while anything is still mounted below it: ``rmtree``
    would descend into the mount.
    """
    _umount_tree(workdir)
    for device in _loops_backed_by(workdir):
        _detach_loop(device)
    if _mounts_under(workdir):
        log.error("not removing %s: something is still mounted below it", workdir)
        return
    shutil.rmtree(workdir, ignore_errors=True)


def _remove_stale_builds(cache: Path) -> None:
    """Remove build directories left by a builder that was killed (we hold the lock)."""
    for stale in cache.glob(".build-*"):
        log.warning("removing a stale build directory: %s", stale)
        _remove_build_dir(stale)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building a guest image; waiting for %s", lock_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or find) the default guest image and print its path; ``0`` on success."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print("usage: python3 -m vmpod.guests.debian   (no arguments; VMPOD_CACHE_DIR sets the cache)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        path = build_debian_cloud_guest()
    except VmpodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
