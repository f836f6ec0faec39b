"""VMPod + image + root overlay + volumes + seed -> :class:`~vmpod.machine.Machine` (pure).

Naming and sizing follow Virtlet (its section 0, 1.4, 1.5):

* machine name ``vmpod-<uid[:13]>-<container>``;
* machine UUID = ``VirtletSystemUUID`` when set, else UUIDv5 of the pod uid in
  Virtlet's container namespace (so the CRI container id is stable);
* memory = the container's memory limit, default 1 GiB;
* vCPUs = ``VirtletVCPUCount``; CPU bandwidth from the CPU limit (quota per
  vCPU, period 100 ms) and shares from the CPU request;
* disks in Virtlet's order, as :func:`vmpod.cloudinit.disks.default_disk_map`
  lays them out (root, block ``volumeDevices``, flexvolumes sorted by name,
  the seed CD-ROM last), each with the serial the guest finds it by; at most
  26 on the scsi bus and 21 on virtio (or what the backend declares), else
  :class:`~vmpod.errors.SpecError`;
* one 9p share per directory ``volumeMounts`` entry, tagged as the disk map
  says (``subPath`` shares that subdirectory of the volume);
* a persistent root (a ``volumeDevices`` entry with ``devicePath: /``): the
  volume's raw block device is the root disk, seen from its second sector on
  (:mod:`vmpod.persistentroot` keeps the header in the first), instead of a
  qcow2 overlay.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import attrs

from vmpod.backend import Capabilities
from vmpod.cloudinit.disks import ROOT_SERIAL, SEED_SERIAL, DiskMap, default_disk_map, disk_serial
from vmpod.errors import SpecError
from vmpod.hookspecs import VolumeAttachment
from vmpod.machine import (
    MARKER_LABEL,
    CPUTune,
    Disk,
    DiskFormat,
    DiskRole,
    Filesystem,
    Machine,
    NetworkMode,
    Nic,
    PortForward,
)
from vmpod.model import VMPod
from vmpod.persistentroot import RootPlan

__all__ = [
    "CONTAINER_LABEL",
    "DEFAULT_MEMORY",
    "POD_NAMESPACE_LABEL",
    "POD_NAME_LABEL",
    "POD_UID_LABEL",
    "STORE_LABEL",
    "VIRTLET_CONTAINER_NAMESPACE",
    "build_machine",
    "machine_labels",
    "machine_name",
    "machine_uuid",
    "persistent_root_device",
    "root_disk_size",
]

#: Virtlet's UUIDv5 namespace for domain UUIDs (``ContainerNs``).
VIRTLET_CONTAINER_NAMESPACE = uuid.UUID("67b7fb47-7735-4b64-86d2-6d062d121966")

#: Memory of a VM whose container has no memory limit (Virtlet's default).
DEFAULT_MEMORY = 1024 * 1024 * 1024

#: Label naming the store that created a machine: reconcile removes only its own orphans.
STORE_LABEL = "vmpod.io/store"
POD_UID_LABEL = "vmpod.io/pod-uid"
POD_NAME_LABEL = "vmpod.io/pod-name"
POD_NAMESPACE_LABEL = "vmpod.io/pod-namespace"
CONTAINER_LABEL = "vmpod.io/container"

_CFS_PERIOD = 100_000  # microseconds
_MIN_QUOTA = 1_000
_ROOT_DEVICE = "/"


def machine_name(pod: VMPod) -> str:
    """``vmpod-<uid[:13]>-<container>``, unique per node as long as pod uids are."""
    return f"vmpod-{pod.uid[:13]}-{pod.container.name}"


def machine_uuid(pod: VMPod) -> uuid.UUID:
    """``VirtletSystemUUID`` when set, else UUIDv5(Virtlet's namespace, pod uid)."""
    return pod.vm.system_uuid or uuid.uuid5(VIRTLET_CONTAINER_NAMESPACE, pod.uid)


def machine_labels(pod: VMPod, store_id: str) -> dict[str, str]:
    """The labels vmpod puts on a pod's machine: the marker, the store and the pod's identity."""
    return {
        MARKER_LABEL: "true",
        STORE_LABEL: store_id,
        POD_UID_LABEL: pod.uid,
        POD_NAME_LABEL: pod.name,
        POD_NAMESPACE_LABEL: pod.namespace,
        CONTAINER_LABEL: pod.container.name,
    }


def root_disk_size(pod: VMPod, image_virtual_size: int) -> int:
    """max(image virtual size, ``VirtletRootVolumeSize``), rounded up to 512 bytes."""
    wanted = max(image_virtual_size, pod.vm.root_volume_size or 0)
    return -(-wanted // 512) * 512


def _cpu_tune(pod: VMPod) -> CPUTune | None:
    resources = pod.container.resources
    quota = period = shares = 0
    if resources.limits.cpu is not None:
        period = _CFS_PERIOD
        quota = max(_MIN_QUOTA, resources.limits.cpu.milli() * _CFS_PERIOD // 1000 // max(1, pod.vm.vcpu_count))
    request = resources.requests.cpu or resources.limits.cpu
    if request is not None:
        shares = max(2, request.milli() * 1024 // 1000)
    if not (quota or shares):
        return None
    return CPUTune(shares=shares, period=period, quota=quota)


def _mac(machine_id: uuid.UUID) -> str:
    tail = machine_id.bytes[-3:]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def persistent_root_device(pod: VMPod) -> tuple[int, str] | None:
    """``(index, volume name)`` of the ``volumeDevices`` entry with ``devicePath: /``, if any.

    :raises SpecError: for two such entries, or a root volume also given another device path.
    """
    devices = pod.container.volume_devices
    roots = [(index, device.name) for index, device in enumerate(devices) if device.device_path == _ROOT_DEVICE]
    if not roots:
        return None
    if len(roots) > 1:
        index = roots[1][0]
        raise SpecError(f"spec.containers[0].volumeDevices[{index}].devicePath", "a second persistent root device",
                        value="/", accepted="one volumeDevices entry with devicePath /")
    index, name = roots[0]
    for other, device in enumerate(devices):
        if device.name == name and other != index:
            raise SpecError(f"spec.containers[0].volumeDevices[{other}].name", "the persistent root volume cannot "
                            "also be another device of the guest", value=name,
                            accepted="the root volume in one volumeDevices entry (devicePath /)")
    return index, name


def _persistent_root_disk(pod: VMPod, attachments: Mapping[str, VolumeAttachment],
                          plan: RootPlan | None) -> Disk | None:
    found = persistent_root_device(pod)
    if found is None:
        return None
    index, name = found
    where = f"spec.containers[0].volumeDevices[{index}]"
    attachment = attachments.get(name)
    if attachment is None or len(attachment.disks) != 1 or attachment.filesystems:
        raise SpecError(f"{where}.name", "a persistent root needs a raw block device volume", value=name,
                        accepted="a PersistentVolumeClaim with volumeMode: Block (or a hostPath device)")
    volume_disk = attachment.disks[0]
    if volume_disk.format is not DiskFormat.RAW:
        raise SpecError(f"{where}.name", "a persistent root needs a raw block device volume", value=name,
                        accepted="a PersistentVolumeClaim with volumeMode: Block (or a hostPath device)")
    if volume_disk.read_only:
        raise SpecError(f"{where}.name", "the persistent root volume is read-only", value=name,
                        accepted="a writable volume (no readOnly)")
    if plan is None or plan.volume != name:
        raise ValueError(f"build_machine: no persistent root plan for volume {name!r}")
    return Disk(name=name, path=plan.device, format=DiskFormat.RAW, role=DiskRole.ROOT, block=plan.block,
                serial=ROOT_SERIAL, offset=plan.offset, size=plan.size)


def _volume_disks(pod: VMPod, disk_map: DiskMap, attachments: Mapping[str, VolumeAttachment]) -> list[Disk]:
    """Volume disks in the disk map's order (Virtlet's), each with the serial the guest finds it by."""
    disks: list[Disk] = []
    root = persistent_root_device(pod)
    placed: set[str] = {root[1]} if root is not None else set()
    for guest in disk_map.disks:
        attachment = attachments.get(guest.volume)
        if attachment is None:
            continue
        placed.add(guest.volume)
        disks.extend(attrs.evolve(d, serial=guest.serial) for d in attachment.disks)
    for volume in pod.volumes:  # disks of volume kinds the map does not know (third-party handlers)
        attachment = attachments.get(volume.name)
        if attachment is not None and volume.name not in placed:
            disks.extend(attrs.evolve(d, serial=d.serial or disk_serial(volume.name)) for d in attachment.disks)
    return disks


def _filesystems(pod: VMPod, disk_map: DiskMap, attachments: Mapping[str, VolumeAttachment]) -> list[Filesystem]:
    """One 9p share per directory ``volumeMounts`` entry, tagged as the disk map says."""
    shares: list[Filesystem] = []
    for guest in disk_map.filesystems:
        attachment = attachments.get(guest.volume)
        if attachment is None or not attachment.filesystems:
            continue
        base = attachment.filesystems[0]
        source = str(PurePosixPath(base.source) / guest.sub_path) if guest.sub_path else base.source
        mount = pod.container.volume_mounts[guest.mount_index]
        shares.append(Filesystem(tag=guest.tag, source=source, read_only=mount.read_only or base.read_only,
                                 driver=base.driver))
    return shares


def build_machine(
    pod: VMPod,
    *,
    root_disk: Path,
    seed: Path | None,
    attachments: Mapping[str, VolumeAttachment],
    serial_log: Path,
    runtime_dir: Path,
    store_id: str,
    capabilities: Capabilities,
    loopback_forwards: tuple[PortForward, ...] = (),
    nic: Nic | None = None,
    persistent_root: RootPlan | None = None,
) -> Machine:
    """The machine for ``pod`` (pure: touches no file).

    :param attachments: what each volume (by name) became, from the volume handlers.
    :param loopback_forwards: forwards from loopback ports vmpod chose (probe ports, containerPorts
        without a hostPort: :func:`vmpod.runtime.endpoints.loopback_forwards`), after the hostPort ones.
    :param nic: the VM's NIC when the runtime made its network (``cni`` mode: a tap in the pod's
        network namespace, see :mod:`vmpod.network`); default a user-mode NIC with the port forwards.
    :param persistent_root: for a pod with a persistent root (:func:`persistent_root_device`), what
        :func:`vmpod.persistentroot.plan_root` found on its device; ``root_disk`` is then unused.
    :raises SpecError: for more disks than the bus allows, 9p volumes on a backend without 9p,
        or a persistent root volume that is not a writable raw block device.
    """
    bus = pod.vm.disk_driver
    disk_map = default_disk_map(pod)
    root = _persistent_root_disk(pod, attachments, persistent_root)
    disks = [root or Disk(name="root", path=str(root_disk), format=DiskFormat.QCOW2, role=DiskRole.ROOT,
                          serial=ROOT_SERIAL)]
    disks.extend(_volume_disks(pod, disk_map, attachments))
    if seed is not None:
        disks.append(Disk(name="seed", path=str(seed), format=DiskFormat.RAW, role=DiskRole.SEED, read_only=True,
                          cdrom=True, serial=SEED_SERIAL))
    limit = capabilities.max_disks.get(str(bus))
    if limit is None:
        raise SpecError("metadata.annotations.VirtletDiskDriver", "the backend does not support this disk bus",
                        value=str(bus), accepted=", ".join(capabilities.disk_buses))
    if len(disks) > limit:
        raise SpecError("metadata.annotations.VirtletDiskDriver", f"too many {bus} block devices: {len(disks)}",
                        accepted=f"at most {limit} disks on the {bus} bus (root and seed included)")
    filesystems = _filesystems(pod, disk_map, attachments)
    for fs in filesystems:
        if str(fs.driver) not in capabilities.filesystems:
            supported = ", ".join(capabilities.filesystems) or "none"
            raise SpecError("spec.volumes", f"the backend cannot share host directories over {fs.driver}",
                            value=fs.tag, accepted=f"shared filesystems: {supported}")
    machine_id = machine_uuid(pod)
    forwards = tuple(PortForward(guest_port=p.container_port, host_port=p.host_port, protocol=p.protocol.lower())
                     for p in pod.container.ports if p.host_port) + loopback_forwards
    return Machine(
        name=machine_name(pod),
        uuid=machine_id,
        memory_bytes=pod.memory_limit_bytes or DEFAULT_MEMORY,
        vcpus=pod.vm.vcpu_count,
        disk_bus=bus,
        disks=tuple(disks),
        serial_log=str(serial_log),
        runtime_dir=str(runtime_dir),
        labels=machine_labels(pod, store_id),
        filesystems=tuple(filesystems),
        nics=(nic or Nic(mac=_mac(machine_id), mode=NetworkMode.USER, forwards=forwards),),
        cpu_model=pod.vm.cpu_model,
        libvirt_cpu=pod.vm.libvirt_cpu_setting,
        cpu_tune=_cpu_tune(pod),
    )
