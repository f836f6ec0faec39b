"""The libvirt domain XML of a :class:`~vmpod.machine.Machine`: a pure function, golden-tested.

:func:`domain_xml` mirrors the domain Virtlet defines (``virtlet-behaviour.md`` 1.4, 1.5, 1.7,
1.11), with these choices:

* ``<domain type="kvm">`` when KVM really works, else ``type="qemu"`` (TCG); the caller passes
  the accelerator (:func:`vmpod.accel.detect_accelerator`); i440fx (``machine="pc"``), BIOS;
* memory in bytes, ``<vcpu>`` (with ``current`` below the topology's slots when a CPU topology
  leaves room for more), ``<cputune>`` shares/period/quota from
  :class:`~vmpod.machine.CPUTune` (the quota is already per vCPU; zero values are left out,
  libvirt rejects them);
* the CPU: ``VirtletLibvirtCPUSetting`` wins over ``VirtletCPUModel``; ``host-model`` renders as
  Virtlet's ``<cpu mode="host-model"><model fallback="forbid"/><feature policy="require"
  name="vmx"/></cpu>``.  Without KVM, libvirt refuses ``host-model`` and ``host-passthrough``,
  so they become ``mode="maximum"`` (everything TCG emulates, the qemu backend's ``-cpu max``)
  and the ``vmx`` that nested virtualization needs is dropped;
* SMBIOS: ``<sysinfo type="smbios">`` with the system UUID and ``<smbios mode="sysinfo"/>``
  (``VirtletSystemUUID``; libvirt requires it to equal the domain UUID, as Virtlet's does);
* disks in the machine's order (Virtlet's: root, block volumes, flexvolumes, seed last) on one
  bus: ``scsi`` (virtio-scsi, ``sda``.., ``<address type="drive" unit="n">``) or ``virtio``
  (virtio-blk, ``vda``.., slot *n+1* of a PCI bridge on bus 1), with Virtlet's limits (26 and
  21).  The seed is a read-only CD-ROM on SCSI; virtio-blk has no CD-ROM, so there it is a
  read-only disk (the guest finds it by its volume label either way).  The root disk boots
  (``<boot order="1"/>``).  A disk that is a byte range of its device (a persistent root after its
  header sector) has a ``<slices><slice type="storage" offset=... size=.../></slices>`` source
  (libvirt's own answer to Virtlet's dm-linear device).  The virtio-scsi controller is always
  present, as in Virtlet;
* directory volumes: 9p (``accessmode="squash"``, as Virtlet) or virtiofs (``passthrough``, with
  the shared memfd memory backing virtiofsd needs);
* NICs: user-mode or an existing tap (``type="ethernet"``, unmanaged); libvirt cannot start qemu
  inside another network namespace, so a tap there is refused.  libvirt's user-mode interface has
  no port forwards (libvirt 9.0 has no passt backend either), so a user NIC with forwards is
  given to qemu directly through ``<qemu:commandline>`` (``-netdev user,hostfwd=...`` on the
  forward's loopback address and a ``virtio-net-pci``), as Virtlet passed its own settings;
* the serial console is a pty (held by the log follower's console monitor, which serves
  ``vmpod attach`` on ``attach.sock``) whose output libvirt
  also appends, through virtlogd, to ``<runtime_dir>/serial.raw``: the backend's log follower
  turns that file into the pod's CRI log;
* VNC on 127.0.0.1 only (autoport), a Cirrus VGA and a USB tablet, as Virtlet; none of them
  (and no USB controller) when the machine has no VNC; no memory balloon;
* ``<features><acpi/></features>``, ``on_poweroff=destroy``, ``on_reboot=restart`` and
  ``on_crash=destroy`` (Virtlet restarts a crashed guest in place; vmpod reports it stopped,
  ``Crashed``, and lets the pod's restart policy decide);
* a ``<vmpod:machine>`` metadata element (namespace :data:`METADATA_NS`): when vmpod created the
  domain, the machine's labels (vmpod's :data:`~vmpod.machine.MARKER_LABEL` among them marks it
  as vmpod's to garbage-collect), the runtime and serial-log paths.  A domain without it was
  not made by vmpod and is never stopped or removed by the backend.

There is no ``<emulator>``: libvirt picks the one of the domain type from its capabilities.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Final

import attrs

from vmpod.errors import BackendError
from vmpod.machine import Disk, DiskFormat, Filesystem, FilesystemDriver, Machine, NetworkMode, Nic
from vmpod.model import CPUFeature, CPUModel, CPUModelMode, DiskDriver, LibvirtCPU
from vmpod_libvirt.records import SERIAL_RAW

__all__ = [
    "MAX_DISKS",
    "METADATA_NS",
    "SERIAL_RAW",
    "DomainMetadata",
    "disk_targets",
    "domain_type",
    "domain_xml",
    "metadata_xml",
    "parse_metadata",
]

#: Namespace of vmpod's ``<metadata>`` element in a domain.
METADATA_NS: Final = "https://vmpod.io/xmlns/libvirt-domain/1"
METADATA_PREFIX: Final = "vmpod"
#: libvirt's namespace for qemu command-line additions.
QEMU_NS: Final = "http://libvirt.org/schemas/domain/qemu/1.0"
#: Virtlet's limits: ``sda``..``sdz`` and ``vda``..``vdu``.
MAX_DISKS: Final[Mapping[DiskDriver, int]] = {DiskDriver.SCSI: 26, DiskDriver.VIRTIO: 21}

_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"
_HOST_LIKE: Final = (CPUModelMode.HOST_MODEL, CPUModelMode.HOST_PASSTHROUGH)
_LOOPBACK: Final = "127.0.0.1"


@attrs.frozen
class DomainMetadata:
    """What vmpod keeps in a domain's ``<vmpod:machine>`` metadata element.

    :param created_at: when the backend defined the domain (ns since the epoch).
    :param labels: the machine's labels (``owned`` when :data:`~vmpod.machine.MARKER_LABEL` is one).
    :param runtime_dir: the machine's runtime directory (``serial.raw`` and the backend's records).
    :param serial_log: the pod log the serial console is appended to.
    """

    created_at: int
    labels: Mapping[str, str] = attrs.field(factory=dict)
    runtime_dir: str = ""
    serial_log: str = ""


def domain_type(accelerator: str) -> str:
    """The ``<domain type>`` for an accelerator: ``kvm`` for ``kvm``, ``qemu`` for ``tcg``."""
    if accelerator == "kvm":
        return "kvm"
    if accelerator == "tcg":
        return "qemu"
    raise BackendError(f"libvirt: unknown accelerator {accelerator!r}: use kvm or tcg")


def disk_targets(machine: Machine) -> tuple[tuple[Disk, str], ...]:
    """Each disk with its libvirt target device (``sda``.. on SCSI, ``vda``.. on virtio).

    :raises BackendError: more disks than the bus allows (Virtlet's limits, :data:`MAX_DISKS`).
    """
    bus = machine.disk_bus
    limit = MAX_DISKS[bus]
    if len(machine.disks) > limit:
        raise BackendError(f"libvirt: too many {bus.value} block devices: {len(machine.disks)} "
                           f"(the {bus.value} bus takes at most {limit}, root and seed included)")
    prefix = "sd" if bus is DiskDriver.SCSI else "vd"
    return tuple((disk, prefix + _LETTERS[index]) for index, disk in enumerate(machine.disks))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _absolute(path: str, what: str) -> str:
    if not os.path.isabs(path):
        raise BackendError(f"libvirt: {what} must be an absolute path, not {path!r}")
    return path


def metadata_xml(metadata: DomainMetadata) -> ET.Element:
    """The ``<vmpod:machine>`` element (namespace declared on it, labels sorted)."""
    root = ET.Element(f"{METADATA_PREFIX}:machine", {f"xmlns:{METADATA_PREFIX}": METADATA_NS})
    _sub(root, f"{METADATA_PREFIX}:created-at", str(metadata.created_at))
    _sub(root, f"{METADATA_PREFIX}:runtime-dir", metadata.runtime_dir)
    _sub(root, f"{METADATA_PREFIX}:serial-log", metadata.serial_log)
    labels = _sub(root, f"{METADATA_PREFIX}:labels")
    for key in sorted(metadata.labels):
        _sub(labels, f"{METADATA_PREFIX}:label", metadata.labels[key], name=key)
    return root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_metadata(text: str) -> DomainMetadata | None:
    """The metadata in ``text``; ``None`` without any.

    ``text`` is a whole domain XML (the element is found by its namespace, :data:`METADATA_NS`),
    or the element alone as ``virDomainGetMetadata`` returns it (libvirt drops the namespace
    declaration there: ``<machine><created-at>...``).
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    if root.tag == "domain":
        element = root.find(f"metadata/{{{METADATA_NS}}}machine")
    elif root.tag in ("machine", f"{{{METADATA_NS}}}machine"):
        element = root
    else:
        element = None
    if element is None:
        return None
    children = {_local(child.tag): child for child in element}

    def text_of(name: str) -> str:
        child = children.get(name)
        return (child.text or "") if child is not None else ""

    try:
        created_at = int(text_of("created-at") or "0")
    except ValueError:
        created_at = 0
    labels_element = children.get("labels")
    labels = {label.get("name", ""): label.text or "" for label in (labels_element if labels_element is not None
                                                                    else ()) if _local(label.tag) == "label"}
    return DomainMetadata(created_at=created_at, labels=labels, runtime_dir=text_of("runtime-dir"),
                          serial_log=text_of("serial-log"))


# --------------------------------------------------------------------------- parts


def _vcpu(domain: ET.Element, machine: Machine) -> None:
    try:
        slots = machine.cpu_slots() or machine.vcpus
    except ValueError as exc:
        raise BackendError(f"libvirt: {exc}") from None
    if slots > machine.vcpus:
        _sub(domain, "vcpu", str(slots), placement="static", current=str(machine.vcpus))
    else:
        _sub(domain, "vcpu", str(machine.vcpus), placement="static")


def _cputune(domain: ET.Element, machine: Machine) -> None:
    tune = machine.cpu_tune
    if tune is None or not (tune.shares or tune.period or tune.quota):
        return
    element = _sub(domain, "cputune")
    for tag, value in (("shares", tune.shares), ("period", tune.period), ("quota", tune.quota)):
        if value > 0:
            _sub(element, tag, str(value))


def _cpu_setting(machine: Machine) -> LibvirtCPU | None:
    """The CPU definition asked for: ``VirtletLibvirtCPUSetting``, else ``VirtletCPUModel``'s host-model."""
    if machine.libvirt_cpu is not None:
        return machine.libvirt_cpu
    if machine.cpu_model is CPUModel.HOST_MODEL:
        return LibvirtCPU(mode=CPUModelMode.HOST_MODEL, model_fallback="forbid",
                          features=(CPUFeature(name="vmx", policy="require"),))
    return None


def _cpu(domain: ET.Element, machine: Machine, accelerator: str) -> None:
    setting = _cpu_setting(machine)
    if setting is None:
        return
    mode = setting.mode
    features = setting.features
    fallback = setting.model_fallback
    if accelerator == "tcg" and mode in _HOST_LIKE:
        mode = CPUModelMode.MAXIMUM
        features = tuple(f for f in features if f.name != "vmx")
        fallback = None
    attributes: dict[str, str] = {}
    if mode is not None:
        attributes["mode"] = mode.value
    if setting.match and mode in (None, CPUModelMode.CUSTOM):
        attributes["match"] = setting.match
    if setting.check:
        attributes["check"] = setting.check
    cpu = _sub(domain, "cpu", **attributes)
    if setting.model or fallback or setting.model_vendor_id:
        model_attributes = {"fallback": fallback} if fallback else {}
        if setting.model_vendor_id:
            model_attributes["vendor_id"] = setting.model_vendor_id
        _sub(cpu, "model", setting.model, **model_attributes)
    if setting.vendor:
        _sub(cpu, "vendor", setting.vendor)
    if setting.topology is not None:
        topology = setting.topology
        _sub(cpu, "topology", sockets=str(topology.sockets), cores=str(topology.cores), threads=str(topology.threads))
    for feature in features:
        _sub(cpu, "feature", policy=feature.policy, name=feature.name)


def _slice(source: ET.Element, disk: Disk) -> None:
    """A storage slice: the guest sees ``size`` bytes of the source from ``offset`` (a persistent root)."""
    if disk.format is not DiskFormat.RAW:
        raise BackendError(f"libvirt: disk {disk.name!r}: only a raw disk can start at an offset")
    if disk.size is None or disk.size <= 0 or disk.size % 512 or disk.offset % 512:
        raise BackendError(f"libvirt: disk {disk.name!r}: a slice needs an offset and a positive size, both "
                           f"multiples of 512 (offset {disk.offset}, size {disk.size})")
    slices = _sub(source, "slices")
    _sub(slices, "slice", type="storage", offset=str(disk.offset), size=str(disk.size))


def _disk(devices: ET.Element, machine: Machine, disk: Disk, target: str, index: int) -> None:
    scsi = machine.disk_bus is DiskDriver.SCSI
    cdrom = disk.cdrom and scsi  # virtio-blk has no CD-ROM: a read-only disk instead
    element = _sub(devices, "disk", type="block" if disk.block else "file", device="cdrom" if cdrom else "disk")
    _sub(element, "driver", name="qemu", type="qcow2" if disk.format is DiskFormat.QCOW2 else "raw")
    path = _absolute(disk.path, f"disk {disk.name!r}")
    source = _sub(element, "source", dev=path) if disk.block else _sub(element, "source", file=path)
    if disk.offset or disk.size is not None:
        _slice(source, disk)
    _sub(element, "target", dev=target, bus="scsi" if scsi else "virtio")
    if disk.read_only or disk.cdrom:
        _sub(element, "readonly")
    if disk.serial:
        _sub(element, "serial", disk.serial)
    if disk is machine.root_disk:
        _sub(element, "boot", order="1")
    if scsi:
        _sub(element, "address", type="drive", controller="0", bus="0", target="0", unit=str(index))
    else:
        _sub(element, "address", type="pci", domain="0x0000", bus="0x01", slot=f"0x{index + 1:02x}",
             function="0x0")


def _filesystem(devices: ET.Element, share: Filesystem) -> None:
    source = _absolute(share.source, f"filesystem {share.tag!r}")
    if share.driver is FilesystemDriver.VIRTIOFS:
        element = _sub(devices, "filesystem", type="mount", accessmode="passthrough")
        _sub(element, "driver", type="virtiofs")
    else:
        element = _sub(devices, "filesystem", type="mount", accessmode="squash")
    _sub(element, "source", dir=source)
    _sub(element, "target", dir=share.tag)
    if share.read_only:
        _sub(element, "readonly")


def _qemu_nic_args(nic: Nic, index: int) -> list[str]:
    """qemu arguments for a user-mode NIC with port forwards (which libvirt's XML cannot express)."""
    netdev = f"vmpodnet{index}"
    forwards = [f"hostfwd={f.protocol}:{f.host_address}:{f.host_port}-:{f.guest_port}" for f in nic.forwards]
    # libvirt does not know this device: without an address it takes the first free slot, the one
    # libvirt gives its own VGA (qemu then refuses the VGA). The last slots of bus 0 are the ones
    # libvirt's automatic addressing reaches last.
    device = ["virtio-net-pci", f"netdev={netdev}", f"mac={nic.mac}", f"id={netdev}-dev", "bus=pci.0",
              f"addr={0x1F - index:#04x}"]
    if nic.mtu:
        device.append(f"host_mtu={nic.mtu}")
    return ["-netdev", ",".join(["user", f"id={netdev}", *forwards]), "-device", ",".join(device)]


def _interface(devices: ET.Element, nic: Nic, index: int) -> None:
    if nic.mode is NetworkMode.USER:
        element = _sub(devices, "interface", type="user")
        _sub(element, "mac", address=nic.mac)
    else:
        if not nic.tap:
            raise BackendError(f"libvirt: NIC {index} ({nic.mac}) is in tap mode but names no tap device")
        if nic.netns:
            raise BackendError(f"libvirt: NIC {index} ({nic.mac}): tap {nic.tap!r} is in the network namespace "
                               f"{nic.netns}, and libvirt cannot start qemu inside one (use the qemu backend)")
        element = _sub(devices, "interface", type="ethernet")
        _sub(element, "mac", address=nic.mac)
        _sub(element, "target", dev=nic.tap, managed="no")
    _sub(element, "model", type="virtio")
    if nic.mtu:
        _sub(element, "mtu", size=str(nic.mtu))


def _devices(domain: ET.Element, machine: Machine) -> None:
    devices = _sub(domain, "devices")
    _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    if machine.disk_bus is DiskDriver.VIRTIO and machine.disks:
        _sub(devices, "controller", type="pci", index="1", model="pci-bridge")
    if not machine.vnc:
        _sub(devices, "controller", type="usb", model="none")
    for index, (disk, target) in enumerate(disk_targets(machine)):
        _disk(devices, machine, disk, target, index)
    for share in machine.filesystems:
        _filesystem(devices, share)
    for index, nic in enumerate(machine.nics):
        if not (nic.mode is NetworkMode.USER and nic.forwards):
            _interface(devices, nic, index)
    runtime_dir = _absolute(machine.runtime_dir, "the runtime directory")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=os.path.join(runtime_dir, SERIAL_RAW), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if machine.vnc:
        _sub(devices, "input", type="tablet", bus="usb")
        graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=_LOOPBACK)
        _sub(graphics, "listen", type="address", address=_LOOPBACK)
        video = _sub(devices, "video")
        _sub(video, "model", type="cirrus")
    _sub(devices, "memballoon", model="none")


def domain_xml(machine: Machine, accelerator: str, *, created_at: int = 0) -> str:
    """The domain XML that defines ``machine`` (see the module docstring for its layout).

    :param accelerator: ``kvm`` or ``tcg`` (:func:`vmpod.accel.detect_accelerator`).
    :param created_at: the creation time kept in vmpod's metadata (ns since the epoch).
    :raises BackendError: when the machine asks for something libvirt cannot do (too many disks for
        the bus, a relative path, an SMBIOS UUID other than the machine's, a tap in a network namespace).
    """
    kind = domain_type(accelerator)
    if machine.memory_bytes <= 0 or machine.vcpus <= 0:
        raise BackendError(f"libvirt: machine {machine.name!r} needs memory and vCPUs "
                           f"({machine.memory_bytes} bytes, {machine.vcpus} vCPUs)")
    if machine.smbios_uuid is not None and machine.smbios_uuid != machine.uuid:
        raise BackendError(f"libvirt: the SMBIOS UUID {machine.smbios_uuid} must be the machine UUID "
                           f"{machine.uuid} (libvirt refuses a mismatch; Virtlet uses one UUID for both)")
    domain = ET.Element("domain", type=kind)
    _sub(domain, "name", machine.name)
    _sub(domain, "uuid", str(machine.uuid))
    metadata = _sub(domain, "metadata")
    metadata.append(metadata_xml(DomainMetadata(created_at=created_at, labels=dict(machine.labels),
                                                runtime_dir=machine.runtime_dir, serial_log=machine.serial_log)))
    _sub(domain, "memory", str(machine.memory_bytes), unit="b")
    if any(share.driver is FilesystemDriver.VIRTIOFS for share in machine.filesystems):
        backing = _sub(domain, "memoryBacking")
        _sub(backing, "source", type="memfd")
        _sub(backing, "access", mode="shared")
    _vcpu(domain, machine)
    _cputune(domain, machine)
    if machine.smbios_uuid is not None:
        sysinfo = _sub(domain, "sysinfo", type="smbios")
        system = _sub(sysinfo, "system")
        _sub(system, "entry", str(machine.smbios_uuid), name="uuid")
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    if machine.smbios_uuid is not None:
        _sub(os_element, "smbios", mode="sysinfo")
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _cpu(domain, machine, accelerator)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    _devices(domain, machine)
    qemu_args = [arg for index, nic in enumerate(machine.nics) if nic.mode is NetworkMode.USER and nic.forwards
                 for arg in _qemu_nic_args(nic, index)]
    if qemu_args:
        domain.set("xmlns:qemu", QEMU_NS)
        commandline = _sub(domain, "qemu:commandline")
        for arg in qemu_args:
            _sub(commandline, "qemu:arg", value=arg)
    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode") + "\n"
