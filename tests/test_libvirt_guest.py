"""The libvirt backend booting the tiny test guest: seed, disk sizes, a volume and a share, the console log
across a vmpod restart, the console, a graceful stop and a delete that leaves nothing behind.

One real boot (TCG when KVM does not work here); everything is checked through what the guest
itself prints on its serial console, read back from the pod log the follower writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmpod_libvirt import connection as lv
from vmpod_libvirt.backend import LibvirtBackend
from vmpod_libvirt.records import FOLLOWER_FILE, backend_files, read_json
from vmpod_libvirt.testing import Daemons, ensure_daemons, shared_dir

from tests.support.qemu import (
    make_tiny_pod,
    pids_mentioning,
    pids_with_open,
    stop_gracefully_and_check_log,
    wait_for_line,
)
from vmpod.backend import BackendConfig, MachineState
from vmpod.consolemux import connect_unix
from vmpod.errors import NotFoundError
from vmpod.guests.tiny import build_tiny_guest
from vmpod.machine import DiskFormat, Filesystem
from vmpod.model import DiskDriver

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def libvirtd() -> Daemons:
    return ensure_daemons()


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = shared_dir("vmpod-libvirt-guest-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_image(base: Path) -> Path:
    """The cached tiny guest, copied where libvirt's qemu user can read it (the cache is under /root)."""
    image = base / "tiny.qcow2"
    shutil.copyfile(build_tiny_guest(), image)
    image.chmod(0o444)
    return image


def follower_pid(runtime_dir: Path) -> int:
    info = read_json(runtime_dir / FOLLOWER_FILE)
    assert info is not None, "no log follower runs"
    return int(info["pid"])


@contextlib.contextmanager
def console_typed(backend: LibvirtBackend, name: str, text: bytes) -> Iterator[None]:
    """Type ``text`` on the machine's serial console (through its console monitor) and stay attached meanwhile."""
    endpoint = backend.console(name)
    assert endpoint.kind == "unix"
    with connect_unix(endpoint.path, timeout=30) as console:
        console.sendall(text)
        yield


def test_tiny_guest_boots_logs_across_a_restart_and_stops_gracefully(tiny_image: Path, base: Path,
                                                                       libvirtd: Daemons) -> None:
    share = base / "share"
    share.mkdir()
    share.chmod(0o755)
    (share / "readme.txt").write_text("from the host\n")
    (share / "readme.txt").chmod(0o644)
    # A fresh domain name each run: a run killed half-way must not make the next one conflict with it.
    pod = make_tiny_pod(base / "pod", tiny_image, name=f"vmpod-libvirt-tiny-{uuid.uuid4().hex[:8]}",
                        bus=DiskDriver.SCSI,
                        root_size=256 << 20, volumes=[("data", 96 << 20, DiskFormat.QCOW2)], hostname="tiny-libvirt",
                        shares=[Filesystem(tag="ro", source=str(share), read_only=True)])
    name = pod.machine.name
    runtime_dir = Path(pod.machine.runtime_dir)
    state = base / "state"
    options = {"uri": libvirtd.uri}
    backend = LibvirtBackend(BackendConfig(state_dir=str(state), options=options))
    try:
        assert backend.create(pod.machine).state is MachineState.CREATED
        started = backend.start(name)
        assert started.state is MachineState.RUNNING
        (qemu,) = pids_mentioning(f"guest={name},")

        # vmpod goes away mid-boot and its log follower is killed: virtlogd keeps the serial output.
        wait_for_line(pod.log, "SYSLINUX")
        os.kill(follower_pid(runtime_dir), signal.SIGKILL)
        backend.close()
        backend = LibvirtBackend(BackendConfig(state_dir=str(state), options=options))  # adopts: a new follower
        again = backend.status(name)
        assert (again.state, again.started_at) == (MachineState.RUNNING, started.started_at)
        assert backend.start(name).started_at == started.started_at, "start of a running domain restarted it"
        assert pids_mentioning(f"guest={name},") == [qemu], "the domain was restarted"

        lines = wait_for_line(pod.log, "VMPOD-READY", timeout=300)
        assert f"VMPOD-SEED instance-id={pod.machine.uuid} hostname=tiny-libvirt" in lines
        assert "VMPOD-SEED-DEVICE /dev/sr0 cidata" in lines
        disks = [line.split()[1:] for line in lines if line.startswith("VMPOD-DISK ")]
        by_serial = {rest[-1]: int(size) for _, size, *rest in disks if rest}
        assert by_serial == {"serial=vmpod-root": 256 << 20, "serial=vmpod-data": 96 << 20}, disks
        assert ["sr0", str(pod.files[-1].stat().st_size)] in disks, "the seed is the read-only CD-ROM"
        assert "VMPOD-FS ro readme.txt" in lines
        assert "VMPOD-FS-WRITE ro denied" in lines

        # The console: what is typed reaches the guest, its answer reaches the pod log.
        wait_for_line(pod.log, "/ #", partial=True)
        with console_typed(backend, name, b"echo VMPOD-TYPED-$((6 * 7))\n"):
            wait_for_line(pod.log, "VMPOD-TYPED-42", timeout=60)
        stop_gracefully_and_check_log(backend, name, started, pod.log)
        assert pids_mentioning(f"guest={name},") == []

        backend.destroy(name)
        backend.destroy(name)
        with pytest.raises(NotFoundError):
            backend.status(name)
        conn = lv.open_connection(libvirtd.uri)
        try:
            assert name not in {d.name() for d in conn.listAllDomains(0)}, "the domain is still defined"
        finally:
            lv.close_quietly(conn)
        assert [p for p in backend_files(runtime_dir) if p.exists()] == [], "backend files left behind"
        assert pids_mentioning(str(runtime_dir)) == [], "a log follower still runs"
        assert pids_with_open(pod.files) == {}, "a process still holds a disk or the seed"
        assert not Path(f"/etc/libvirt/qemu/{name}.xml").exists()
        assert not Path(f"/run/libvirt/qemu/{name}.pid").exists()
        for path in pod.files:  # the runtime's files: nothing holds them, so they really go
            path.unlink()
        assert pod.log.exists(), "the pod log belongs to the runtime and stays"
    finally:
        backend.destroy(name)
        backend.close()
