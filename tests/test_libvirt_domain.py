"""The libvirt backend's pure Machine -> domain XML function: golden files, libvirt's own schema, errors.

Every golden case is also checked with ``virt-xml-validate`` (libvirt's RelaxNG schema, package
libvirt-clients), so a golden file cannot drift into XML libvirt would refuse.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import attrs
import pytest
from vmpod_libvirt.domain import (
    MAX_DISKS,
    METADATA_NS,
    DomainMetadata,
    disk_targets,
    domain_type,
    domain_xml,
    metadata_xml,
    parse_metadata,
)

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

UUID = uuid.UUID("6c3d1f0e-35a4-5b0c-9d7e-0123456789ab")
POD = "/var/lib/vmpod/pods/default_web-0"
CREATED = 1_700_000_000_123_456_789


def root(**changes: object) -> Disk:
    disk = Disk(name="root", path=f"{POD}/root.qcow2", format=DiskFormat.QCOW2, role=DiskRole.ROOT,
                serial="vmpod-root")
    return attrs.evolve(disk, **changes)


def seed() -> Disk:
    return Disk(name="seed", path=f"{POD}/seed.iso", format=DiskFormat.RAW, role=DiskRole.SEED, read_only=True,
                cdrom=True, serial="vmpod-seed")


def machine(**changes: object) -> Machine:
    base = Machine(
        name="virtlet-6c3d1f0e-35a4-web", uuid=UUID, memory_bytes=512 << 20, vcpus=1, disk_bus=DiskDriver.SCSI,
        disks=(root(), seed()), serial_log="/var/log/pods/default_web-0_1234/web/0.log",
        runtime_dir=f"{POD}/run",
        labels={MARKER_LABEL: "true", "io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "default"},
        nics=(Nic(mac="52:54:00:89:ab:cd"),),
    )
    return attrs.evolve(base, **changes)


def volume(name: str, *, block: bool = False, fmt: DiskFormat = DiskFormat.QCOW2) -> Disk:
    path = f"/dev/loop{name[-1]}" if block else f"{POD}/volumes/{name}.{fmt.value}"
    return Disk(name=name, path=path, format=fmt, role=DiskRole.VOLUME, block=block, serial=f"vmpod-{name}")


CASES: dict[str, tuple[Machine, str]] = {
    # Virtlet's plain domain: SCSI root + seed CD-ROM, VNC, one user NIC; no KVM here.
    "plain_scsi_tcg": (machine(), "tcg"),
    # virtio-blk with a qcow2 volume, a raw block volume and the seed; CPU limits; host-model CPU
    # with KVM (Virtlet's nested-virtualization form); 9p shares; no VNC.
    "virtio_volumes_kvm": (machine(
        disk_bus=DiskDriver.VIRTIO, vcpus=2, memory_bytes=1 << 30,
        disks=(root(), volume("vol1", block=True, fmt=DiskFormat.RAW), volume("data"), seed()),
        cpu_tune=CPUTune(shares=512, period=100000, quota=12500), cpu_model=CPUModel.HOST_MODEL,
        filesystems=(Filesystem(tag="cache", source="/var/lib/vmpod/fs/cache"),
                     Filesystem(tag="config", source="/srv/config", read_only=True)),
        vnc=False), "kvm"),
    # The same host-model CPU without KVM: libvirt's "maximum" mode, no vmx.
    "host_model_tcg": (machine(cpu_model=CPUModel.HOST_MODEL), "tcg"),
    # VirtletLibvirtCPUSetting (custom model, topology with room for more vCPUs, features) wins over
    # VirtletCPUModel; VirtletSystemUUID as SMBIOS; a virtiofs share; a tap NIC with an MTU.
    "libvirt_cpu_smbios_virtiofs": (machine(
        vcpus=3, smbios_uuid=UUID, cpu_model=CPUModel.HOST_MODEL,
        libvirt_cpu=LibvirtCPU(mode=CPUModelMode.CUSTOM, match="exact", model="Westmere", model_fallback="allow",
                               vendor="Intel", topology=CPUTopology(sockets=1, cores=2, threads=2),
                               features=(CPUFeature(name="aes"), CPUFeature(name="x2apic", policy="disable"))),
        filesystems=(Filesystem(tag="shared", source="/srv/shared", driver=FilesystemDriver.VIRTIOFS),),
        nics=(Nic(mac="52:54:00:89:ab:cd", mode=NetworkMode.TAP, tap="tap-web0", mtu=1450),)), "kvm"),
    # Port forwards (hostPort): passt, bound to loopback.
    "port_forwards": (machine(nics=(Nic(mac="52:54:00:89:ab:cd", forwards=(
        PortForward(guest_port=22, host_port=2222), PortForward(guest_port=53, host_port=5353, protocol="udp"))),)),
        "tcg"),
    # A persistent root (devicePath: /) on SCSI: a storage slice of the raw device after its header sector.
    "persistent_root": (machine(disks=(
        Disk(name="rootpv", path="/dev/loop3", format=DiskFormat.RAW, role=DiskRole.ROOT, block=True,
             serial="vmpod-root", offset=512, size=(1 << 30) - 512), seed())), "tcg"),
    # No seed, no NIC, CPU shares only (no limit).
    "no_seed_no_nic": (machine(disks=(root(),), nics=(), cpu_tune=CPUTune(shares=1024)), "tcg"),
}


def validate(xml: str, tmp_path: Path) -> None:
    """``virt-xml-validate`` (libvirt's domain schema) accepts ``xml``."""
    tool = shutil.which("virt-xml-validate")
    assert tool, "virt-xml-validate is missing (Debian package libvirt-clients)"
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    result = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"libvirt's schema refuses the domain:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_xml_golden_and_valid(case: str, golden: Golden, tmp_path: Path) -> None:
    the_machine, accelerator = CASES[case]
    xml = domain_xml(the_machine, accelerator, created_at=CREATED)
    golden.check(f"libvirt/{case}.xml", xml)
    validate(xml, tmp_path)
    assert domain_xml(the_machine, accelerator, created_at=CREATED) == xml, "not deterministic"


def test_virt_xml_validate_really_refuses_bad_xml(tmp_path: Path) -> None:
    """The schema check above can fail: a disk without a target is refused."""
    tree = ET.fromstring(domain_xml(machine(), "tcg"))
    disk = tree.find("devices/disk")
    assert disk is not None
    target = disk.find("target")
    assert target is not None
    disk.remove(target)
    with pytest.raises(AssertionError, match="refuses"):
        validate(ET.tostring(tree, encoding="unicode"), tmp_path)


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def test_domain_type_follows_the_accelerator() -> None:
    assert parse(domain_xml(machine(), "kvm")).get("type") == "kvm"
    assert parse(domain_xml(machine(), "tcg")).get("type") == "qemu"
    assert domain_type("kvm") == "kvm"
    with pytest.raises(BackendError, match="unknown accelerator 'hvf'"):
        domain_xml(machine(), "hvf")


def test_essentials_of_virtlets_domain() -> None:
    tree = parse(domain_xml(machine(cpu_tune=CPUTune(shares=100, period=100000, quota=25000 // 2), vcpus=2), "tcg"))
    assert tree.findtext("name") == "virtlet-6c3d1f0e-35a4-web"
    assert tree.findtext("uuid") == str(UUID)
    memory = tree.find("memory")
    assert memory is not None
    assert (memory.get("unit"), memory.text) == ("b", str(512 << 20))
    assert tree.findtext("vcpu") == "2"
    assert [(e.tag, e.text) for e in tree.iterfind("cputune/*")] == [("shares", "100"), ("period", "100000"),
                                                                     ("quota", "12500")]
    assert tree.find("features/acpi") is not None
    assert (tree.findtext("on_poweroff"), tree.findtext("on_reboot")) == ("destroy", "restart")
    assert tree.find("devices/controller[@type='scsi'][@model='virtio-scsi']") is not None
    graphics = tree.find("devices/graphics")
    assert graphics is not None
    assert (graphics.get("type"), graphics.get("listen")) == ("vnc", "127.0.0.1")
    assert [e.get("address") for e in graphics.iterfind("listen")] == ["127.0.0.1"]
    log = tree.find("devices/serial[@type='pty']/log")
    assert log is not None
    assert (log.get("file"), log.get("append")) == (f"{POD}/run/serial.raw", "on")


def test_disk_order_targets_and_addresses() -> None:
    disks = (root(), volume("vol1", block=True, fmt=DiskFormat.RAW), volume("data"), seed())
    scsi = parse(domain_xml(machine(disks=disks), "tcg"))
    got = [(d.get("device"), d.findtext("serial"), d.find("target").get("dev"),  # type: ignore[union-attr]
            d.find("address").get("unit")) for d in scsi.iterfind("devices/disk")]  # type: ignore[union-attr]
    assert got == [("disk", "vmpod-root", "sda", "0"), ("disk", "vmpod-vol1", "sdb", "1"),
                   ("disk", "vmpod-data", "sdc", "2"), ("cdrom", "vmpod-seed", "sdd", "3")]
    virtio = parse(domain_xml(machine(disks=disks, disk_bus=DiskDriver.VIRTIO), "tcg"))
    got = [(d.get("device"), d.find("target").get("dev"), d.find("address").get("bus"),  # type: ignore[union-attr]
            d.find("address").get("slot")) for d in virtio.iterfind("devices/disk")]  # type: ignore[union-attr]
    assert got == [("disk", "vda", "0x01", "0x01"), ("disk", "vdb", "0x01", "0x02"), ("disk", "vdc", "0x01", "0x03"),
                   ("disk", "vdd", "0x01", "0x04")]
    seed_disk = virtio.findall("devices/disk")[-1]
    assert seed_disk.find("readonly") is not None, "the seed is read-only on virtio too"
    block = virtio.findall("devices/disk")[1]
    assert block.get("type") == "block"
    assert block.find("source").get("dev") == "/dev/loop1"  # type: ignore[union-attr]
    assert [d.find("boot") is not None for d in virtio.iterfind("devices/disk")] == [True, False, False, False]


@pytest.mark.parametrize("bus", [DiskDriver.SCSI, DiskDriver.VIRTIO])
def test_too_many_disks_for_the_bus(bus: DiskDriver) -> None:
    limit = MAX_DISKS[bus]
    full = (root(), *(volume(f"v{i}") for i in range(limit - 2)), seed())
    assert len(disk_targets(machine(disks=full, disk_bus=bus))) == limit
    last = disk_targets(machine(disks=full, disk_bus=bus))[-1][1]
    assert last == ("sdz" if bus is DiskDriver.SCSI else "vdu")
    with pytest.raises(BackendError, match=f"too many {bus.value} block devices: {limit + 1} .*at most {limit}"):
        domain_xml(machine(disks=(*full, volume("one-more")), disk_bus=bus), "tcg")


def test_refused_machines() -> None:
    with pytest.raises(BackendError, match=r"SMBIOS UUID .* must be the machine UUID"):
        domain_xml(machine(smbios_uuid=uuid.uuid4()), "tcg")
    with pytest.raises(BackendError, match="must be an absolute path"):
        domain_xml(machine(disks=(root(path="root.qcow2"),)), "tcg")
    with pytest.raises(BackendError, match="must be an absolute path"):
        domain_xml(machine(runtime_dir="run"), "tcg")
    with pytest.raises(BackendError, match="network namespace"):
        domain_xml(machine(nics=(Nic(mac="52:54:00:00:00:01", mode=NetworkMode.TAP, tap="t0", netns="/run/netns/x"),)),
                   "tcg")
    with pytest.raises(BackendError, match="names no tap device"):
        domain_xml(machine(nics=(Nic(mac="52:54:00:00:00:01", mode=NetworkMode.TAP),)), "tcg")
    with pytest.raises(BackendError, match="room for 2 vCPUs, not 3"):
        domain_xml(machine(vcpus=3, libvirt_cpu=LibvirtCPU(topology=CPUTopology(sockets=1, cores=2))), "tcg")
    with pytest.raises(BackendError, match="needs memory"):
        domain_xml(machine(memory_bytes=0), "tcg")


def test_metadata_marks_vmpods_domains_and_round_trips() -> None:
    xml = domain_xml(machine(), "tcg", created_at=CREATED)
    meta = parse_metadata(xml)
    assert meta == DomainMetadata(created_at=CREATED, labels=dict(machine().labels), runtime_dir=f"{POD}/run",
                                  serial_log=machine().serial_log)
    assert MARKER_LABEL in meta.labels
    unmarked = parse_metadata(domain_xml(machine(labels={"app": "x"}), "tcg"))
    assert unmarked is not None
    assert MARKER_LABEL not in unmarked.labels
    # libvirt hands the element back on its own, under whatever prefix it likes.
    element = ET.tostring(metadata_xml(meta), encoding="unicode").replace("vmpod:", "v:").replace("xmlns:vmpod",
                                                                                                 "xmlns:v")
    assert parse_metadata(element) == meta
    # ... or with no namespace at all (what virDomainGetMetadata returns).
    bare = ET.tostring(metadata_xml(meta), encoding="unicode").replace("vmpod:", "").replace(
        f' xmlns:vmpod="{METADATA_NS}"', "")
    assert bare.startswith("<machine><created-at>")
    assert parse_metadata(bare) == meta
    assert parse_metadata("<domain type='qemu'><name>theirs</name></domain>") is None
    assert parse_metadata(f"<domain><metadata><other xmlns='{METADATA_NS}x'/></metadata></domain>") is None
    assert parse_metadata("not xml") is None
