"""The resolved, hypervisor-neutral description of one VM.

A :class:`Machine` is everything a backend needs to realise a VM pod: the
runtime builds it from a :class:`~vmpod.model.VMPod` once the image is
pulled, the root overlay, volumes and seed ISO exist.  Backends never read
annotations or manifests.  Domain XML and qemu argv are pure functions of a
``Machine``, so they can be golden-tested.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from uuid import UUID

import attrs

from vmpod.model import CPUModel, DiskDriver, LibvirtCPU

__all__ = [
    "MARKER_LABEL",
    "CPUTune",
    "Disk",
    "DiskFormat",
    "DiskRole",
    "Filesystem",
    "FilesystemDriver",
    "Machine",
    "NetworkMode",
    "Nic",
    "PortForward",
]

#: Label every machine vmpod creates carries; garbage collection only ever touches machines with it.
MARKER_LABEL = "vmpod.io/managed"


class DiskRole(enum.StrEnum):
    """Why a disk is attached."""

    ROOT = "root"
    VOLUME = "volume"
    SEED = "seed"


class DiskFormat(enum.StrEnum):
    """On-disk format of a disk's source."""

    QCOW2 = "qcow2"
    RAW = "raw"


class FilesystemDriver(enum.StrEnum):
    """How a host directory is shared with the guest."""

    NINEP = "9p"
    VIRTIOFS = "virtiofs"


class NetworkMode(enum.StrEnum):
    """``user``: user-mode networking (no root); ``tap``: a tap device made by CNI in the pod's netns."""

    USER = "user"
    TAP = "tap"


@attrs.frozen
class Disk:
    """One disk, in the order the guest sees them.

    :param name: the pod volume it comes from (``root`` and ``seed`` for those roles).
    :param path: host file or block device.
    :param block: True when ``path`` is a block device rather than a file.
    :param cdrom: attach as a CD-ROM (the seed).
    :param serial: the disk serial the guest sees (stable ``/dev/disk/by-id`` links).
    :param offset: where the guest's disk starts in ``path``, in bytes (a persistent root device
        keeps a header in its first sector, :mod:`vmpod.persistentroot`); a multiple of 512.
    :param size: how many bytes from ``offset`` the guest sees (a multiple of 512); ``None``: to the end.
    """

    name: str
    path: str
    format: DiskFormat
    role: DiskRole
    read_only: bool = False
    block: bool = False
    cdrom: bool = False
    serial: str = ""
    offset: int = 0
    size: int | None = None


@attrs.frozen
class Filesystem:
    """A host directory shared with the guest, mounted there by ``tag``."""

    tag: str
    source: str
    read_only: bool = False
    driver: FilesystemDriver = FilesystemDriver.NINEP


@attrs.frozen
class PortForward:
    """A host port forwarded to a guest port (user-mode networking); the host side is always loopback."""

    guest_port: int
    host_port: int
    protocol: str = "tcp"
    host_address: str = "127.0.0.1"


@attrs.frozen
class Nic:
    """A network interface of the guest."""

    mac: str
    mode: NetworkMode = NetworkMode.USER
    mtu: int | None = None
    tap: str | None = None
    netns: str | None = None
    forwards: tuple[PortForward, ...] = ()


@attrs.frozen
class CPUTune:
    """CFS bandwidth and shares from the container's CPU resources (quota already per vCPU)."""

    shares: int = 0
    period: int = 0
    quota: int = 0


@attrs.frozen
class Machine:
    """A fully resolved VM.

    :param name: the backend-level name (unique per node).
    :param uuid: the machine UUID (``VirtletSystemUUID`` when set, else derived from the pod UID).
    :param labels: identity of the owning pod plus :data:`MARKER_LABEL`; backends store them with
        the machine so that ``list()`` can tell vmpod's machines from others.
    :param serial_log: file the serial console is appended to, as CRI log lines.
    :param runtime_dir: a directory the backend may use for this machine's own files
        (pidfile, monitor socket); the runtime removes it on delete.
    """

    name: str
    uuid: UUID
    memory_bytes: int
    vcpus: int
    disk_bus: DiskDriver
    disks: tuple[Disk, ...]
    serial_log: str
    runtime_dir: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    filesystems: tuple[Filesystem, ...] = ()
    nics: tuple[Nic, ...] = ()
    cpu_model: CPUModel | None = None
    libvirt_cpu: LibvirtCPU | None = None
    cpu_tune: CPUTune | None = None
    smbios_uuid: UUID | None = None
    vnc: bool = True

    @property
    def root_disk(self) -> Disk | None:
        """The disk with role ROOT, if any."""
        return next((d for d in self.disks if d.role is DiskRole.ROOT), None)

    @property
    def seed_disk(self) -> Disk | None:
        """The cloud-init seed CD-ROM, if any."""
        return next((d for d in self.disks if d.role is DiskRole.SEED), None)

    def cpu_slots(self) -> int | None:
        """vCPU slots of the CPU topology in :attr:`libvirt_cpu` (sockets x cores x threads); ``None`` without one.

        :raises ValueError: when the topology has room for fewer than :attr:`vcpus`.
        """
        topology = self.libvirt_cpu.topology if self.libvirt_cpu is not None else None
        if topology is None:
            return None
        slots = topology.sockets * topology.cores * topology.threads
        if slots < self.vcpus:
            raise ValueError(f"the CPU topology {topology.sockets} sockets x {topology.cores} cores x "
                             f"{topology.threads} threads has room for {slots} vCPUs, not {self.vcpus}")
        return slots
