"""vmpod's built-in volume handlers (a built-in plugin, registered first).

How each pod volume kind becomes part of the machine:

=========================  ===============================================================
volume                     in the machine
=========================  ===============================================================
``emptyDir``               a fresh host directory in the pod's work dir, shared over 9p
                           (as Virtlet did: no formatting needed, any guest kernel with 9p
                           mounts it; ``medium: Memory`` and ``sizeLimit`` are not applied)
``hostPath`` directory     the directory, shared over 9p (``DirectoryOrCreate`` creates it)
``hostPath`` in            the file or block device as a raw disk
``volumeDevices``
PVC, ``volumeMode: Block``  the bound PV's ``local``/``hostPath`` path as a raw disk
PVC, filesystem            the bound PV's ``local``/``hostPath`` directory, shared over 9p
flexVolume ``qcow2``       a blank qcow2 disk of ``capacity`` in the pod's work dir (Virtlet
                           formatted it on the host with libguestfs; vmpod's seed has the guest
                           partition and format it on first boot: cloud-init ``disk_setup`` and
                           ``fs_setup``, see :mod:`vmpod.cloudinit.generate`)
flexVolume ``raw``         the host block device ``path`` (under ``/dev/``) as a raw disk
flexVolume ``ceph``        refused: deprecated in Virtlet, not supported
``configMap``/``secret``   nothing here: cloud-init writes their files in the guest
=========================  ===============================================================

Directory volumes are shared only when the container mounts them; disks are
attached whether mounted or not (Virtlet attached every flexvolume).  A
handler's :class:`~vmpod.machine.Filesystem` names the host directory; the
runtime's machine builder shares it once per ``volumeMounts`` entry, with
the tags and disk serials of :func:`vmpod.cloudinit.disks.default_disk_map`
(so the seed mounts exactly what the backend attaches).  Every handler is
idempotent: ``attach`` after a crash finds its files and re-uses
them; ``detach`` of something already gone succeeds.  Handlers create files
only under ``context.work_dir``, which the runtime records before calling them
and removes with the pod; user data (host paths, PVs, devices) is never
deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from vmpod import qcow2
from vmpod._markers import hookimpl
from vmpod.errors import SpecError
from vmpod.hookspecs import VolumeAttachment, VolumeContext, VolumeHandlerSpec
from vmpod.machine import Disk, DiskFormat, DiskRole, Filesystem, FilesystemDriver
from vmpod.model import (
    CephFlexOptions,
    ConfigMapVolume,
    EmptyDirVolume,
    FlexVolume,
    HostPathVolume,
    PersistentVolumeClaimVolume,
    Qcow2FlexOptions,
    RawFlexOptions,
    SecretVolume,
)

__all__ = [
    "EmptyDirHandler",
    "FlexVolumeHandler",
    "HostPathHandler",
    "NoAttachmentHandler",
    "PersistentVolumeClaimHandler",
    "ninep_tag",
    "vmpod_volume_handlers",
]

_MAX_TAG = 31  # virtio-9p mount tags are limited to 31 bytes


def ninep_tag(volume_name: str) -> str:
    """The 9p mount tag of a volume: its name, or a shortened name plus a hash when too long."""
    if len(volume_name) <= _MAX_TAG:
        return volume_name
    digest = hashlib.sha256(volume_name.encode()).hexdigest()[:8]
    return f"{volume_name[: _MAX_TAG - 9]}-{digest}"


def _where(context: VolumeContext, field: str = "") -> str:
    index = next((i for i, v in enumerate(context.pod.volumes) if v.name == context.volume.name), 0)
    path = f"spec.volumes[{index}]"
    return f"{path}.{field}" if field else path


def _shared_dir(context: VolumeContext, source: Path) -> Filesystem:
    read_only = all(m.read_only for m in context.mounts)
    return Filesystem(tag=ninep_tag(context.volume.name), source=str(source), read_only=read_only,
                      driver=FilesystemDriver.NINEP)


def _device_disk(context: VolumeContext, path: str, where: str, *, read_only: bool = False) -> Disk:
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise SpecError(where, "no such file or block device on this node", value=path) from None
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise SpecError(where, "not a block device or a file", value=path,
                        accepted="a block device or a disk image file")
    return Disk(name=context.volume.name, path=real, format=DiskFormat.RAW, role=DiskRole.VOLUME,
                read_only=read_only, block=stat.S_ISBLK(mode))


class NoAttachmentHandler:
    """``configMap`` and ``secret``: delivered by cloud-init, nothing to attach."""

    def attach(self, context: VolumeContext) -> VolumeAttachment:
        """Nothing to attach."""
        return VolumeAttachment()

    def detach(self, context: VolumeContext) -> None:
        """Nothing to remove."""


class EmptyDirHandler:
    """``emptyDir``: a fresh directory in the pod's work dir, shared over 9p when mounted."""

    def attach(self, context: VolumeContext) -> VolumeAttachment:
        """Create ``<work_dir>/data`` and share it."""
        if not context.mounts:
            return VolumeAttachment()
        data = context.work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return VolumeAttachment(filesystems=(_shared_dir(context, data),))

    def detach(self, context: VolumeContext) -> None:
        """Nothing beyond the work dir, which the runtime removes."""


class HostPathHandler:
    """``hostPath``: a directory shared over 9p, or (in ``volumeDevices``) a file or device as a disk."""

    def attach(self, context: VolumeContext) -> VolumeAttachment:
        """Check the host path and describe it."""
        volume = context.volume
        assert isinstance(volume, HostPathVolume)
        where = _where(context, "hostPath.path")
        disks: tuple[Disk, ...] = ()
        filesystems: tuple[Filesystem, ...] = ()
        if context.devices:
            disks = (_device_disk(context, volume.path, where),)
        if context.mounts:
            path = Path(volume.path)
            if volume.type == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            if not path.is_dir():
                raise SpecError(where, "not a directory on this node", value=volume.path,
                                accepted="an existing directory (or type DirectoryOrCreate); "
                                         "files and devices go in volumeDevices")
            filesystems = (_shared_dir(context, path),)
        return VolumeAttachment(disks=disks, filesystems=filesystems)

    def detach(self, context: VolumeContext) -> None:
        """Nothing: the host path is the user's."""


class PersistentVolumeClaimHandler:
    """A claim bound to a ``local``/``hostPath`` PV of the same input: a raw disk or a 9p directory."""

    def attach(self, context: VolumeContext) -> VolumeAttachment:
        """Find the PV's path and describe it."""
        volume = context.volume
        assert isinstance(volume, PersistentVolumeClaimVolume)
        if not context.devices and not context.mounts:
            return VolumeAttachment()
        where = _where(context, "persistentVolumeClaim.claimName")
        pv = volume.persistent_volume
        if pv is None or not pv.path:
            raise SpecError(where, "the claim's bound PersistentVolume is not in the input (or has no path)",
                            value=volume.claim_name,
                            accepted="a PVC bound to a local or hostPath PersistentVolume given in the same input")
        if context.devices:
            return VolumeAttachment(disks=(_device_disk(context, pv.path, where, read_only=volume.read_only),))
        path = Path(pv.path)
        if not path.is_dir():
            raise SpecError(where, "the PersistentVolume's path is not a directory on this node", value=pv.path,
                            accepted="a directory (or use volumeMode: Block with volumeDevices)")
        return VolumeAttachment(filesystems=(_shared_dir(context, path),))

    def detach(self, context: VolumeContext) -> None:
        """Nothing: a persistent volume keeps its data."""


class FlexVolumeHandler:
    """Virtlet's ``virtlet/flexvolume_driver`` volumes: ``qcow2`` (ephemeral disk) and ``raw`` (host device)."""

    def attach(self, context: VolumeContext) -> VolumeAttachment:
        """Create the ephemeral disk (once) or check the device."""
        volume = context.volume
        assert isinstance(volume, FlexVolume)
        options = volume.options
        if isinstance(options, Qcow2FlexOptions):
            disk = context.work_dir / "disk.qcow2"
            if not disk.exists():
                context.work_dir.mkdir(parents=True, exist_ok=True)
                # No fsync here: the runtime syncs the filesystem once before the machine is created.
                qcow2.write_blank(disk, -(-options.capacity // 512) * 512, sync=False)
            return VolumeAttachment(disks=(Disk(name=volume.name, path=str(disk), format=DiskFormat.QCOW2,
                                                role=DiskRole.VOLUME),))
        if isinstance(options, RawFlexOptions):
            where = _where(context, "flexVolume.options.path")
            if not options.path.startswith("/dev/"):
                raise SpecError(where, "a raw flexvolume must be a device under /dev/", value=options.path)
            found = _device_disk(context, options.path, where)
            if not found.block:
                raise SpecError(where, "not a block device", value=options.path)
            return VolumeAttachment(disks=(found,))
        assert isinstance(options, CephFlexOptions)
        raise SpecError(_where(context, "flexVolume.options.type"), "ceph flexvolumes are not supported",
                        value="ceph", accepted="qcow2 or raw")

    def detach(self, context: VolumeContext) -> None:
        """Remove the ephemeral disk."""
        with contextlib.suppress(FileNotFoundError):
            (context.work_dir / "disk.qcow2").unlink()


@hookimpl
def vmpod_volume_handlers() -> Iterator[VolumeHandlerSpec]:
    """vmpod's handlers for every volume kind of :mod:`vmpod.model`."""
    yield VolumeHandlerSpec(name="empty-dir", volume_type=EmptyDirVolume, handler=EmptyDirHandler())
    yield VolumeHandlerSpec(name="host-path", volume_type=HostPathVolume, handler=HostPathHandler())
    yield VolumeHandlerSpec(name="persistent-volume-claim", volume_type=PersistentVolumeClaimVolume,
                            handler=PersistentVolumeClaimHandler())
    yield VolumeHandlerSpec(name="flex-volume", volume_type=FlexVolume, handler=FlexVolumeHandler())
    yield VolumeHandlerSpec(name="config-map", volume_type=ConfigMapVolume, handler=NoAttachmentHandler())
    yield VolumeHandlerSpec(name="secret", volume_type=SecretVolume, handler=NoAttachmentHandler())
