"""The qemu backend booting the tiny test guest: seed, disks, volumes, console log, restarts, clean delete.

Each test boots one real guest (TCG when KVM does not work here) and checks what the guest itself
reports on its serial console, through the pod log the supervisor writes.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmpod_qemu.backend import QemuBackend

from tests.support.qemu import (
    destroy_all,
    make_tiny_pod,
    open_backend,
    pids_mentioning,
    pids_with_open,
    qemu_pid,
    qemu_pids,
    stop_gracefully_and_check_log,
    supervisor_pid,
    wait_for_line,
    wait_until,
)
from vmpod.backend import MachineState
from vmpod.guests.tiny import build_tiny_guest
from vmpod.machine import DiskFormat, Filesystem, Nic, PortForward
from vmpod.model import DiskDriver

pytestmark = pytest.mark.guest


@pytest.fixture
def qemu_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose qemu machines are destroyed after the test, even when it fails."""
    state = tmp_path / "state"
    yield state
    destroy_all(state)


@pytest.fixture(scope="session")
def tiny_image() -> Path:
    """The cached tiny guest (built on first use: about half a minute)."""
    return build_tiny_guest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_nothing_left(backend: QemuBackend, name: str, machine_dir: Path, files: tuple[Path, ...]) -> None:
    """No qemu or supervisor for the machine, no backend file or socket; the pod's disks are free."""
    assert not machine_dir.exists(), f"left behind: {sorted(machine_dir.iterdir())}"
    assert backend.files(name) == ()
    assert pids_mentioning(str(machine_dir)) == [], "a qemu or supervisor process is still running"
    assert pids_with_open(files) == {}, "a process still holds a disk or the seed ISO open"
    for path in files:  # what the runtime removes on delete: nothing holds it, so it really goes
        path.unlink()
    assert not any(p.exists() for p in files)


def test_tiny_guest_on_scsi_with_volumes_shares_and_a_restart(tiny_image: Path, tmp_path: Path,
                                                              qemu_state: Path) -> None:
    """Seed, disk sizes, 9p shares, VNC and port forwards on loopback; a lost supervisor and a vmpod
    restart lose no console line and start no second qemu; a graceful stop and a clean delete."""
    share_rw, share_ro = tmp_path / "share-rw", tmp_path / "share-ro"
    share_rw.mkdir()
    share_ro.mkdir()
    (share_rw / "hello.txt").write_text("hello from the host\n")
    (share_ro / "readme.txt").write_text("read only\n")
    port = free_port()
    pod = make_tiny_pod(
        tmp_path / "pod", tiny_image, name="tiny-scsi", bus=DiskDriver.SCSI, hostname="tiny-scsi",
        volumes=[("data", 96 << 20, DiskFormat.QCOW2), ("scratch", 40 << 20, DiskFormat.RAW)],
        shares=[Filesystem(tag="rw", source=str(share_rw)), Filesystem(tag="ro", source=str(share_ro), read_only=True)],
        nics=[Nic(mac="52:54:00:12:34:56", forwards=(PortForward(guest_port=22, host_port=port),))],
    )
    state = qemu_state
    backend = open_backend(state)
    name = pod.machine.name
    machine_dir = backend.root / name
    assert backend.create(pod.machine).state is MachineState.CREATED
    started = backend.start(name)
    assert started.state is MachineState.RUNNING
    first_pid = qemu_pid(backend, name)

    # The supervisor dies while the guest boots: the guest's output keeps going to serial.raw.
    wait_for_line(pod.log, "SYSLINUX")
    os.kill(supervisor_pid(backend, name), signal.SIGKILL)
    time.sleep(1)
    backend.close()

    # vmpod restarts: the new backend re-attaches a supervisor; the machine is not restarted.
    backend = open_backend(state)
    again = backend.status(name)
    assert again.state is MachineState.RUNNING
    assert again.started_at == started.started_at
    assert backend.start(name).started_at == started.started_at
    assert qemu_pid(backend, name) == first_pid
    assert qemu_pids(machine_dir) == [first_pid], "a second qemu was started"

    lines = wait_for_line(pod.log, "VMPOD-READY")
    assert f"VMPOD-SEED instance-id={pod.machine.uuid} hostname=tiny-scsi" in lines
    assert "VMPOD-SEED-DEVICE /dev/sr0 cidata" in lines
    disks = [line.split()[1:] for line in lines if line.startswith("VMPOD-DISK ")]
    # Linux probes SCSI disks asynchronously, so sda..sdc may come in any order: match them by serial.
    assert sorted(name for name, *_ in disks) == ["sda", "sdb", "sdc", "sr0"]
    by_serial = {rest[-1]: int(size) for _, size, *rest in disks if rest}
    assert by_serial == {"serial=vmpod-root": 256 << 20, "serial=vmpod-data": 96 << 20,
                         "serial=vmpod-scratch": 40 << 20}
    assert ["sr0", str(pod.files[-1].stat().st_size)] in disks
    assert "VMPOD-FS rw hello.txt" in lines
    assert "VMPOD-FS-WRITE rw ok" in lines
    assert "VMPOD-FS ro readme.txt" in lines
    assert "VMPOD-FS-WRITE ro denied" in lines
    assert (share_rw / "vmpod-guest-wrote").read_text() == "tiny-scsi\n"
    assert not (share_ro / "vmpod-guest-wrote").exists()
    assert "VMPOD-NIC eth0 52:54:00:12:34:56" in lines

    assert backend.vnc_address(name)[0] == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # user-mode networking listens on loopback for the forward
    console = backend.console(name)
    assert console.kind == "unix"
    assert Path(console.path).is_socket()
    stop_gracefully_and_check_log(backend, name, started, pod.log)

    backend.destroy(name)
    backend.destroy(name)
    assert_nothing_left(backend, name, machine_dir, pod.files)
    assert pod.log.exists(), "the pod log belongs to the runtime and stays"


def test_tiny_guest_on_virtio_with_configdrive_powers_itself_off(tiny_image: Path, tmp_path: Path,
                                                                 qemu_state: Path) -> None:
    """virtio disks (the seed as a read-only virtio disk), a ConfigDrive seed; the guest's own
    poweroff (typed on the serial console) ends the machine STOPPED with reason Completed."""
    pod = make_tiny_pod(tmp_path / "pod", tiny_image, name="tiny-virtio", bus=DiskDriver.VIRTIO,
                        root_size=200 << 20, volumes=[("data", 24 << 20, DiskFormat.RAW)], configdrive=True,
                        hostname="tiny-virtio", vnc=False)
    backend = open_backend(qemu_state)
    name = pod.machine.name
    machine_dir = backend.root / name
    backend.create(pod.machine)
    backend.start(name)
    lines = wait_for_line(pod.log, "VMPOD-READY")
    assert f"VMPOD-SEED instance-id={pod.machine.uuid} hostname=tiny-virtio" in lines
    assert "VMPOD-SEED-DEVICE /dev/vdc config-2" in lines
    disks = {line.split()[1]: line.split()[2:] for line in lines if line.startswith("VMPOD-DISK ")}
    assert disks == {"vda": [str(200 << 20), "serial=vmpod-root"], "vdb": [str(24 << 20), "serial=vmpod-data"],
                     "vdc": [str(pod.files[-1].stat().st_size), "serial=vmpod-seed"]}

    wait_for_line(pod.log, "/ #", partial=True)  # the console shell's prompt (a partial line, flushed after a moment)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.connect(backend.console(name).path)
        console.sendall(b"echo typed-on-the-console\n")
        wait_for_line(pod.log, "typed-on-the-console", timeout=60)
        console.sendall(b"poweroff -f\n")
        wait_until(lambda: backend.status(name).state is MachineState.STOPPED, timeout=120, what="guest poweroff")
    status = backend.status(name)
    assert (status.exit_reason, status.exit_code) == ("Completed", 0), status
    backend.destroy(name)
    assert_nothing_left(backend, name, machine_dir, pod.files)
