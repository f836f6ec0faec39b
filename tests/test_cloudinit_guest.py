"""End to end: a vmpod seed configures a real Debian guest (real cloud-init, sshd), NoCloud and ConfigDrive.

One boot per layout, under qemu with user-mode networking.  The pod asks for
everything the seed can do, and the test checks each over ssh: hostname, the
``VirtletSSHKeys`` key, ``write_files`` (user, ConfigMap and Secret files with
their modes and owners), ``/etc/cloud/environment``, ``runcmd``, a static
network configuration matched by MAC (an address, an extra address and an MTU
that DHCP would not give), a block device symlinked and mounted by its
serial number, and two blank qcow2 flexvolume disks that the seed's
``disk_setup``/``fs_setup`` partition (MBR, ext4 on partition 1, Virtlet's
layout) or format whole (``part: "0"``) on first boot, mounted through
cloud-init ``mounts``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cloudinit_cases import claim, config_map, manifest, secret
from tests.support.guestvm import DEFAULT_MAC, GuestVM, boot_guest, make_ssh_key
from vmpod import qcow2
from vmpod.cloudinit import default_disk_map, from_cni_result, generate_seed, write_seed
from vmpod.cloudinit.disks import disk_serial
from vmpod.guests import build_debian_cloud_guest
from vmpod.manifest import load_manifest_text
from vmpod.model import CloudInitImageType, DiskDriver, VMPod

ENV = {"GREETING": "hello world", "QUOTED": "it's \"quoted\" $HOME", "MULTI": "line one\nline two"}
USER_DATA = """\
write_files:
- path: /etc/vmpod-test/owned.txt
  content: "owned by nobody\\n"
  owner: nobody:nogroup
  permissions: "0640"
runcmd:
- echo ran-as-string > /var/tmp/vmpod-runcmd
- [sh, -c, "echo ran-as-list > /var/tmp/vmpod-runcmd-list"]
mounts:
- [/dev/vmpod-block, /mnt/block]
"""

#: What the CNI result would say for qemu's user-mode network, plus what only the seed can set:
#: an MTU DHCP does not send, and a second address.
CNI_RESULT: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": DEFAULT_MAC, "mtu": 1400, "sandbox": "/var/run/netns/test"}],
    "ips": [{"address": "10.0.2.15/24", "gateway": "10.0.2.2", "interface": 0},
            {"address": "192.168.77.5/24", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.0.2.3"], "search": ["vmpod.test"]},
}


def _pod(name: str, kind: CloudInitImageType, bus: DiskDriver, public_key: str) -> VMPod:
    text = manifest(
        name,
        annotations={"VirtletSSHKeys": public_key, "VirtletCloudInitImageType": kind.value,
                     "VirtletDiskDriver": bus.value, "VirtletCloudInitUserData": USER_DATA},
        container={
            "env": [{"name": k, "value": v} for k, v in ENV.items()],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                             {"name": "creds", "mountPath": "/etc/creds"},
                             {"name": "data", "mountPath": "/data"},
                             {"name": "whole", "mountPath": "/whole"}],
            "volumeDevices": [{"name": "block", "devicePath": "/dev/vmpod-block"}],
        },
        volumes=[
            {"name": "config", "configMap": {"name": "app", "defaultMode": 0o600}},
            {"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "token", "path": "token",
                                                                          "mode": 0o400}]}},
            {"name": "data", "flexVolume": {"driver": "virtlet/flexvolume_driver",
                                            "options": {"type": "qcow2", "capacity": "64MiB"}}},
            {"name": "whole", "flexVolume": {"driver": "virtlet/flexvolume_driver",
                                             "options": {"type": "qcow2", "capacity": "32MiB", "part": "0"}}},
            {"name": "block", "persistentVolumeClaim": {"claimName": "block"}},
        ],
        objects=[
            config_map("app", {"app.conf": "[main]\nkey = value\n"}),
            secret("creds", {"token": b"t0k3n"}),
            *claim("block", "Block"),
        ],
    )
    (pod,) = load_manifest_text(text).pods
    return pod


def _ext4_image(path: Path, marker: str, tmp_path: Path) -> None:
    """A 16 MiB ext4 filesystem (no partition table) holding ``marker.txt``."""
    content = tmp_path / f"{path.stem}-content"
    content.mkdir()
    (content / "marker.txt").write_text(marker + "\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), "-L", path.stem, str(path), "16M"], check=True,
                   capture_output=True)


def _disk_args(pod: VMPod, bus: DiskDriver, images: dict[str, Path]) -> list[str]:
    """qemu arguments attaching ``images`` (volume name -> raw or qcow2 file) with the serials of the disk map."""
    args: list[str] = []
    for index, disk in enumerate(default_disk_map(pod).disks):
        drive = f"vol{index}"
        image = images[disk.volume]
        image_format = "qcow2" if image.suffix == ".qcow2" else "raw"
        args += ["-drive", f"file={image},if=none,id={drive},format={image_format},cache=unsafe"]
        if bus is DiskDriver.VIRTIO:
            args += ["-device", f"virtio-blk-pci,drive={drive},serial={disk.serial},addr={0x7 + index:#x}"]
        else:  # on the virtio-scsi controller the seed cdrom already uses (target 0)
            args += ["-device", f"scsi-hd,drive={drive},bus=scsi0.0,scsi-id={index + 1},serial={disk.serial}"]
    return args


def _run(vm: GuestVM, key: Path, command: str) -> str:
    result = vm.ssh(f"sudo sh -c {shlex.quote(command)}", key=key, user="debian", timeout=180)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


def _disk_report(vm: GuestVM, key: Path) -> str:
    """The guest's disks and what cloud-init logged about preparing them (for assertion messages)."""
    command = ("lsblk -o NAME,TYPE,PTTYPE,FSTYPE,MOUNTPOINT; "
               "grep -E 'disk_setup|fs_setup|mkfs|sfdisk|partition|Failed' /var/log/cloud-init.log | tail -40")
    result = vm.ssh(f"sudo sh -c {shlex.quote(command)}", key=key, user="debian", timeout=180)
    return result.stdout + result.stderr


@pytest.mark.guest
@pytest.mark.parametrize(("kind", "bus"), [(CloudInitImageType.NOCLOUD, DiskDriver.VIRTIO),
                                           (CloudInitImageType.CONFIGDRIVE, DiskDriver.SCSI)],
                         ids=["nocloud-virtio", "configdrive-scsi"])
def test_seed_configures_a_real_debian_guest(tmp_path: Path, kind: CloudInitImageType, bus: DiskDriver) -> None:
    image = build_debian_cloud_guest()
    key, public_key = make_ssh_key(tmp_path / "ssh")
    name = f"seed-{kind.value}"
    pod = _pod(name, kind, bus, public_key)
    documents = generate_seed(pod, from_cni_result(CNI_RESULT))
    assert documents.image_type is kind
    seed = tmp_path / "seed.iso"
    write_seed(documents, seed)
    # The flexvolume disks are blank, as the runtime's volume handler creates them.
    images = {"data": tmp_path / "data.qcow2", "whole": tmp_path / "whole.qcow2", "block": tmp_path / "block.raw"}
    qcow2.write_blank(images["data"], 64 << 20)
    qcow2.write_blank(images["whole"], 32 << 20)
    _ext4_image(images["block"], "block device", tmp_path)

    started = time.monotonic()
    with boot_guest(image, seed, workdir=tmp_path / "vm", extra_args=_disk_args(pod, bus, images)) as vm:
        waited = vm.wait_for_ssh(key, user="debian", timeout=600)
        status = vm.ssh("cloud-init status --wait --long", key=key, user="debian", timeout=600)
        print(f"{kind.value}: ssh after {waited:.0f} s, cloud-init done after {time.monotonic() - started:.0f} s "
              f"({vm.accelerator})")
        assert status.returncode == 0, status.stdout + status.stderr + vm.console_text()[-3000:]
        assert "status: done" in status.stdout
        source = "DataSourceConfigDrive" if kind is CloudInitImageType.CONFIGDRIVE else "DataSourceNoCloud"
        assert source in status.stdout

        # Identity: the hostname is the pod name, the instance id <name>.<namespace>.
        assert _run(vm, key, "hostname").strip() == name
        assert _run(vm, key, "cat /var/lib/cloud/data/instance-id").strip() == f"{name}.default"
        # The VirtletSSHKeys key logged in as the image's default user (above); it is the only key there.
        assert _run(vm, key, "cat /home/debian/.ssh/authorized_keys").split("\n")[0] == public_key

        # write_files: the user's file with owner and mode, the ConfigMap and Secret files with theirs.
        assert _run(vm, key, "stat -c '%U:%G %a' /etc/vmpod-test/owned.txt").strip() == "nobody:nogroup 640"
        assert _run(vm, key, "cat /etc/vmpod-test/owned.txt") == "owned by nobody\n"
        assert _run(vm, key, "stat -c '%U:%G %a' /etc/app/app.conf").strip() == "root:root 600"
        assert _run(vm, key, "cat /etc/app/app.conf") == "[main]\nkey = value\n"
        assert _run(vm, key, "stat -c '%a' /etc/creds/token; cat /etc/creds/token") == "400\nt0k3n"

        # The environment sources back to the exact values (spaces, quotes, $, newlines).
        printed = _run(vm, key, ". /etc/cloud/environment && printf '%s\\0' \"$GREETING\" \"$QUOTED\" \"$MULTI\"")
        assert printed.split("\0")[:-1] == list(ENV.values())

        # runcmd ran, both forms, and the generated commands after them.
        assert _run(vm, key, "cat /var/tmp/vmpod-runcmd /var/tmp/vmpod-runcmd-list") == "ran-as-string\nran-as-list\n"
        assert _run(vm, key, "readlink /var/lib/cloud/scripts/per-boot/symlink-devs.sh").strip() == \
            "/etc/cloud/symlink-devs.sh"

        # Disks found by serial: the udev by-id paths vmpod writes exist, the block device is symlinked
        # (by the sysfs lookup) and mounted through the user's rewritten mounts entry, and the
        # blank flexvolumes were partitioned and formatted by disk_setup/fs_setup, then mounted through
        # cloud-init's mounts (and the mount script found them mounted).
        for disk in default_disk_map(pod).disks:
            assert disk.serial == disk_serial(disk.volume)
            resolved = _run(vm, key, f"readlink -f {disk.path}").strip()
            assert resolved.startswith("/dev/vd" if bus is DiskDriver.VIRTIO else "/dev/sd"), resolved
            if disk.volume == "block":
                assert _run(vm, key, "readlink -f /dev/vmpod-block").strip() == resolved
        assert _run(vm, key, "cat /mnt/block/marker.txt") == "block device\n"
        disks = {disk.volume: disk for disk in default_disk_map(pod).disks}
        report = _disk_report(vm, key)
        data_disk = _run(vm, key, f"readlink -f {disks['data'].path}").strip()
        assert _run(vm, key, f"blkid -p -o value -s PTTYPE {data_disk}").strip() == "dos", report
        assert _run(vm, key, f"lsblk -n -o TYPE {data_disk}").split() == ["disk", "part"], report  # one partition
        assert _run(vm, key, "findmnt -n -o SOURCE,FSTYPE /data").split() == [data_disk + "1", "ext4"], report
        whole_disk = _run(vm, key, f"readlink -f {disks['whole'].path}").strip()
        assert _run(vm, key, "findmnt -n -o SOURCE,FSTYPE /whole").split() == [whole_disk, "ext4"], report
        _run(vm, key, "echo written > /data/marker.txt && echo whole > /whole/marker.txt && sync")
        assert _run(vm, key, "cat /data/marker.txt /whole/marker.txt") == "written\nwhole\n"
        fstab = [line.split()[:2] for line in _run(vm, key, "grep cloudconfig /etc/fstab").splitlines()]
        assert [disks["data"].path + "-part1", "/data"] in fstab
        assert [disks["whole"].path, "/whole"] in fstab
        # The mount script, run again, finds both mounted and does nothing.
        assert _run(vm, key, "/etc/cloud/mount-volumes.sh && echo ok") == "ok\n"

        # The network configuration came from the seed: static addresses (not a DHCP lease), the
        # extra address and the MTU only the seed sets, on the interface with the CNI MAC.
        links = json.loads(_run(vm, key, "ip -j link show"))
        (link,) = [entry for entry in links if entry.get("address") == DEFAULT_MAC]
        ifname = link["ifname"]
        assert link["mtu"] == 1400
        if kind is CloudInitImageType.NOCLOUD:
            assert ifname == "eth0"  # NoCloud v1 names the interface after the CNI one
        addresses = json.loads(_run(vm, key, f"ip -j -4 addr show dev {ifname}"))[0]["addr_info"]
        by_address = {a["local"]: a for a in addresses}
        assert set(by_address) == {"10.0.2.15", "192.168.77.5"}
        assert by_address["10.0.2.15"]["prefixlen"] == 24
        assert not by_address["10.0.2.15"].get("dynamic")
        assert by_address["10.0.2.15"]["valid_life_time"] == 4294967295  # forever: not a lease
        rendered = _run(vm, key, "cat /etc/network/interfaces.d/50-cloud-init")
        assert f"iface {ifname} inet static\n    address 10.0.2.15/24\n" in rendered
        assert "dns-nameservers 10.0.2.3" in rendered
        assert "dns-search vmpod.test" in rendered
        resolv = _run(vm, key, "cat /etc/resolv.conf")  # applied by ifupdown + resolvconf
        assert "nameserver 10.0.2.3" in resolv
        assert "search vmpod.test" in resolv  # slirp's DHCP sends no search domain: this is the seed's
        if kind is CloudInitImageType.NOCLOUD:
            assert _run(vm, key, "ip route show default").split()[:3] == ["default", "via", "10.0.2.2"]
        else:  # OpenStack keeps the default route in routes; Debian's cloud-init applies those with `route`
            assert "post-up route add default gw 10.0.2.2 || true" in rendered
        print(f"{kind.value}: checked after {time.monotonic() - started:.0f} s")
