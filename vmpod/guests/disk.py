"""Shared steps for building bootable guest disk images, and the build cache they live in.

A guest builder prepares a directory tree (a root file system, or just
``/boot``), then :func:`make_boot_disk` turns it into a disk image a BIOS
boots: an MBR with syslinux's boot code, one bootable partition with an ext4
file system made from the directory (copied in without holes), and extlinux in
``/boot/extlinux`` starting the kernel with the given command line.  A builder
that installs straight into the file system (``debootstrap``) uses the steps
underneath instead: :func:`boot_disk` (the disk, its file system mounted while
the ``with`` block runs) and :func:`install_extlinux`.  Partition
nodes do not appear for loop devices in every environment, so the partition is
reached through a loop device over its byte range (``losetup --offset
--sizelimit``).

:func:`cached_build` is the cache protocol every builder follows: the result is
a file named after a hash of the build's inputs in a cache directory outside
the repository; one build at a time holds an ``fcntl`` lock, works in a
temporary directory inside the cache and renames the finished file into place,
so a reader never sees a partial image and a failed or killed build leaves
nothing behind (the next build removes what a killed one left).

Building needs root (loop devices, mount) and ``util-linux`` (``sfdisk``,
``losetup``, ``mount``), ``e2fsprogs``, ``extlinux``, ``syslinux-common``
(``mbr.bin``) and ``qemu-utils`` (``qemu-img``).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from vmpod.durable import fsync_directory
from vmpod.errors import VmpodError
from vmpod.images import sha256_file

__all__ = [
    "DISK_TOOLS",
    "MBR_BOOT_CODE",
    "PARTITION_OFFSET",
    "BootEntry",
    "GuestBuildError",
    "attach_loop",
    "boot_disk",
    "cached_build",
    "check_tools",
    "default_cache_dir",
    "detach_loop",
    "file_digest",
    "guest_main",
    "inputs_key",
    "install_extlinux",
    "make_boot_disk",
    "run",
    "umount_tree",
]

log = logging.getLogger(__name__)

#: syslinux's MBR boot code (package ``syslinux-common``): it boots the active partition.
MBR_BOOT_CODE: Final = Path("/usr/lib/syslinux/mbr/mbr.bin")
#: Where the one partition starts (1 MiB, the usual alignment).
PARTITION_OFFSET: Final = 1024**2
#: The tools :func:`make_boot_disk` runs (:func:`boot_disk` and :func:`install_extlinux` need all but ``cp``).
DISK_TOOLS: Final = ("cp", "sfdisk", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "extlinux", "qemu-img")


class GuestBuildError(VmpodError):
    """Building a guest image failed; the message says which step and why."""


@attrs.frozen
class BootEntry:
    """What extlinux boots: paths inside the partition and the kernel command line.

    :param serial: also make extlinux talk on the first serial port (its banner is then
        the guest's first console line).
    :param timeout: extlinux's ``TIMEOUT``, in tenths of a second.
    """

    kernel: str
    initrd: str | None
    append: str
    label: str = "linux"
    serial: bool = True
    timeout: int = 0

    def extlinux_conf(self) -> str:
        """The text of ``extlinux.conf`` for this entry (no menu, no wait)."""
        lines = []
        if self.serial:
            lines.append("SERIAL 0 115200")
        lines += [f"DEFAULT {self.label}", "PROMPT 0", f"TIMEOUT {self.timeout}", "", f"LABEL {self.label}",
                  f"  LINUX {self.kernel}"]
        if self.initrd:
            lines.append(f"  INITRD {self.initrd}")
        lines.append(f"  APPEND {self.append}")
        return "\n".join(lines) + "\n"


def default_cache_dir() -> Path:
    """``$VMPOD_CACHE_DIR/guests``, else ``$XDG_CACHE_HOME/vmpod/guests`` (``~/.cache``)."""
    env = os.environ.get("VMPOD_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "guests"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vmpod" / "guests"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), for cache keys that depend on a tool's exact build."""
    return sha256_file(path).removeprefix("sha256:")


def inputs_key(inputs: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able build inputs (the cache key)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_build(
    cache_dir: Path,
    filename: str,
    build: Callable[[Path], Path],
    *,
    lock_name: str,
    work_prefix: str,
) -> Path:
    """Return ``cache_dir/filename``, calling ``build(workdir)`` first when it does not exist.

    ``build`` gets an empty temporary directory inside ``cache_dir`` and returns the finished
    file, somewhere inside that directory; it is renamed to ``filename`` (same file system, so
    atomically) and the directory is removed, on success and on failure.  ``lock_name`` (a file
    in ``cache_dir``) serialises builders; ``work_prefix`` names the temporary directories, so
    that leftovers of a killed build of the same kind are recognised and removed.  Builders of
    different kinds sharing a cache directory must use different lock names and prefixes.
    """
    cache = cache_dir.resolve() if cache_dir.exists() else cache_dir.absolute()
    final = cache / filename
    if final.is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / lock_name):
        if final.is_file():  # another process built it while we waited
            log.info("guest image built by another process: %s", final)
            return final
        for stale in cache.glob(f"{work_prefix}*"):
            log.warning("removing a stale build directory: %s", stale)
            _remove_build_dir(stale)
        workdir = Path(tempfile.mkdtemp(prefix=work_prefix, dir=cache))
        try:
            result = build(workdir)
            with result.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(result, final)
            fsync_directory(cache)
        finally:
            _remove_build_dir(workdir)
    return final


def make_boot_disk(
    dest: Path,
    root: Path,
    *,
    size: int,
    boot: BootEntry,
    fs_label: str,
    fs_uuid: str,
    output_format: str = "qcow2",
) -> None:
    """Write a bootable disk image of ``size`` bytes to ``dest`` from the directory ``root``.

    The image has an MBR (syslinux ``mbr.bin``) and one bootable Linux partition starting at
    1 MiB that holds an ext4 file system with a copy of ``root`` (owners, modes, links kept), labelled ``fs_label`` with
    UUID ``fs_uuid``, plus extlinux in ``/boot/extlinux`` configured by ``boot``.
    ``output_format`` is ``raw`` or ``qcow2`` (converted with ``qemu-img``).  Scratch files go
    next to ``dest``; loop devices and mounts are released whatever happens.

    :raises GuestBuildError: when a tool is missing or a step fails.
    """
    check_tools(DISK_TOOLS)
    with boot_disk(dest, size=size, fs_label=fs_label, fs_uuid=fs_uuid, output_format=output_format) as mount_point:
        # Not ``mkfs.ext4 -d``: it keeps runs of zeros as holes, and syslinux cannot load a
        # kernel with holes ("I/O error").  ``cp --sparse=never`` writes every block.
        run(["cp", "-a", "--sparse=never", f"{root}/.", str(mount_point)])
        install_extlinux(mount_point, boot)


@contextlib.contextmanager
def boot_disk(
    dest: Path,
    *,
    size: int,
    fs_label: str,
    fs_uuid: str,
    output_format: str = "qcow2",
) -> Iterator[Path]:
    """Make the disk of :func:`make_boot_disk` and yield its file system, empty and mounted.

    The caller fills the file system (and calls :func:`install_extlinux`) in the ``with``
    block.  When the block ends normally, everything mounted at or below the mount point is
    unmounted, the file system checked, the MBR boot code written and, for ``qcow2``, the
    image converted to ``dest``; when it raises, the mounts and the loop device are released
    and nothing more is done.  Scratch files (the raw image, the mount point) go next to ``dest``.

    :raises GuestBuildError: when a step fails.
    """
    if output_format not in ("raw", "qcow2"):
        raise GuestBuildError(f"unknown disk format {output_format!r}: use raw or qcow2")
    raw = dest if output_format == "raw" else dest.with_name(dest.name + ".raw")
    mount_point = dest.with_name(dest.name + ".mnt")
    with raw.open("wb") as f:
        f.truncate(size)
    run(["sfdisk", "--quiet", str(raw)],
        input_text=f"label: dos\nstart={PARTITION_OFFSET // 512}, type=83, bootable\n")
    with contextlib.ExitStack() as stack:
        loop = attach_loop(raw, PARTITION_OFFSET, size - PARTITION_OFFSET)
        stack.callback(detach_loop, loop)
        # ^64bit: a file system below 16 TiB does not need it and syslinux 6.04 cannot boot from one.
        run(["mkfs.ext4", "-q", "-F", "-L", fs_label, "-U", fs_uuid, "-O", "^64bit", loop])
        mount_point.mkdir()
        stack.callback(mount_point.rmdir)
        run(["mount", loop, str(mount_point)])
        stack.callback(umount_tree, mount_point)
        yield mount_point
        umount_tree(mount_point)
        run(["e2fsck", "-f", "-p", loop])
    with raw.open("r+b") as f:
        f.write(MBR_BOOT_CODE.read_bytes()[:440])
    if output_format == "qcow2":
        log.info("converting to qcow2")
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest)])
        raw.unlink()


def install_extlinux(root: Path, boot: BootEntry) -> None:
    """Write ``root/boot/extlinux/extlinux.conf`` for ``boot`` and install extlinux there.

    ``root`` is the mounted file system of :func:`boot_disk`.
    """
    extlinux_dir = root / "boot" / "extlinux"
    extlinux_dir.mkdir(parents=True, exist_ok=True)
    (extlinux_dir / "extlinux.conf").write_text(boot.extlinux_conf())
    run(["extlinux", "--install", str(extlinux_dir)])


def guest_main(build: Callable[[], Path], module: str, argv: Sequence[str] | None = None) -> int:
    """The ``python3 -m <module>`` entry point of a guest builder: ``build()``, print the path.

    Takes no arguments (``2`` and a usage line if given some); ``1`` when the build fails.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(f"usage: python3 -m {module}   (no arguments; VMPOD_CACHE_DIR sets the cache)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        path = build()
    except VmpodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


# -- tools ---------------------------------------------------------------------------------


def check_tools(tools: Sequence[str]) -> None:
    """Raise :class:`GuestBuildError` naming every missing tool (and ``mbr.bin``)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not MBR_BOOT_CODE.is_file():
        missing.append(f"{MBR_BOOT_CODE} (syslinux-common)")
    if missing:
        raise GuestBuildError(f"building a guest image needs {', '.join(missing)}")


def run(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
) -> str:
    """Run ``argv`` (no shell); return its stdout, or raise :class:`GuestBuildError` with its output.

    With ``log_file``, stdout and stderr go to that file instead (for long, chatty steps),
    ``""`` is returned and the error carries the file's last 30 lines.
    """
    log.debug("running %s", " ".join(argv))
    try:
        if log_file is not None:
            with log_file.open("w") as out:
                proc = subprocess.run(
                    list(argv), input=input_text, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                    env=None if env is None else dict(env), check=False,
                )
        else:
            proc = subprocess.run(
                list(argv), input=input_text, capture_output=True, text=True, cwd=cwd,
                env=None if env is None else dict(env), check=False,
            )
    except OSError as exc:
        raise GuestBuildError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        if log_file is not None:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            raise GuestBuildError(f"{argv[0]} failed (exit {proc.returncode}):\n{tail}")
        output = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
        raise GuestBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): {output}")
    return proc.stdout if log_file is None else ""


def attach_loop(backing: Path, offset: int, size: int) -> str:
    """Attach a loop device over ``size`` bytes of ``backing`` from ``offset``; return its path."""
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), str(backing)]
    return run(argv).strip()


def detach_loop(device: str) -> None:
    """Detach a loop device; a failure is logged, not raised (cleanup path)."""
    try:
        run(["losetup", "--detach", device])
    except GuestBuildError as exc:
        log.warning("could not detach %s: %s", device, exc)


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path)
    found: set[Path] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.add(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def umount_tree(path: Path) -> None:
    """Unmount everything mounted at or below ``path``; lazily if a plain umount fails."""
    for point in _mounts_under(path):
        try:
            run(["umount", str(point)])
        except GuestBuildError as exc:
            log.warning("umount %s failed (%s); detaching lazily", point, exc)
            run(["umount", "--lazy", str(point)])


def _loops_backed_by(directory: Path) -> list[str]:
    out = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])
    devices = []
    for line in out.splitlines():
        name, _, back = line.strip().partition(" ")
        back = back.strip().removesuffix(" (deleted)")
        if back.startswith(str(directory) + "/"):
            devices.append(name)
    return devices


def _remove_build_dir(workdir: Path) -> None:
    """Delete a build directory, releasing its mounts and loop devices first.

    Refuses to delete while anything is still mounted below it (``rmtree`` would descend
    into the mount).
    """
    umount_tree(workdir)
    if shutil.which("losetup"):
        for device in _loops_backed_by(workdir):
            detach_loop(device)
    if _mounts_under(workdir):
        log.error("not removing %s: something is still mounted below it", workdir)
        return
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building this guest image; waiting for %s", lock_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
