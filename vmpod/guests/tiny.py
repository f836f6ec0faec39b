"""A tiny, fast-booting test guest every backend's tests can run.

:func:`build_tiny_guest` returns a bootable qcow2 disk image (built once, then
cached; see :func:`vmpod.guests.disk.cached_build`): an MBR and one partition
with extlinux, Debian's kernel, and an initramfs made of a static busybox, a
few kernel modules and an ``/init`` script (:data:`INIT_SCRIPT`).  It boots
in a few seconds under TCG and reports on the serial console (``ttyS0``)
lines a test can wait for::

    VMPOD-INIT <kernel release>
    VMPOD-SEED instance-id=<id> hostname=<name>       (or: VMPOD-SEED none)
    VMPOD-SEED-DEVICE <device> <label>
    VMPOD-DISK <kernel name> <bytes>[ serial=<serial>]  (one per disk, sorted by name)
    VMPOD-NIC <interface> <mac>                        (one per NIC)
    VMPOD-NET eth0 <ip>/<prefix>                       (or: VMPOD-NET eth0 none; only with an eth0)
    VMPOD-FS <tag> <entries...>                        (one per 9p share, mounted at /mnt/<tag>)
    VMPOD-FS-WRITE <tag> ok|denied                     (it tries to write <tag>/vmpod-guest-wrote)
    VMPOD-SSH dropbear keys=<count>                    (or: VMPOD-WARN dropbear failed: <why>)
    VMPOD-READY
    VMPOD-POWEROFF                                     (on the ACPI power button, then poweroff -f)

The seed is found by its ISO 9660 volume label, ``cidata`` (NoCloud: the
``instance-id`` and ``local-hostname`` of ``meta-data``, JSON or YAML) or
``config-2`` (ConfigDrive: ``uuid`` and ``hostname`` of
``openstack/latest/meta_data.json``), on a cdrom or a plain disk.  After
``VMPOD-READY`` an interactive busybox shell runs on the console.

Networking: when there is an ``eth0``, busybox ``udhcpc`` asks for a lease
(three one-second tries, then it gives up: a guest without DHCP still becomes
ready within seconds) and :data:`UDHCPC_SCRIPT` applies it.  Two services
listen on every address: busybox ``httpd`` on TCP port 80, serving an
``index.html`` that names the hostname, and dropbear on TCP port 22 (public
keys only, for ``root``; the keys are every ``ssh-*``/``ecdsa-*`` key in the
seed's meta-data, i.e. ``public-keys`` from ``VirtletSSHKeys``; the host key
is made on the first connection).  Dropbear and its libraries come from
Debian's ``dropbear-bin``, ``libtomcrypt1`` and ``libtommath1`` (downloaded
like the kernel) and, for the rest (libc, zlib...), from the host.

The kernel is Debian's generic ``linux-image-amd64``, not the smaller
``linux-image-cloud-amd64``: the cloud flavour is built without 9p
(``CONFIG_NET_9P`` is not set), and directory volumes are 9p shares.  The
kernel package is fetched with ``apt-get download`` (never installed on the
host) and unpacked with ``dpkg-deb``; the modules the guest needs are taken
from it and loaded with ``insmod`` in dependency order, worked out from each
module's ``.modinfo`` section (the package ships no ``modules.dep``).

The cache key hashes the recipe (init script, modules, command line, sizes),
the kernel and dropbear package *names* and the exact bytes of busybox, the
host's dynamic loader, ``mbr.bin`` and ``extlinux``.  The package versions
resolved at build time are not part of the key (resolving them costs an
``apt-cache`` call on every lookup): a cached image keeps its kernel and
dropbear until the cache is cleared or :data:`RECIPE_VERSION` changes.

Run ``python3 -m vmpod.guests.tiny`` to build (or find) the image and print its path.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import shutil
import struct
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs

from vmpod.guests.disk import (
    MBR_BOOT_CODE,
    BootEntry,
    GuestBuildError,
    cached_build,
    check_tools,
    default_cache_dir,
    file_digest,
    guest_main,
    inputs_key,
    make_boot_disk,
    run,
)

__all__ = [
    "INIT_SCRIPT",
    "KERNEL_CMDLINE",
    "KERNEL_PACKAGE",
    "MODULES",
    "SSHD_PACKAGES",
    "UDHCPC_SCRIPT",
    "CpioEntry",
    "build_tiny_guest",
    "main",
    "module_load_order",
    "tiny_guest_key",
    "write_newc",
]

log = logging.getLogger(__name__)

#: Bump when the build steps change in a way the constants below do not show (2: networking, httpd, dropbear).
RECIPE_VERSION: Final = 2
#: The Debian (meta)package whose kernel the guest boots.
KERNEL_PACKAGE: Final = "linux-image-amd64"
BUSYBOX: Final = Path("/bin/busybox")
EXTLINUX: Final = Path("/usr/bin/extlinux")
DISK_SIZE: Final = 64 * 1024**2
FS_LABEL: Final = "vmpod-tiny"
KERNEL_CMDLINE: Final = "console=ttyS0,115200n8 quiet panic=0 no_timer_check"

#: Modules the guest loads (their dependencies are added, in order): disks on virtio-blk and
#: virtio-scsi, the seed cdrom, 9p shares, NICs, and the ACPI power button.
MODULES: Final[tuple[str, ...]] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "isofs",
    "9pnet_virtio",
    "9p",
    "virtio_net",
    "button",
    "evdev",
)
#: ``insmod`` arguments (insmod, unlike modprobe, does not read them from the kernel command line).
MODULE_ARGS: Final[Mapping[str, str]] = {"scsi_mod": "scan=sync"}
#: Debian packages unpacked for the guest's SSH server: dropbear, and the libraries of its that a
#: Debian host may not have installed (the rest, libc and friends, are copied from the host).
SSHD_PACKAGES: Final[tuple[str, ...]] = ("dropbear-bin", "libtomcrypt1", "libtommath1")
#: The SSH server, inside the unpacked ``dropbear-bin``.
SSHD_PROGRAM: Final = "usr/sbin/dropbear"
#: The host's dynamic loader: it lists dropbear's libraries, and the guest runs dropbear with it.
DYNAMIC_LOADER: Final = Path("/lib64/ld-linux-x86-64.so.2")
#: Where the guest keeps dropbear's libraries (on the loader's built-in search path, as on Debian).
GUEST_LIB_DIR: Final = "lib/x86_64-linux-gnu"

#: ``/etc/udhcpc.script``: busybox ``udhcpc`` runs it on each DHCP event; on a lease it sets the
#: address, the default route and ``/etc/resolv.conf``, and notes ``<ip>/<prefix>`` in ``/run/net-<if>``.
UDHCPC_SCRIPT: Final = r"""#!/bin/sh
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "$ip/$mask" > "/run/net-$interface"
    ;;
esac
exit 0
"""
#: Small files of ``/etc`` (root's account, for dropbear).
ETC_FILES: Final[Mapping[str, str]] = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "group": "root:x:0:\n",
    "shells": "/bin/sh\n",
}

INIT_SCRIPT: Final = r"""#!/bin/busybox sh
# /init of vmpod's tiny test guest (PID 1): see vmpod/guests/tiny.py for the lines it prints.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /mnt /seed
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo "VMPOD-INIT $(uname -r)"

while read -r name args; do
  insmod "/lib/modules/$name.ko" $args || echo "VMPOD-WARN insmod $name failed"
done < /lib/modules/load-order

iso_label() {  # the volume label of an ISO 9660 file system on $1
  [ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || return 1
  dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | sed 's/ *$//'
}
find_seed() {
  for dev in /dev/sr* /dev/vd* /dev/sd*; do
    [ -b "$dev" ] || continue
    label=$(iso_label "$dev") || continue
    case "$label" in cidata|CIDATA|config-2|CONFIG-2) echo "$dev $label"; return 0;; esac
  done
  return 1
}
json_get() {  # json_get KEY FILE: the string value of "KEY" in a JSON document
  tr -d '\n' < "$2" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p"
}
yaml_get() {  # yaml_get KEY FILE: the value of a top-level "KEY: value" line
  sed -n "s/^$1:[[:space:]]*//p" "$2" | head -n 1 | sed "s/^[\"']//; s/[\"'][[:space:]]*$//"
}

seed=""
tries=0
while [ $tries -lt 20 ]; do
  seed=$(find_seed) && break
  tries=$((tries + 1))
  usleep 100000
done
hostname=tiny
if [ -n "$seed" ]; then
  set -- $seed
  mount -t iso9660 -o ro "$1" /seed
  if [ -f /seed/openstack/latest/meta_data.json ]; then
    iid=$(json_get uuid /seed/openstack/latest/meta_data.json)
    hostname=$(json_get hostname /seed/openstack/latest/meta_data.json)
  elif [ -f /seed/meta-data ]; then
    if [ "$(head -c 1 /seed/meta-data)" = "{" ]; then
      iid=$(json_get instance-id /seed/meta-data)
      hostname=$(json_get local-hostname /seed/meta-data)
    else
      iid=$(yaml_get instance-id /seed/meta-data)
      hostname=$(yaml_get local-hostname /seed/meta-data)
    fi
  fi
  echo "VMPOD-SEED instance-id=$iid hostname=$hostname"
  echo "VMPOD-SEED-DEVICE $1 $2"
else
  echo "VMPOD-SEED none"
fi
hostname "${hostname:-tiny}"

for b in /sys/block/*; do
  n=${b##*/}
  case "$n" in loop*|ram*|zram*) continue;; esac
  serial=$(cat "$b/serial" 2>/dev/null)
  if [ -z "$serial" ] && [ -f "$b/device/vpd_pg80" ]; then
    serial=$(dd if="$b/device/vpd_pg80" bs=1 skip=4 2>/dev/null | tr -d '\000 ')
  fi
  echo "VMPOD-DISK $n $(( $(cat "$b/size") * 512 ))${serial:+ serial=$serial}"
done

for n in /sys/class/net/*; do
  [ "${n##*/}" = lo ] && continue
  [ -e "$n" ] && echo "VMPOD-NIC ${n##*/} $(cat "$n/address")"
done

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  udhcpc -i eth0 -s /etc/udhcpc.script -t 3 -T 1 -A 1 -n -q >/dev/null 2>&1
  echo "VMPOD-NET eth0 $(cat /run/net-eth0 2>/dev/null || echo none)"
fi

for t in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
  [ -f "$t" ] || continue
  tag=$(tr -d '\000' < "$t")
  mkdir -p "/mnt/$tag"
  if mount -t 9p -o trans=virtio,version=9p2000.L "$tag" "/mnt/$tag"; then
    echo "VMPOD-FS $tag" $(ls -A "/mnt/$tag")
    if echo "$hostname" > "/mnt/$tag/vmpod-guest-wrote" 2>/dev/null; then
      echo "VMPOD-FS-WRITE $tag ok"
    else
      echo "VMPOD-FS-WRITE $tag denied"
    fi
  else
    echo "VMPOD-FS $tag mount-failed"
  fi
done

buttons=0
for e in /sys/class/input/event*; do
  [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
  buttons=$((buttons + 1))
  (
    dd if="/dev/input/${e##*/}" of=/dev/null bs=24 count=1 2>/dev/null
    echo
    echo "VMPOD-POWEROFF"
    sync
    umount -a -r 2>/dev/null
    poweroff -f
  ) &
done
[ $buttons -gt 0 ] || echo "VMPOD-WARN no ACPI power button"

mkdir -p /www /root/.ssh /etc/dropbear /dev/pts
mount -t devpts devpts /dev/pts
echo "<html><body><h1>$(hostname)</h1><p>vmpod tiny guest</p></body></html>" > /www/index.html
httpd -p 80 -h /www
for f in /seed/meta-data /seed/openstack/latest/meta_data.json; do
  [ -f "$f" ] && grep -oE '(ssh|ecdsa|sk)-[a-z0-9@.-]+ [A-Za-z0-9+/=]+' "$f"
done | sort -u > /root/.ssh/authorized_keys
chmod 700 /root /root/.ssh
chmod 600 /root/.ssh/authorized_keys
if /usr/sbin/dropbear -R -s -p 22 -P /run/dropbear.pid >/tmp/dropbear.log 2>&1; then
  echo "VMPOD-SSH dropbear keys=$(wc -l < /root/.ssh/authorized_keys)"
else
  echo "VMPOD-WARN dropbear failed: $(cat /tmp/dropbear.log)"
fi
echo "VMPOD-READY"
setsid cttyhack sh &
while :; do
  wait
  sleep 1
done
"""


# -- initramfs ---------------------------------------------------------------------------


@attrs.frozen
class CpioEntry:
    """One member of a ``newc`` cpio archive: a directory, regular file, symlink or device node."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """The ``newc`` (SVR4, no CRC) cpio archive of ``entries``, owned by root, dated 1970."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    def member(ino: int, path: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name)
        pad()
        out.write(data)
        pad()

    for ino, entry in enumerate(entries, start=1):
        member(ino, entry.path.lstrip("/"), entry.mode, entry.data, entry.rdev)
    member(0, "TRAILER!!!", 0, b"", (0, 0))
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()


def _modinfo(ko: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` ELF section (first value wins)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise GuestBuildError("not a 64-bit ELF kernel module")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + index * shentsize)
        return name, offset, size

    names_offset = section(shstrndx)[1]
    for index in range(shnum):
        name, offset, size = section(index)
        end = ko.index(b"\0", names_offset + name)
        if ko[names_offset + name : end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[offset : offset + size].split(b"\0"):
                key, sep, value = item.partition(b"=")
                if sep:
                    info.setdefault(key.decode(), value.decode(errors="replace"))
            return info
    return {}


def module_load_order(module_dir: Path, wanted: Sequence[str]) -> list[Path]:
    """The ``.ko`` files of ``wanted`` and their dependencies, each after what it depends on.

    ``module_dir`` is ``/lib/modules/<release>`` of an unpacked kernel package.  Modules built
    into the kernel (listed in ``modules.builtin``) need no file and are skipped.
    """
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in module_dir.rglob("*.ko")}
    builtin: set[str] = set()
    builtin_list = module_dir / "modules.builtin"
    if builtin_list.is_file():
        builtin = {line.rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")
                   for line in builtin_list.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise GuestBuildError(f"kernel module dependency cycle: {' -> '.join((*chain, name))}")
        path = index.get(name)
        if path is None:
            raise GuestBuildError(f"kernel module {name} is neither in {module_dir} nor built in")
        for dep in filter(None, _modinfo(path.read_bytes()).get("depends", "").split(",")):
            visit(dep.replace("-", "_"), (*chain, name))
        seen.add(name)
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def _initramfs(modules: Sequence[Path], sshd: Mapping[str, Path]) -> bytes:
    """The gzipped initramfs: busybox, ``/init``, ``/etc``, the modules and ``sshd`` (guest path: host file)."""
    entries = [CpioEntry(d, 0o40755) for d in ("bin", "dev", "etc", "lib", "lib64", "lib/modules", "proc", "sys",
                                               "run", "tmp", "mnt", "seed", "usr", "usr/sbin", "var", GUEST_LIB_DIR)]
    entries.append(CpioEntry("root", 0o40700))
    entries.append(CpioEntry("var/run", 0o120777, b"/run"))
    entries.append(CpioEntry("dev/console", 0o20600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", 0o100755, BUSYBOX.read_bytes()))
    entries.append(CpioEntry("init", 0o100755, INIT_SCRIPT.encode()))
    entries.append(CpioEntry("etc/udhcpc.script", 0o100755, UDHCPC_SCRIPT.encode()))
    entries.extend(CpioEntry(f"etc/{name}", 0o100644, text.encode()) for name, text in ETC_FILES.items())
    entries.extend(CpioEntry(path, 0o100755, source.read_bytes()) for path, source in sorted(sshd.items()))
    order_lines = []
    for path in modules:
        name = path.name.removesuffix(".ko")
        entries.append(CpioEntry(f"lib/modules/{name}.ko", 0o100644, path.read_bytes()))
        args = MODULE_ARGS.get(name.replace("-", "_"), "")
        order_lines.append(f"{name} {args}".rstrip())
    entries.append(CpioEntry("lib/modules/load-order", 0o100644, ("\n".join(order_lines) + "\n").encode()))
    return gzip.compress(write_newc(entries), compresslevel=6, mtime=0)


# -- the build ---------------------------------------------------------------------------


def tiny_guest_key() -> str:
    """The hash naming the image built from the current recipe and host tools."""
    return inputs_key({
        "recipe_version": RECIPE_VERSION,
        "kernel_package": KERNEL_PACKAGE,
        "modules": list(MODULES),
        "module_args": dict(sorted(MODULE_ARGS.items())),
        "init": INIT_SCRIPT,
        "cmdline": KERNEL_CMDLINE,
        "disk_size": DISK_SIZE,
        "udhcpc_script": UDHCPC_SCRIPT,
        "etc": dict(sorted(ETC_FILES.items())),
        "sshd_packages": list(SSHD_PACKAGES),
        "dynamic_loader": file_digest(DYNAMIC_LOADER),
        "busybox": file_digest(BUSYBOX),
        "mbr": file_digest(MBR_BOOT_CODE),
        "extlinux": file_digest(EXTLINUX),
    })


def build_tiny_guest(cache_dir: Path | None = None) -> Path:
    """Return the path of the cached tiny guest qcow2 image, building it first if needed.

    The image is ``<cache_dir>/tiny-<key>.qcow2`` (default :func:`default_cache_dir`).  Never
    write to it: boot it through a qcow2 overlay.  Building needs root and network access to
    the Debian archive (for the kernel package); it takes about half a minute.

    :raises GuestBuildError: when a tool is missing or a step fails.
    """
    for tool in (BUSYBOX, EXTLINUX, MBR_BOOT_CODE):
        if not tool.is_file():
            raise GuestBuildError(f"building the tiny guest needs {tool} "
                                  "(Debian packages busybox-static, extlinux, syslinux-common)")
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    name = f"tiny-{tiny_guest_key()}.qcow2"
    final = cache / name
    if final.is_file():
        return final.resolve()
    if os.geteuid() != 0:
        raise GuestBuildError(f"building the tiny guest {name} needs root (loop devices, mount)")
    check_tools(("apt-get", "apt-cache", "dpkg-deb"))
    started = time.monotonic()
    path = cached_build(cache, name, lambda work: _build(work, cache / ".tiny-debs"),
                        lock_name=".tiny.lock", work_prefix=".tiny-build-")
    log.info("tiny guest ready in %.1f s: %s", time.monotonic() - started, path)
    return path


def _kernel_deb(deb_cache: Path) -> Path:
    """The kernel's ``.deb`` (the package :data:`KERNEL_PACKAGE` depends on), downloaded once."""
    try:
        depends = run(["apt-cache", "depends", "--important", KERNEL_PACKAGE])
    except GuestBuildError:
        depends = ""
    match = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if match is None:  # a fresh machine may have no package lists yet
        log.info("apt-cache knows no %s: running apt-get update", KERNEL_PACKAGE)
        run(["apt-get", "update", "-qq"])
        depends = run(["apt-cache", "depends", "--important", KERNEL_PACKAGE])
        match = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if match is None:
        raise GuestBuildError(f"apt-cache knows no kernel behind {KERNEL_PACKAGE}")
    return _download_deb(deb_cache, match.group(1))


def _download_deb(deb_cache: Path, package: str) -> Path:
    """``package``'s ``.deb`` in ``deb_cache``, fetched with ``apt-get download`` the first time."""
    deb_cache.mkdir(parents=True, exist_ok=True)
    found = sorted(deb_cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    log.info("downloading %s", package)
    scratch = deb_cache / ".download"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        run(["apt-get", "download", "-q", package], cwd=scratch)
        debs = list(scratch.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise GuestBuildError(f"apt-get download {package} left {debs}")
        return Path(shutil.move(debs[0], deb_cache / debs[0].name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _sshd_files(workdir: Path, deb_cache: Path) -> dict[str, Path]:
    """dropbear and the shared objects it loads, as initramfs path -> host file.

    The packages of :data:`SSHD_PACKAGES` are unpacked into ``workdir``; the host's dynamic
    loader lists what dropbear needs (``--list``, as ``ldd`` does), searching the unpacked
    libraries first.  Libraries go to :data:`GUEST_LIB_DIR`, the loader to
    the path dropbear names as its interpreter.
    """
    unpacked = workdir / "sshd"
    for package in SSHD_PACKAGES:
        run(["dpkg-deb", "-x", str(_download_deb(deb_cache, package)), str(unpacked)])
    program = unpacked / SSHD_PROGRAM
    lib_dirs = sorted({str(p.parent) for p in unpacked.rglob("*.so*")})
    listing = run([str(DYNAMIC_LOADER), "--library-path", ":".join(lib_dirs), "--list", str(program)])
    files = {SSHD_PROGRAM: program, str(DYNAMIC_LOADER).lstrip("/"): DYNAMIC_LOADER}
    for line in listing.splitlines():
        match = re.match(r"\s*(\S+) => (/\S+) \(0x", line)
        if match is not None:
            files[f"{GUEST_LIB_DIR}/{match.group(1)}"] = Path(match.group(2)).resolve()
        elif "not found" in line:
            raise GuestBuildError(f"dropbear needs a library neither {SSHD_PACKAGES} nor the host has: {line.strip()}")
    return files


def _build(workdir: Path, deb_cache: Path) -> Path:
    deb = _kernel_deb(deb_cache)
    unpacked = workdir / "kernel"
    run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"expected one kernel in {deb.name}, found {[k.name for k in kernels]}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    modules = module_load_order(unpacked / "lib" / "modules" / release, MODULES)
    log.info("tiny guest: kernel %s (%s), %d modules", release, deb.name, len(modules))
    root = workdir / "root"
    (root / "boot").mkdir(parents=True)
    shutil.copyfile(kernels[0], root / "boot" / "vmlinuz")
    (root / "boot" / "initrd.img").write_bytes(_initramfs(modules, _sshd_files(workdir, deb_cache)))
    shutil.rmtree(unpacked)
    image = workdir / "tiny.qcow2"
    key = tiny_guest_key()
    make_boot_disk(
        image,
        root,
        size=DISK_SIZE,
        boot=BootEntry(kernel="/boot/vmlinuz", initrd="/boot/initrd.img", append=KERNEL_CMDLINE, label="tiny"),
        fs_label=FS_LABEL,
        fs_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmpod-tiny-guest:{key}")),
    )
    return image


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or find) the tiny guest image and print its path; ``0`` on success."""
    return guest_main(build_tiny_guest, "vmpod.guests.tiny", argv)


if __name__ == "__main__":
    sys.exit(main())
