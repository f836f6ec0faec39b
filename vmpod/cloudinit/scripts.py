"""The shell scripts the seed carries: block-device symlinks and volume mounts.

Both are POSIX ``sh`` (dash, busybox), need no udev and are safe to run any
number of times:

* ``/etc/cloud/symlink-devs.sh`` makes each block ``volumeDevices`` path
  (``/dev/testpvc``) a symlink to the disk's kernel device;
* ``/etc/cloud/mount-volumes.sh`` mounts each flexvolume disk and each 9p
  share at its ``mountPath`` unless something is mounted there already; a
  partition that does not exist (a blank qcow2 flexvolume in a guest without
  cloud-init to partition it) is reported on stderr and skipped, the other
  mounts still happen;
* :func:`volume_script` is both in one, what ``@virtlet-mount-script@`` in a
  user-data script is replaced with.

A disk is found by its serial number in sysfs (``vmpod_disk BUS SERIAL``, a
function at the top of each script; ``VMPOD_SYSFS`` overrides ``/sys`` for
tests), so the scripts work on guests without udev, where the
``/dev/disk/by-id`` links used in cloud-init ``mounts`` do not exist.  Every
path and tag is shell-quoted (Virtlet left the ``mount`` target unquoted).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import attrs

from vmpod.cloudinit.disks import GuestDisk

__all__ = [
    "DISK_LOOKUP_FUNCTION",
    "MOUNT_SCRIPT_PATH",
    "SYMLINK_SCRIPT_PATH",
    "BlockMount",
    "NinePMount",
    "mount_script",
    "symlink_script",
    "volume_script",
]

SYMLINK_SCRIPT_PATH = "/etc/cloud/symlink-devs.sh"
MOUNT_SCRIPT_PATH = "/etc/cloud/mount-volumes.sh"

#: ``vmpod_disk BUS SERIAL`` prints ``/dev/NAME`` of the disk with that serial, read from sysfs.
DISK_LOOKUP_FUNCTION = """\
# vmpod_disk BUS SERIAL: print /dev/NAME of the disk with serial number SERIAL (no udev needed).
vmpod_disk() {
  for vmpod_block in "${VMPOD_SYSFS:-/sys}"/block/*; do
    if [ "$1" = virtio ]; then
      vmpod_serial=$(cat "$vmpod_block/serial" 2>/dev/null)
    else
      vmpod_serial=$(tail -c +5 "$vmpod_block/device/vpd_pg80" 2>/dev/null)
    fi
    if [ -n "$vmpod_serial" ] && [ "$vmpod_serial" = "$2" ]; then
      echo "/dev/${vmpod_block##*/}"
      return 0
    fi
  done
  echo "vmpod: no $1 disk with serial $2" >&2
  return 1
}
"""


@attrs.frozen
class BlockMount:
    """Mount partition ``partition`` of ``disk`` (0: the whole disk) at ``path``."""

    disk: GuestDisk
    partition: int
    path: str
    read_only: bool = False


@attrs.frozen
class NinePMount:
    """Mount the 9p share ``tag`` at ``path``."""

    tag: str
    path: str
    read_only: bool = False


def _q(text: str) -> str:
    return shlex.quote(text)


def _lookup(disk: GuestDisk) -> str:
    return f"vmpod_dev=$(vmpod_disk {disk.bus.value} {_q(disk.serial)})"


def _script(lines: Sequence[str], *, needs_lookup: bool) -> str:
    head = "#!/bin/sh\n" + (DISK_LOOKUP_FUNCTION if needs_lookup else "")
    return head + "".join(line + "\n" for line in lines)


def _symlink_line(disk: GuestDisk, device_path: str) -> str:
    return f"{_lookup(disk)} && ln -fs \"$vmpod_dev\" {_q(device_path)}"


def symlink_script(links: Sequence[tuple[GuestDisk, str]]) -> str | None:
    """The symlink script for ``(disk, devicePath)`` pairs, or None when there are none."""
    if not links:
        return None
    return _script([_symlink_line(disk, path) for disk, path in links], needs_lookup=True)


def _mount_line(mount: BlockMount | NinePMount) -> str:
    target = _q(mount.path)
    guard = f"if ! mountpoint -q {target}; then mkdir -p {target} && "
    if isinstance(mount, NinePMount):
        options = "trans=virtio,ro" if mount.read_only else "trans=virtio"
        return guard + f"mount -t 9p -o {options} {_q(mount.tag)} {target}; fi"
    read_only = "-o ro " if mount.read_only else ""
    if not mount.partition:
        return guard + f"{_lookup(mount.disk)} && mount {read_only}\"$vmpod_dev\" {target}; fi"
    # A blank disk (a qcow2 flexvolume in a guest without cloud-init's disk_setup) has no partition:
    # say so instead of letting mount fail on a missing device node.
    part = mount.partition
    check = (f"{{ [ -b \"$vmpod_dev\"{part} ] || {{ echo \"vmpod: $vmpod_dev has no partition {part} "
             f"(a blank disk?), not mounting\" {target} >&2; false; }}; }}")
    return guard + f"{_lookup(mount.disk)} && {check} && mount {read_only}\"$vmpod_dev\"{part} {target}; fi"


def mount_script(mounts: Sequence[BlockMount | NinePMount]) -> str | None:
    """The mount script for ``mounts``, or None when there are none."""
    return volume_script((), mounts)


def volume_script(links: Sequence[tuple[GuestDisk, str]], mounts: Sequence[BlockMount | NinePMount]) -> str | None:
    """One script making the symlinks, then the mounts (``@virtlet-mount-script@``); None when there are none."""
    if not links and not mounts:
        return None
    lines = [_symlink_line(disk, path) for disk, path in links] + [_mount_line(m) for m in mounts]
    return _script(lines, needs_lookup=bool(links) or any(isinstance(m, BlockMount) for m in mounts))
