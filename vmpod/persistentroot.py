"""A persistent root disk on a raw block device (a ``volumeDevices`` entry with ``devicePath: /``).

Virtlet's layout (``virtlet-behaviour.md`` 1.4, "Persistent rootfs"), kept byte for byte so that a
device Virtlet prepared is recognised:

* sector 0 (512 bytes) holds a header, big-endian: ``uint64`` magic :data:`MAGIC`
  (``0x263dbe52ba576702``), ``uint16`` version (:data:`VERSION`, 1), the 32-byte sha256 of the
  image written to the device; 42 bytes, the rest of the sector zero;
* the image, converted to raw, starts at sector 1 (:data:`OFFSET`); the guest sees the device
  from there to its end (``size`` = device size - 512, rounded down to 512 bytes).

:func:`plan_root` reads the header and the device size (no write): the image must be written when
the magic is missing or the header names another sha256; a device smaller than the image's
virtual size + 512 bytes is refused before anything is written.  :func:`write_root` writes it
crash-safely, unlike Virtlet (which wrote the new header first): the old header is cleared and
synced, then the image is written with ``qemu-img convert`` and synced, and the header naming
the image goes last (and is synced).  A crash in between leaves no header, so the next run
writes the image again; a header therefore always describes a complete image.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import Final

import attrs

from vmpod.errors import SpecError, VmpodError

__all__ = [
    "HEADER",
    "MAGIC",
    "OFFSET",
    "SECTOR",
    "VERSION",
    "PersistentRootError",
    "RootHeader",
    "RootPlan",
    "decode_header",
    "device_size",
    "encode_header",
    "plan_root",
    "read_header",
    "write_root",
]

#: Virtlet's magic number at the start of sector 0.
MAGIC: Final = 0x263DBE52BA576702
#: The header version vmpod (and Virtlet) writes.
VERSION: Final = 1
SECTOR: Final = 512
#: Where the image starts on the device (sector 1).
OFFSET: Final = SECTOR
#: magic, version, sha256: big-endian, 42 bytes (Go's ``binary.Write`` of Virtlet's struct).
HEADER: Final = struct.Struct(">QH32s")


class PersistentRootError(VmpodError):
    """The device cannot be read or written, or holds a header vmpod does not understand."""


@attrs.frozen
class RootHeader:
    """A decoded header: its version and the sha256 (hex) of the image it says the device holds."""

    version: int
    sha256: str


def encode_header(sha256: str) -> bytes:
    """The 512-byte sector 0 naming the image ``sha256`` (hex, with or without ``sha256:``)."""
    digest = bytes.fromhex(sha256.removeprefix("sha256:"))
    if len(digest) != 32:
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return HEADER.pack(MAGIC, VERSION, digest).ljust(SECTOR, b"\0")


def decode_header(sector: bytes) -> RootHeader | None:
    """The header in ``sector`` (the device's first bytes); ``None`` without Virtlet's magic."""
    if len(sector) < HEADER.size:
        return None
    magic, version, digest = HEADER.unpack_from(sector)
    if magic != MAGIC:
        return None
    return RootHeader(version=version, sha256=digest.hex())


def _open_error(device: Path, exc: OSError) -> PersistentRootError:
    return PersistentRootError(f"persistent root device {device}: {exc.strerror or exc}")


def device_size(device: Path) -> int:
    """Size in bytes of a block device (its end, as ``blockdev --getsize64``) or a regular file."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(device, exc) from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def read_header(device: Path) -> RootHeader | None:
    """The header of ``device``; ``None`` when it has none (or is shorter than a sector)."""
    try:
        with open(device, "rb", buffering=0) as stream:
            return decode_header(stream.read(SECTOR))
    except OSError as exc:
        raise _open_error(device, exc) from None


@attrs.frozen
class RootPlan:
    """What :func:`plan_root` found: the device, what the guest sees of it, and whether to write.

    :param volume: the pod volume (for messages).
    :param device: the device (symlinks resolved).
    :param block: True for a block device, False for a regular file.
    :param device_size: the device's size in bytes.
    :param image_sha256: the image's sha256 (hex).
    :param write: the image must be written (no header, or one naming another image).
    """

    volume: str
    device: str
    block: bool
    device_size: int
    image_sha256: str
    write: bool

    @property
    def offset(self) -> int:
        """Where the guest's disk starts on the device."""
        return OFFSET

    @property
    def size(self) -> int:
        """The guest disk's size: the device after the header sector, in whole sectors."""
        return (self.device_size - OFFSET) // SECTOR * SECTOR


def plan_root(volume: str, device: str, *, image_digest: str, virtual_size: int, where: str) -> RootPlan:
    """Read ``device``'s header and size; decide whether the image must be written (nothing is written).

    :param volume: the pod volume the device comes from.
    :param image_digest: the image's digest (``sha256:<hex>``).
    :param virtual_size: the image's virtual size in bytes.
    :param where: the manifest field to name in a :class:`SpecError`.
    :raises SpecError: the device is not a block device or file, or is too small for the image.
    :raises PersistentRootError: the device cannot be read, or its header (for this image) has a
        version other than 1 (Virtlet's "unsupported virtlet root device metadata version").
    """
    real = Path(os.path.realpath(device))
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise SpecError(where, f"the persistent root device of volume {volume!r} cannot be used: "
                        f"{exc.strerror}", value=device) from None
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise SpecError(where, f"the persistent root of volume {volume!r} is not a block device or a file",
                        value=device, accepted="a block device")
    sha = image_digest.removeprefix("sha256:")
    size = device_size(real)
    needed = -(-virtual_size // SECTOR) * SECTOR + OFFSET
    if size < needed:
        raise SpecError(where, f"the block device of volume {volume!r} is too small for the image: "
                        f"{size} bytes, the image needs {virtual_size} bytes + a {OFFSET}-byte header = "
                        f"{needed} bytes", value=device, accepted=f"a device of at least {needed} bytes")
    header = read_header(real)
    write = header is None or header.sha256 != sha
    if header is not None and not write and header.version != VERSION:
        raise PersistentRootError(f"persistent root device {device} (volume {volume!r}): unsupported root "
                                  f"device header version {header.version} (vmpod reads version {VERSION})")
    return RootPlan(volume=volume, device=str(real), block=stat.S_ISBLK(mode), device_size=size,
                    image_sha256=sha, write=write)


def _write_sector0(device: str, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(f"short write of the header sector of {device}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(device: str) -> None:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _escape(value: str) -> str:
    return value.replace(",", ",,")


def write_root(plan: RootPlan, image: Path, image_format: str, *, qemu_img: str = "qemu-img") -> bool:
    """Write ``image`` to the device when ``plan`` says so; True when it was written.

    Order (crash-safe): clear the header, sync; ``qemu-img convert`` the image to raw at
    :data:`OFFSET`, sync; write the header, sync.

    :param image_format: ``qcow2`` or ``raw``.
    :raises PersistentRootError: a write or ``qemu-img`` failed (the device then has no header).
    """
    if not plan.write:
        return False
    driver = "host_device" if plan.block else "file"
    target = ",".join(["driver=raw", f"offset={OFFSET}", f"size={plan.size}", f"file.driver={driver}",
                       f"file.filename={_escape(plan.device)}"])
    argv = [qemu_img, "convert", "-q", "-n", "-f", image_format, "-t", "writeback", "--target-image-opts",
            str(image), target]
    try:
        _write_sector0(plan.device, b"\0" * SECTOR)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
            raise PersistentRootError(f"writing the image to the persistent root device {plan.device} "
                                      f"(volume {plan.volume!r}) failed: {message}")
        _sync(plan.device)
        _write_sector0(plan.device, encode_header(plan.image_sha256))
    except OSError as exc:
        raise PersistentRootError(f"persistent root device {plan.device} (volume {plan.volume!r}): "
                                  f"{exc.strerror or exc}") from None
    return True
