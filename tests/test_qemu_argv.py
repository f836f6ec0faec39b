"""The qemu backend's Machine -> argv function: golden files, Virtlet's disk rules, refusals."""

from __future__ import annotations

import uuid

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vmpod_qemu.argv import QemuPaths, build_argv, cpu_option, disk_names, escape

from tests.conftest import Golden
from vmpod.errors import BackendError
from vmpod.machine import (
    MARKER_LABEL,
    CPUTune,
    Disk,
    DiskFormat,
    DiskRole,
    Filesystem,
    FilesystemDriver,
    Machine,
    NetworkMode,
    Nic,
    PortForward,
)
from vmpod.model import CPUFeature, CPUModel, CPUModelMode, CPUTopology, DiskDriver, LibvirtCPU

POD = "/var/lib/vmpod/pods/default_vm"
PATHS = QemuPaths("/var/lib/vmpod/backends/qemu/machines/vmpod-6e4bcb2b-1f2a-vm")
UUID = uuid.UUID("6e4bcb2b-1f2a-5b7e-9a43-2f0c1d2e3f40")

ROOT = Disk(name="root", path=f"{POD}/root.qcow2", format=DiskFormat.QCOW2, role=DiskRole.ROOT,
            serial="vmpod-root")
SEED = Disk(name="seed", path=f"{POD}/seed.iso", format=DiskFormat.RAW, role=DiskRole.SEED, read_only=True,
            cdrom=True, serial="vmpod-seed")


def machine(**changes: object) -> Machine:
    base = Machine(
        name="vmpod-6e4bcb2b-1f2a-vm",
        uuid=UUID,
        memory_bytes=512 * 1024 * 1024,
        vcpus=1,
        disk_bus=DiskDriver.SCSI,
        disks=(ROOT, SEED),
        serial_log=f"{POD}/vm_0.log",
        runtime_dir=f"{POD}/run",
        labels={MARKER_LABEL: "true"},
    )
    return attrs.evolve(base, **changes)


def render(argv: tuple[str, ...]) -> str:
    """One argument per line (options with their value), the way a reviewer reads a command line."""
    lines: list[str] = [argv[0]]
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("-") and arg != "--" and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
            lines.append(f"{arg} {argv[index + 1]}")
            index += 2
        else:
            lines.append(arg)
            index += 1
    return "\n".join(lines) + "\n"


VOLUME = Disk(name="data", path=f"{POD}/volumes/data.qcow2", format=DiskFormat.QCOW2, role=DiskRole.VOLUME,
              serial="vmpod-data")
BLOCK = Disk(name="pv", path="/dev/loop7", format=DiskFormat.RAW, role=DiskRole.VOLUME, block=True,
             serial="vmpod-pv")

CASES = {
    # Virtlet's plain domain: scsi disks, the seed CD-ROM last, VNC on loopback.
    "plain_scsi": machine(),
    # VirtletDiskDriver: virtio; the CD-ROM becomes a read-only virtio disk on the bridge.
    "virtio_disks": machine(disk_bus=DiskDriver.VIRTIO, disks=(ROOT, BLOCK, VOLUME, SEED), vcpus=2,
                            memory_bytes=1024**3),
    "scsi_volumes": machine(disks=(ROOT, BLOCK, VOLUME, SEED)),
    # 9p shares (read-only and read-write), user networking with loopback port forwards, no VNC.
    "shares_and_user_net": machine(
        vnc=False,
        filesystems=(Filesystem(tag="data", source=f"{POD}/volumes/data"),
                     Filesystem(tag="config", source="/srv/config", read_only=True)),
        nics=(Nic(mac="52:54:00:12:34:56", forwards=(PortForward(guest_port=22, host_port=2222),
                                                     PortForward(guest_port=53, host_port=5353, protocol="udp"))),),
    ),
    # CNI-style tap in the pod's network namespace: qemu starts through nsenter.
    "tap_in_netns": machine(nics=(Nic(mac="02:42:ac:11:00:02", mode=NetworkMode.TAP, tap="tap0", mtu=1450,
                                      netns="/var/run/netns/pod-1"),), vnc=False),
    # VirtletCPUModel host-model, a fixed SMBIOS UUID, CPU bandwidth (cgroups: not on the command line).
    "host_model_smbios": machine(cpu_model=CPUModel.HOST_MODEL, smbios_uuid=UUID, vcpus=4,
                                 cpu_tune=CPUTune(shares=1024, period=100000, quota=25000)),
    # VirtletLibvirtCPUSetting: a custom model with features and a topology.
    "libvirt_cpu_custom": machine(
        vcpus=4,
        libvirt_cpu=LibvirtCPU(mode=CPUModelMode.CUSTOM, model="Skylake-Client",
                               features=(CPUFeature("vmx"), CPUFeature("hle", "disable"),
                                         CPUFeature("pcid", "optional")),
                               topology=CPUTopology(sockets=1, cores=2, threads=2)),
    ),
    # A persistent root (devicePath: /) on a virtio bus: the raw device after its header sector.
    "persistent_root": machine(disk_bus=DiskDriver.VIRTIO, disks=(
        Disk(name="rootpv", path="/dev/loop3", format=DiskFormat.RAW, role=DiskRole.ROOT, block=True,
             serial="vmpod_root", offset=512, size=(1 << 30) - 512), SEED)),
    # Commas in paths and names are doubled (qemu's escape); odd memory sizes round up to MiB.
    "escaped_values": machine(name="vm,odd", memory_bytes=300 * 1024 * 1024 + 1,
                              disks=(attrs.evolve(ROOT, path="/srv/a,b/root.qcow2", serial="s,1"),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_golden(case: str, golden: Golden) -> None:
    """The whole command line of each case, reviewed in tests/golden/qemu/."""
    golden.check(f"qemu/{case}.txt", render(build_argv(CASES[case], accel="tcg", paths=PATHS)))


def test_kvm_changes_only_the_accelerator_and_host_cpu() -> None:
    m = CASES["host_model_smbios"]
    tcg, kvm = build_argv(m, accel="tcg", paths=PATHS), build_argv(m, accel="kvm", paths=PATHS)
    diff = [(a, b) for a, b in zip(tcg, kvm, strict=True) if a != b]
    assert diff == [("pc,accel=tcg,usb=on", "pc,accel=kvm,usb=on"), ("max", "host")]


def test_disks_in_machine_order_with_virtlet_addresses() -> None:
    """scsi: LUN n of target 0; virtio: slot n+1 of the bridge on bus 1; the root disk boots."""
    scsi = build_argv(CASES["scsi_volumes"], accel="tcg", paths=PATHS)
    devices = [a for a in scsi if a.startswith(("scsi-hd", "scsi-cd"))]
    assert [d.split(",")[0] for d in devices] == ["scsi-hd", "scsi-hd", "scsi-hd", "scsi-cd"]
    assert [next(p for p in d.split(",") if p.startswith("lun=")) for d in devices] == [
        "lun=0", "lun=1", "lun=2", "lun=3"]
    assert "bootindex=1" in devices[0]
    assert all("bootindex" not in d for d in devices[1:])
    virtio = build_argv(CASES["virtio_disks"], accel="tcg", paths=PATHS)
    devices = [a for a in virtio if a.startswith("virtio-blk-pci")]
    assert [next(p for p in d.split(",") if p.startswith("addr=")) for d in devices] == [
        "addr=0x01", "addr=0x02", "addr=0x03", "addr=0x04"]
    assert all("bus=pci.1" in d for d in devices)
    seed_nodes = [a for a in virtio if "seed.iso" in a]
    assert seed_nodes
    assert all("read-only=on" in a for a in seed_nodes)
    assert [n for _, n in disk_names(CASES["scsi_volumes"])] == ["sda", "sdb", "sdc", "sr0"]
    assert [n for _, n in disk_names(CASES["virtio_disks"])] == ["vda", "vdb", "vdc", "vdd"]


def test_block_devices_and_read_only() -> None:
    argv = build_argv(CASES["scsi_volumes"], accel="tcg", paths=PATHS)
    assert "driver=host_device,filename=/dev/loop7,node-name=file1,read-only=off" in argv
    assert "driver=file,filename=/var/lib/vmpod/pods/default_vm/seed.iso,node-name=file3,read-only=on" in argv


def test_vnc_listens_on_loopback_only() -> None:
    argv = build_argv(machine(), accel="tcg", paths=PATHS)
    assert argv[argv.index("-vnc") + 1].startswith("127.0.0.1:")
    assert "-display" not in argv
    headless = build_argv(machine(vnc=False), accel="tcg", paths=PATHS)
    assert "-vnc" not in headless
    assert headless[headless.index("-display") + 1] == "none"


def test_port_forwards_bind_loopback() -> None:
    argv = build_argv(CASES["shares_and_user_net"], accel="tcg", paths=PATHS)
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:5353-:53"


def test_serial_console_goes_to_socket_and_raw_log() -> None:
    argv = build_argv(machine(), accel="tcg", paths=PATHS)
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert "socket,id=serial0,path=console.sock,server=on,wait=off,logfile=serial.raw,logappend=on" in chardevs
    assert "socket,id=qmp,path=qmp.sock,server=on,wait=off" in chardevs
    assert argv[argv.index("-pidfile") + 1] == f"{PATHS.directory}/qemu.pid"
    assert "-daemonize" in argv


@pytest.mark.parametrize(("bus", "limit"), [(DiskDriver.SCSI, 26), (DiskDriver.VIRTIO, 21)])
def test_too_many_disks(bus: DiskDriver, limit: int) -> None:
    disks = tuple(attrs.evolve(VOLUME, name=f"v{i}", path=f"/v/{i}.qcow2") for i in range(limit))
    build_argv(machine(disk_bus=bus, disks=disks), accel="tcg", paths=PATHS)
    with pytest.raises(BackendError, match=f"too many {bus.value} block devices: {limit + 1}"):
        build_argv(machine(disk_bus=bus, disks=(*disks, VOLUME)), accel="tcg", paths=PATHS)


def test_refusals() -> None:
    virtiofs = machine(filesystems=(Filesystem(tag="x", source="/x", driver=FilesystemDriver.VIRTIOFS),))
    with pytest.raises(BackendError, match="virtiofs shares are not supported"):
        build_argv(virtiofs, accel="tcg", paths=PATHS)
    small = machine(vcpus=8, libvirt_cpu=LibvirtCPU(topology=CPUTopology(sockets=1, cores=2, threads=2)))
    with pytest.raises(BackendError, match="room for 4 vCPUs, not 8"):
        build_argv(small, accel="tcg", paths=PATHS)
    with pytest.raises(BackendError, match="unknown accelerator"):
        build_argv(machine(), accel="hvf", paths=PATHS)
    two_netns = machine(nics=(Nic(mac="02:00:00:00:00:01", mode=NetworkMode.TAP, tap="tap0", netns="/a"),
                              Nic(mac="02:00:00:00:00:02", mode=NetworkMode.TAP, tap="tap1", netns="/b")))
    with pytest.raises(BackendError, match="different network namespaces"):
        build_argv(two_netns, accel="tcg", paths=PATHS)
    with pytest.raises(BackendError, match="names no tap device"):
        build_argv(machine(nics=(Nic(mac="02:00:00:00:00:01", mode=NetworkMode.TAP),)), accel="tcg", paths=PATHS)


def test_cpu_option_precedence() -> None:
    """VirtletLibvirtCPUSetting wins over VirtletCPUModel; host-like modes follow the accelerator."""
    both = machine(cpu_model=CPUModel.HOST_MODEL, libvirt_cpu=LibvirtCPU(mode=CPUModelMode.CUSTOM, model="Haswell"))
    assert cpu_option(both, "kvm") == "Haswell"
    assert cpu_option(machine(libvirt_cpu=LibvirtCPU(mode=CPUModelMode.HOST_PASSTHROUGH)), "kvm") == "host"
    assert cpu_option(machine(libvirt_cpu=LibvirtCPU(mode=CPUModelMode.MAXIMUM)), "tcg") == "max"
    assert cpu_option(machine(), "kvm") is None


@given(st.text(min_size=1, max_size=40))
def test_escape_round_trips_through_qemu_option_splitting(value: str) -> None:
    """qemu splits options at single commas; an escaped value comes back whole."""
    option = f"path={escape(value)},x=1"
    parts, current, index = [], "", 0
    while index < len(option):
        if option[index] == ",":
            if option[index + 1 : index + 2] == ",":
                current += ","
                index += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += option[index]
        index += 1
    parts.append(current)
    assert parts == [f"path={value}", "x=1"]


def test_argv_is_pure() -> None:
    """Same machine, same argv; the argv is a tuple of str (no shell, nothing to quote)."""
    m = CASES["shares_and_user_net"]
    first, second = build_argv(m, accel="tcg", paths=PATHS), build_argv(m, accel="tcg", paths=PATHS)
    assert first == second
    assert isinstance(first, tuple)
    assert all(isinstance(a, str) for a in first)
