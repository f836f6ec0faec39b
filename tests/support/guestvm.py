"""Boot a guest image under qemu and reach it over ssh (test harness, not product code).

Usage::

    image = build_debian_cloud_guest()
    key, public_key = make_ssh_key(tmp_path)
    with boot_guest(image, seed_iso, workdir=tmp_path / "vm") as vm:
        vm.wait_for_ssh(key)
        assert vm.ssh("hostname", key=key).stdout.strip() == "myhost"

The guest runs on a qcow2 overlay in ``workdir`` (the cached image is never
written), with user-mode networking: the guest's port 22 is forwarded to a
free port on 127.0.0.1.  Everything the guest prints on its serial console
goes to ``workdir/console.log`` (:meth:`GuestVM.console_text`), qemu's own
messages to ``workdir/qemu.log``.

Devices (fixed PCI slots, so that guest interface names are stable: the NIC
is ``ens3`` in the Debian guest):

* 00:03 virtio-net, MAC ``mac`` (default :data:`DEFAULT_MAC`), slirp 10.0.2.0/24
* 00:04 virtio-blk, the overlay (``/dev/vda``)
* the seed, per ``seed_interface``: ``"cdrom"`` a cdrom on virtio-scsi at
  00:05 (``/dev/sr0``), ``"ide"`` a cdrom on the IDE controller
  (``/dev/sr0``), ``"virtio"`` a read-only virtio-blk disk at 00:06
  (``/dev/vdb``).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmpod.accel import Accelerator, detect_accelerator

__all__ = [
    "DEFAULT_MAC",
    "SEED_INTERFACES",
    "GuestError",
    "GuestVM",
    "boot_guest",
    "make_ssh_key",
]

log = logging.getLogger(__name__)

DEFAULT_MAC = "52:54:00:12:34:56"
#: Where slirp's DHCP puts the guest, and where hostfwd sends connections by default.
SLIRP_GUEST_IP = "10.0.2.15"
SEED_INTERFACES = ("cdrom", "ide", "virtio")

_SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "PasswordAuthentication=no",
    "-o", "GSSAPIAuthentication=no",
    "-o", "LogLevel=ERROR",
)  # fmt: skip


class GuestError(RuntimeError):
    """The guest did not boot, died, or could not be reached; the message has the console's tail."""


def make_ssh_key(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """Generate a passphrase-less ed25519 key in ``directory``: ``(private key path, public key line)``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmpod-test", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key, key.with_name(name + ".pub").read_text().strip()


def _qemu_opt(value: str) -> str:
    """Escape a value for qemu's ``key=value,...`` option syntax."""
    return value.replace(",", ",,")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class GuestVM:
    """A running qemu guest, as :func:`boot_guest` yields it."""

    workdir: Path
    overlay: Path
    console_log: Path
    qemu_log: Path
    ssh_port: int
    mac: str
    accelerator: Accelerator
    argv: list[str]
    process: subprocess.Popen[bytes] = field(repr=False)

    def console_text(self) -> str:
        """Everything the guest printed on its serial console so far."""
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        """True while qemu has not exited."""
        return self.process.poll() is None

    def ssh(
        self,
        cmd: str | Sequence[str],
        *,
        key: Path,
        user: str = "root",
        timeout: float = 120,
        connect_timeout: int = 10,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the guest over ssh; never raises for a non-zero exit (check ``returncode``).

        ``cmd`` is a shell command line, or an argv list that is quoted for
        the remote shell.  ssh's own failures exit 255.

        :raises subprocess.TimeoutExpired: when the whole call takes longer than ``timeout``.
        """
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        argv = [
            "ssh",
            *_SSH_OPTIONS,
            "-o", f"ConnectTimeout={connect_timeout}",
            "-i", str(key),
            "-p", str(self.ssh_port),
            f"{user}@127.0.0.1",
            "--",
            remote,
        ]  # fmt: skip
        return subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_for_ssh(self, key: Path, user: str = "root", timeout: float = 360) -> float:
        """Retry a trivial ssh command until it succeeds; return the seconds it took.

        :raises GuestError: when qemu exits or ``timeout`` passes first.
        """
        started = time.monotonic()
        deadline = started + timeout
        last = "no attempt yet"
        while True:
            if not self.is_running():
                raise GuestError(f"qemu exited (code {self.process.returncode}) {self._tails()}")
            try:
                result = self.ssh("true", key=key, user=user, timeout=30, connect_timeout=10)
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            else:
                if result.returncode == 0:
                    waited = time.monotonic() - started
                    log.info("ssh to the guest works after %.0f s", waited)
                    return waited
                last = f"ssh exit {result.returncode}: {result.stderr.strip()[-300:]}"
            if time.monotonic() >= deadline:
                raise GuestError(f"no ssh to the guest within {timeout:.0f} s ({last}) {self._tails()}")
            time.sleep(2)

    def stop(self, grace: float = 5) -> None:
        """Stop qemu (SIGTERM, then SIGKILL after ``grace`` seconds); idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _tails(self) -> str:
        console = "\n".join(self.console_text().splitlines()[-40:])
        try:
            qemu = self.qemu_log.read_text(errors="replace").strip()[-2000:]
        except FileNotFoundError:
            qemu = ""
        return f"\n--- qemu: {qemu}\n--- console tail ({self.console_log}):\n{console}"


def _seed_args(seed_iso: Path, interface: str) -> list[str]:
    path = _qemu_opt(str(seed_iso))
    if interface == "cdrom":
        return [
            "-device", "virtio-scsi-pci,id=scsi0,addr=0x5",
            "-drive", f"file={path},if=none,id=seed,media=cdrom,format=raw,readonly=on",
            "-device", "scsi-cd,drive=seed,bus=scsi0.0",
        ]  # fmt: skip
    if interface == "ide":
        return ["-drive", f"file={path},if=ide,index=2,media=cdrom,format=raw,readonly=on"]
    if interface == "virtio":
        return [
            "-drive", f"file={path},if=none,id=seed,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=seed,addr=0x6",
        ]  # fmt: skip
    raise ValueError(f"seed_interface must be one of {SEED_INTERFACES}, not {interface!r}")


@contextlib.contextmanager
def boot_guest(
    disk: Path,
    seed_iso: Path | None,
    *,
    workdir: Path,
    seed_interface: str = "cdrom",
    memory_mb: int = 1024,
    cpus: int = 2,
    mac: str = DEFAULT_MAC,
    guest_ip: str = SLIRP_GUEST_IP,
    disk_size: str | None = None,
    accelerator: Accelerator | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[GuestVM]:
    """Boot ``disk`` (through an overlay) with ``seed_iso`` attached; yield the running :class:`GuestVM`.

    :param seed_interface: how the seed is attached: ``"cdrom"`` (virtio-scsi
        cdrom), ``"ide"`` (IDE cdrom) or ``"virtio"`` (read-only virtio disk).
    :param mac: the NIC's MAC address (network-config tests match on it).
    :param guest_ip: the guest address that ssh is forwarded to: change it
        when the guest is given a static address instead of slirp's DHCP one
        (it must stay inside 10.0.2.0/24, slirp's network).
    :param disk_size: grow the overlay to this size (``qemu-img`` syntax,
        for example ``"4G"``); ``None`` keeps the image's size.
    :param accelerator: ``"kvm"`` or ``"tcg"``; default :func:`detect_accelerator`.
    :param extra_args: more qemu arguments, appended last.

    On exit qemu is stopped and the overlay deleted; the logs stay in ``workdir``.
    """
    if seed_interface not in SEED_INTERFACES:
        raise ValueError(f"seed_interface must be one of {SEED_INTERFACES}, not {seed_interface!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk.resolve()), str(overlay)]
    if disk_size is not None:
        create.append(disk_size)
    subprocess.run(create, check=True, capture_output=True)
    accel = accelerator or detect_accelerator()
    console_log = workdir / "console.log"
    qemu_log = workdir / "qemu.log"
    vm: GuestVM | None = None
    try:
        for _attempt in range(5):
            port = _free_port()
            argv = [
                "qemu-system-x86_64",
                "-nodefaults",
                "-no-user-config",
                "-machine", f"pc,accel={accel}",
                *(["-cpu", "host"] if accel == "kvm" else []),
                "-m", str(memory_mb),
                "-smp", str(cpus),
                "-display", "none",
                "-chardev", f"file,id=console,path={_qemu_opt(str(console_log))}",
                "-serial", "chardev:console",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-{guest_ip}:22",
                "-device", f"virtio-net-pci,netdev=n0,mac={mac},addr=0x3",
                "-drive", f"file={_qemu_opt(str(overlay))},if=none,id=root,format=qcow2,cache=unsafe",
                "-device", "virtio-blk-pci,drive=root,addr=0x4,bootindex=1",
                *(_seed_args(seed_iso, seed_interface) if seed_iso is not None else []),
                *extra_args,
            ]  # fmt: skip
            log.info("booting %s (%s) with ssh on 127.0.0.1:%d", disk.name, accel, port)
            with qemu_log.open("wb") as qlog:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog)
            vm = GuestVM(
                workdir=workdir,
                overlay=overlay,
                console_log=console_log,
                qemu_log=qemu_log,
                ssh_port=port,
                mac=mac,
                accelerator=accel,
                argv=argv,
                process=process,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(1.0)
            if process.returncode is None:
                break
            message = qemu_log.read_text(errors="replace")
            if "host forwarding" not in message:  # anything but losing the port race is fatal
                raise GuestError(f"qemu failed to start (exit {process.returncode}): {message.strip()}")
            log.info("port %d was taken before qemu bound it; retrying", port)
        else:
            raise GuestError("qemu could not bind a free port for ssh forwarding in 5 attempts")
        yield vm
    finally:
        if vm is not None:
            vm.stop()
        overlay.unlink(missing_ok=True)
