"""Where a pod's volumes show up inside the guest: the disk map.

The seed needs to name, from inside the guest, the disks and shared
directories that the backend attaches: in ``mounts``, in the block-device
symlinks and in the mount scripts.  A :class:`DiskMap` says, for each volume
that becomes a disk, its bus, serial number and stable device path, and for
each directory mount (9p), its mount tag.  Backends attach disks with exactly
these serials and tags; :func:`default_disk_map` computes the map vmpod's
backends use.

Disks are found by **serial number**, not by PCI address as Virtlet did
(``/dev/disk/by-path/virtio-pci-0000:00:03.0-scsi-0:0:0:1``), so the map does
not depend on where a hypervisor puts its controllers:

* a disk's serial is its volume name (a DNS label, at most 20 characters), or
  the first 11 characters plus ``-`` and 8 hex digits of its SHA-256 when the
  name is longer (virtio-blk serials hold 20 bytes);
* with udev the guest has ``/dev/disk/by-id/virtio-<serial>`` (virtio-blk)
  or ``/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>`` (a QEMU SCSI disk
  on virtio-scsi); partition ``N`` is that path plus ``-partN``.  These paths
  go into cloud-init ``mounts`` and are the targets of the block symlinks;
* without udev (CirrOS' busybox), the generated scripts read the serial from
  sysfs: ``/sys/block/*/serial`` for virtio-blk, the unit serial number VPD
  page ``/sys/block/*/device/vpd_pg80`` for SCSI (see :mod:`vmpod.cloudinit.scripts`).

The disk order is Virtlet's: the root disk, then the block ``volumeDevices``
other than ``/`` in container order, then every Virtlet flexvolume of the pod
sorted by name (attached even when no container mounts it), then the seed
CD-ROM, always last.  A pod may have at most 26 disks on ``scsi`` and 21 on
``virtio`` (``sda``..``sdz``, ``vda``..``vdu``), the seed included.

Directory volumes (``emptyDir``, ``hostPath`` directories, ``Filesystem``
claims) are shared over 9p, one share per ``volumeMounts`` entry: tag
``m<index>-<volume name>`` cut to 31 bytes (QEMU's limit), unique by
construction.
"""

from __future__ import annotations

import hashlib

import attrs

from vmpod.errors import SpecError
from vmpod.model import (
    DiskDriver,
    EmptyDirVolume,
    FlexVolume,
    HostPathVolume,
    PersistentVolumeClaimVolume,
    VMPod,
)

__all__ = [
    "MAX_DISKS",
    "MAX_SERIAL_LEN",
    "MAX_TAG_LEN",
    "ROOT_SERIAL",
    "SEED_SERIAL",
    "DiskMap",
    "GuestDisk",
    "GuestFilesystem",
    "by_id_path",
    "data_disk_volumes",
    "default_disk_map",
    "disk_serial",
    "is_directory_volume",
]

#: Longest serial a virtio-blk disk can carry (``VIRTIO_BLK_ID_BYTES``).
MAX_SERIAL_LEN = 20
#: Longest 9p mount tag QEMU accepts.
MAX_TAG_LEN = 31
#: Disks per bus, root disk and seed CD-ROM included (``sda``..``sdz``, ``vda``..``vdu``).
MAX_DISKS = {DiskDriver.SCSI: 26, DiskDriver.VIRTIO: 21}
#: Serials for the root disk and the seed: ``_`` never occurs in a volume name, so they cannot clash.
ROOT_SERIAL = "vmpod_root"
SEED_SERIAL = "vmpod_seed"

# Directory hostPath types that can be shared (anything else is a file, socket or device).
_DIRECTORY_HOSTPATH_TYPES = ("", "Directory", "DirectoryOrCreate")


@attrs.frozen
class GuestDisk:
    """A disk of the pod as the guest sees it.

    :param volume: the pod volume the disk comes from.
    :param bus: ``scsi`` (virtio-scsi) or ``virtio`` (virtio-blk).
    :param serial: the serial number the backend gives the disk.
    :param path: the disk's stable path in a guest with udev (``/dev/disk/by-id/...``).
    """

    volume: str
    bus: DiskDriver
    serial: str
    path: str

    def partition_path(self, partition: int) -> str:
        """``path`` for the whole disk (``partition`` 0), else the udev path of partition ``partition``."""
        return self.path if partition == 0 else f"{self.path}-part{partition}"


@attrs.frozen
class GuestFilesystem:
    """A host directory shared with the guest over 9p for one ``volumeMounts`` entry.

    :param mount_index: index of the entry in the container's ``volumeMounts``.
    :param volume: the pod volume.
    :param tag: the 9p mount tag.
    :param sub_path: the entry's ``subPath`` (the backend shares that subdirectory).
    """

    mount_index: int
    volume: str
    tag: str
    sub_path: str = ""


@attrs.frozen
class DiskMap:
    """The guest view of every disk and shared directory of a pod."""

    disks: tuple[GuestDisk, ...] = ()
    filesystems: tuple[GuestFilesystem, ...] = ()

    def disk(self, volume: str) -> GuestDisk | None:
        """The disk of volume ``volume``, or None."""
        return next((d for d in self.disks if d.volume == volume), None)

    def filesystem(self, mount_index: int) -> GuestFilesystem | None:
        """The share of ``volumeMounts[mount_index]``, or None."""
        return next((f for f in self.filesystems if f.mount_index == mount_index), None)


def disk_serial(volume: str) -> str:
    """The serial number of the disk made from ``volume`` (see the module docstring)."""
    if len(volume) <= MAX_SERIAL_LEN:
        return volume
    digest = hashlib.sha256(volume.encode()).hexdigest()[:8]
    return f"{volume[:MAX_SERIAL_LEN - 9]}-{digest}"


def by_id_path(bus: DiskDriver, serial: str) -> str:
    """The udev ``/dev/disk/by-id`` path of a disk with ``serial`` on ``bus`` under QEMU."""
    if bus is DiskDriver.VIRTIO:
        return f"/dev/disk/by-id/virtio-{serial}"
    return f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{serial}"


def is_directory_volume(volume: object) -> bool:
    """True for volumes shared as a directory (9p): emptyDir, hostPath directories, Filesystem claims."""
    if isinstance(volume, EmptyDirVolume):
        return True
    if isinstance(volume, HostPathVolume):
        return volume.type in _DIRECTORY_HOSTPATH_TYPES
    if isinstance(volume, PersistentVolumeClaimVolume):
        return volume.volume_mode != "Block"
    return False


def data_disk_volumes(pod: VMPod) -> tuple[str, ...]:
    """Names of the volumes attached as disks, in disk order (after the root disk)."""
    names = [d.name for d in pod.container.volume_devices if d.device_path != "/"]
    names += sorted(v.name for v in pod.volumes if isinstance(v, FlexVolume))
    return tuple(dict.fromkeys(names))


def _tag(index: int, volume: str) -> str:
    prefix = f"m{index}-"
    return prefix + volume[: MAX_TAG_LEN - len(prefix)]


def default_disk_map(pod: VMPod) -> DiskMap:
    """The disk map of ``pod`` as vmpod's backends attach it (serials from volume names, QEMU by-id paths).

    :raises SpecError: when the pod has more disks than its bus allows.
    """
    bus = pod.vm.disk_driver
    names = data_disk_volumes(pod)
    total = len(names) + 2  # the root disk and the seed
    if total > MAX_DISKS[bus]:
        raise SpecError("spec.volumes", f"too many {bus.value} block devices: {total} disks with the root "
                        "disk and the cloud-init seed", value=list(names),
                        accepted=f"at most {MAX_DISKS[bus]} disks on the {bus.value} bus")
    disks = tuple(GuestDisk(volume=name, bus=bus, serial=disk_serial(name),
                            path=by_id_path(bus, disk_serial(name))) for name in names)
    filesystems = tuple(
        GuestFilesystem(mount_index=index, volume=mount.name, tag=_tag(index, mount.name), sub_path=mount.sub_path)
        for index, mount in enumerate(pod.container.volume_mounts)
        if is_directory_volume(pod.volume(mount.name))
    )
    return DiskMap(disks=disks, filesystems=filesystems)
