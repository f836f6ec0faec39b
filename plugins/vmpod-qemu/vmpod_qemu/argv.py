"""The qemu command line of a :class:`~vmpod.machine.Machine`: a pure function, golden-tested.

:func:`build_argv` returns an argv list (never a shell string) for
``qemu-system-x86_64``.  It mirrors the libvirt domain Virtlet defines
(``virtlet-behaviour.md`` 1.4, 1.5, 1.7, 1.11):

* ``-machine pc`` (i440fx, what libvirt picks when no machine is set) with ACPI, the
  accelerator given (``kvm`` only when it really works, see :mod:`vmpod.accel`);
  ``-nodefaults`` so that every device is one this function adds;
* memory in MiB (rounded up), vCPUs (with a topology when the CPU definition has one), the
  CPU model (see :func:`cpu_option`), SMBIOS system UUID when the machine has one;
* a virtio-scsi controller always (as Virtlet), disks in the machine's order: on the ``scsi``
  bus as LUN *n* of target 0 (``scsi-hd``/``scsi-cd``; the guest names them ``sda``...), on the
  ``virtio`` bus as virtio-blk devices in slot *n+1* of a PCI bridge on bus 1 (``vda``...),
  where a CD-ROM (the seed) becomes a read-only virtio disk; the root disk boots first;
  Virtlet's limits apply (26 SCSI, 21 virtio disks); a disk that is a byte range of its device (a
  persistent root after its header sector) gets the raw driver's ``offset`` and ``size``;
* 9p directory shares (``security_model=none``, libvirt's ``accessmode="squash"``);
  virtio-fs needs a virtiofsd daemon per share and is refused;
* NICs as virtio-net: user-mode networking with port forwards bound to loopback, or a tap
  device; a tap in a network namespace starts qemu through ``nsenter --net=<netns>``;
* the serial console on a unix socket (``console.sock``, one client: the supervisor's console
  monitor, which serves ``vmpod attach`` on ``attach.sock``) whose chardev also appends
  everything the guest writes to ``serial.raw`` even when nobody is connected: the supervisor
  turns that file into the pod's CRI log;
* VNC on 127.0.0.1 (the first free display from :5900), a Cirrus VGA and a USB tablet, as
  Virtlet's domain; ``-display none`` when the machine has no VNC;
* ``-daemonize`` with a pidfile and a QMP monitor socket (``qmp.sock``).

Socket and log names are relative: qemu is started with the machine's directory as working
directory, so unix socket paths stay far below the 108-byte limit wherever the state directory
is (qemu creates its chardevs before it daemonizes and changes to ``/``).  The pidfile path is
absolute.  Values are escaped for qemu's option syntax (a ``,`` is doubled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import attrs

from vmpod.errors import BackendError
from vmpod.machine import Disk, DiskFormat, Filesystem, FilesystemDriver, Machine, NetworkMode, Nic
from vmpod.model import CPUModel, CPUModelMode, DiskDriver

__all__ = [
    "CONSOLE_SOCKET",
    "MAX_DISKS",
    "QMP_SOCKET",
    "SERIAL_RAW",
    "QemuPaths",
    "build_argv",
    "cpu_option",
    "disk_names",
    "escape",
]

DEFAULT_BINARY: Final = "qemu-system-x86_64"
#: Names, relative to the machine directory (qemu's working directory when it starts).
QMP_SOCKET: Final = "qmp.sock"
CONSOLE_SOCKET: Final = "console.sock"
SERIAL_RAW: Final = "serial.raw"
PIDFILE: Final = "qemu.pid"

#: Virtlet's limits: ``sda``..``sdz`` and ``vda``..``vdu``.
MAX_DISKS: Final = {DiskDriver.SCSI: 26, DiskDriver.VIRTIO: 21}

_MIB: Final = 1024 * 1024
# PCI slots on bus 0 (i440fx): 0 host bridge, 1 PIIX3 (ISA, IDE, USB, ACPI), 2 VGA, 3 the SCSI
# controller; NICs and shares take 4..30; the bridge for virtio disks sits in 31.
_SLOT_VGA: Final = 0x02
_SLOT_SCSI: Final = 0x03
_FIRST_FREE_SLOT: Final = 0x04
_SLOT_BRIDGE: Final = 0x1F
_BRIDGE_ID: Final = "pci.1"
# VNC displays tried, from :0 (port 5900); qemu takes the first free one.
_VNC_DISPLAYS: Final = 99


@attrs.frozen
class QemuPaths:
    """Where one machine's qemu files are.

    :param directory: the machine directory (absolute); qemu's working directory at start.
    """

    directory: str

    @property
    def pidfile(self) -> str:
        """Absolute path of the pidfile qemu writes."""
        return f"{self.directory.rstrip('/')}/{PIDFILE}"


def escape(value: str) -> str:
    """``value`` as one qemu option value: commas doubled (qemu's only escape)."""
    return value.replace(",", ",,")


def _opts(*items: str | None) -> str:
    return ",".join(item for item in items if item)


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def cpu_option(machine: Machine, accel: str) -> str | None:
    """The ``-cpu`` value for the machine, or ``None`` for qemu's default model.

    ``VirtletLibvirtCPUSetting`` wins over ``VirtletCPUModel``.  ``host-model``,
    ``host-passthrough`` and ``maximum`` expose the host CPU (``host``) with KVM and
    everything TCG can emulate (``max``) without it.  A ``custom`` mode names a qemu model
    (default ``qemu64``) with features switched ``on`` (policy ``require``/``force``) or
    ``off`` (``disable``/``forbid``); ``optional`` features are left to the model.  libvirt's
    ``match``, ``check``, ``fallback`` and ``vendor`` have no qemu equivalent and are ignored.
    """
    host_like = "host" if accel == "kvm" else "max"
    cpu = machine.libvirt_cpu
    if cpu is not None:
        if cpu.mode in (CPUModelMode.HOST_MODEL, CPUModelMode.HOST_PASSTHROUGH, CPUModelMode.MAXIMUM):
            model = host_like
        elif cpu.model:
            model = cpu.model
        elif cpu.mode is CPUModelMode.CUSTOM or cpu.features:
            model = "qemu64"
        else:
            return None
        features = []
        for feature in cpu.features:
            if feature.policy in ("require", "force"):
                features.append(f"{escape(feature.name)}=on")
            elif feature.policy in ("disable", "forbid"):
                features.append(f"{escape(feature.name)}=off")
        return _opts(escape(model), *features)
    if machine.cpu_model is CPUModel.HOST_MODEL:
        return host_like
    return None


def _smp(machine: Machine) -> str:
    try:
        slots = machine.cpu_slots()
    except ValueError as exc:
        raise BackendError(f"qemu: {exc}") from None
    topology = machine.libvirt_cpu.topology if machine.libvirt_cpu is not None else None
    if slots is None or topology is None:
        return str(machine.vcpus)
    return _opts(f"cpus={machine.vcpus}", f"sockets={topology.sockets}", f"cores={topology.cores}",
                 f"threads={topology.threads}", f"maxcpus={slots}")


def _slice(disk: Disk) -> list[str]:
    """``offset``/``size`` of the raw driver for a disk that is a byte range of its file (persistent root)."""
    if not disk.offset and disk.size is None:
        return []
    if disk.format is not DiskFormat.RAW:
        raise BackendError(f"qemu: disk {disk.name!r}: only a raw disk can start at an offset")
    if disk.offset % 512 or (disk.size is not None and (disk.size <= 0 or disk.size % 512)):
        raise BackendError(f"qemu: disk {disk.name!r}: offset {disk.offset} and size {disk.size} must be "
                           "multiples of 512 (and the size positive)")
    return [f"offset={disk.offset}", *([f"size={disk.size}"] if disk.size is not None else [])]


def _disk_args(machine: Machine) -> list[str]:
    bus = machine.disk_bus
    limit = MAX_DISKS[bus]
    if len(machine.disks) > limit:
        raise BackendError(f"qemu: too many {bus.value} block devices: {len(machine.disks)} (at most {limit})")
    args: list[str] = []
    root = machine.root_disk
    for index, disk in enumerate(machine.disks):
        read_only = disk.read_only or disk.cdrom
        file_driver = "host_device" if disk.block else "file"
        if disk.block and disk.cdrom:
            file_driver = "host_cdrom"
        file_node, node = f"file{index}", f"disk{index}"
        args += ["-blockdev", _opts(f"driver={file_driver}", f"filename={escape(disk.path)}",
                                    f"node-name={file_node}", f"read-only={_onoff(read_only)}")]
        fmt = "qcow2" if disk.format is DiskFormat.QCOW2 else "raw"
        args += ["-blockdev", _opts(f"driver={fmt}", f"file={file_node}", f"node-name={node}",
                                    f"read-only={_onoff(read_only)}", *_slice(disk))]
        serial = f"serial={escape(disk.serial)}" if disk.serial else None
        boot = "bootindex=1" if disk is root else None
        if bus is DiskDriver.SCSI:
            device = "scsi-cd" if disk.cdrom else "scsi-hd"
            args += ["-device", _opts(device, "bus=scsi0.0", "channel=0", "scsi-id=0", f"lun={index}",
                                      f"drive={node}", f"id={node}-dev", serial, boot)]
        else:
            args += ["-device", _opts("virtio-blk-pci", f"bus={_BRIDGE_ID}", f"addr={index + 1:#04x}",
                                      f"drive={node}", f"id={node}-dev", serial, boot)]
    return args


def _filesystem_args(filesystems: Sequence[Filesystem], slots: list[int]) -> list[str]:
    args: list[str] = []
    for index, share in enumerate(filesystems):
        if share.driver is not FilesystemDriver.NINEP:
            raise BackendError(f"qemu: filesystem {share.tag!r}: {share.driver.value} shares are not supported "
                               "by the qemu backend (use 9p)")
        fsdev = f"fs{index}"
        args += ["-fsdev", _opts("local", f"id={fsdev}", f"path={escape(share.source)}", "security_model=none",
                                 "readonly=on" if share.read_only else None)]
        args += ["-device", _opts("virtio-9p-pci", f"fsdev={fsdev}", f"mount_tag={escape(share.tag)}",
                                  f"addr={slots.pop(0):#04x}")]
    return args


def _nic_args(nics: Sequence[Nic], slots: list[int]) -> list[str]:
    args: list[str] = []
    for index, nic in enumerate(nics):
        netdev = f"net{index}"
        if nic.mode is NetworkMode.USER:
            forwards = [f"hostfwd={escape(f'{fw.protocol}:{fw.host_address}:{fw.host_port}-:{fw.guest_port}')}"
                        for fw in nic.forwards]
            args += ["-netdev", _opts("user", f"id={netdev}", *forwards)]
        else:
            if not nic.tap:
                raise BackendError(f"qemu: NIC {index} ({nic.mac}) is in tap mode but names no tap device")
            args += ["-netdev", _opts("tap", f"id={netdev}", f"ifname={escape(nic.tap)}", "script=no",
                                      "downscript=no")]
        mtu = f"host_mtu={nic.mtu}" if nic.mtu else None
        args += ["-device", _opts("virtio-net-pci", f"netdev={netdev}", f"mac={escape(nic.mac)}", mtu,
                                  f"addr={slots.pop(0):#04x}")]
    return args


def _netns_prefix(nics: Sequence[Nic]) -> list[str]:
    namespaces = {nic.netns for nic in nics if nic.mode is NetworkMode.TAP and nic.netns}
    if len(namespaces) > 1:
        raise BackendError(f"qemu: tap NICs in different network namespaces: {sorted(namespaces)}")
    return ["nsenter", f"--net={namespaces.pop()}", "--"] if namespaces else []


def build_argv(machine: Machine, *, accel: str, paths: QemuPaths, binary: str = DEFAULT_BINARY) -> tuple[str, ...]:
    """The argv that starts ``machine`` daemonized (see the module docstring for the layout).

    :param accel: ``kvm`` or ``tcg`` (from :func:`vmpod.accel.detect_accelerator`).
    :param paths: the machine's directory; qemu must be started with it as working directory.
    :param binary: the qemu executable.
    :raises BackendError: when the machine asks for something qemu cannot do here.
    """
    if accel not in ("kvm", "tcg"):
        raise BackendError(f"qemu: unknown accelerator {accel!r}: use kvm or tcg")
    if machine.memory_bytes <= 0 or machine.vcpus <= 0:
        raise BackendError(f"qemu: machine {machine.name!r} needs memory and vCPUs "
                           f"({machine.memory_bytes} bytes, {machine.vcpus} vCPUs)")
    slots = list(range(_FIRST_FREE_SLOT, _SLOT_BRIDGE))
    if len(machine.nics) + len(machine.filesystems) > len(slots):
        raise BackendError(f"qemu: too many NICs and shares: {len(machine.nics) + len(machine.filesystems)} "
                           f"(at most {len(slots)})")
    argv: list[str] = [*_netns_prefix(machine.nics), binary]
    argv += ["-name", f"guest={escape(machine.name)}"]
    argv += ["-uuid", str(machine.uuid)]
    argv += ["-machine", _opts("pc", f"accel={accel}", "usb=on" if machine.vnc else "usb=off")]
    cpu = cpu_option(machine, accel)
    if cpu:
        argv += ["-cpu", cpu]
    argv += ["-m", f"size={math.ceil(machine.memory_bytes / _MIB)}M"]
    argv += ["-smp", _smp(machine)]
    if machine.smbios_uuid is not None:
        argv += ["-smbios", f"type=1,uuid={machine.smbios_uuid}"]
    argv += ["-nodefaults", "-no-user-config"]
    argv += ["-daemonize", "-pidfile", paths.pidfile]
    argv += ["-chardev", _opts("socket", "id=qmp", f"path={QMP_SOCKET}", "server=on", "wait=off")]
    argv += ["-mon", "chardev=qmp,mode=control"]
    argv += ["-chardev", _opts("socket", "id=serial0", f"path={CONSOLE_SOCKET}", "server=on", "wait=off",
                               f"logfile={SERIAL_RAW}", "logappend=on")]
    argv += ["-serial", "chardev:serial0"]
    if machine.vnc:
        argv += ["-vnc", f"127.0.0.1:0,to={_VNC_DISPLAYS}"]
        argv += ["-device", f"cirrus-vga,addr={_SLOT_VGA:#04x}"]
        argv += ["-device", "usb-tablet,bus=usb-bus.0"]
    else:
        argv += ["-display", "none"]
    argv += ["-device", f"virtio-scsi-pci,id=scsi0,addr={_SLOT_SCSI:#04x}"]
    if machine.disk_bus is DiskDriver.VIRTIO and machine.disks:
        argv += ["-device", f"pci-bridge,id={_BRIDGE_ID},chassis_nr=1,addr={_SLOT_BRIDGE:#04x}"]
    argv += _disk_args(machine)
    argv += _filesystem_args(machine.filesystems, slots)
    argv += _nic_args(machine.nics, slots)
    return tuple(argv)


def disk_names(machine: Machine) -> tuple[tuple[Disk, str], ...]:
    """Each disk with the name a Linux guest gives it (``sda``/``sr0`` on SCSI, ``vda`` on virtio)."""
    names: list[tuple[Disk, str]] = []
    letters = "abcdefghijklmnopqrstuvwxyz"
    disks = cdroms = 0
    for disk in machine.disks:
        if machine.disk_bus is DiskDriver.SCSI and disk.cdrom:
            names.append((disk, f"sr{cdroms}"))
            cdroms += 1
        else:
            prefix = "sd" if machine.disk_bus is DiskDriver.SCSI else "vd"
            names.append((disk, f"{prefix}{letters[disks]}"))
            disks += 1
    return tuple(names)
