"""Helpers for the qemu backend's tests: tiny-guest machines, reading pod logs, finding leftovers."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs
from vmpod_qemu.backend import QemuBackend

from vmpod.backend import Backend, BackendConfig, MachineState, MachineStatus
from vmpod.cloudinit.iso import CONFIGDRIVE_LABEL, NOCLOUD_LABEL, write_iso
from vmpod.machine import MARKER_LABEL, Disk, DiskFormat, DiskRole, Filesystem, Machine, Nic
from vmpod.model import DiskDriver
from vmpod.procutil import read_json

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout ([FP]) (.*)$")


@attrs.frozen
class TinyPod:
    """A tiny-guest machine and the files a runtime would have made for it."""

    machine: Machine
    files: tuple[Path, ...]

    @property
    def log(self) -> Path:
        return Path(self.machine.serial_log)


def make_tiny_pod(
    pod_dir: Path,
    image: Path,
    *,
    name: str,
    bus: DiskDriver = DiskDriver.SCSI,
    root_size: int = 256 << 20,
    volumes: Sequence[tuple[str, int, DiskFormat]] = (),
    shares: Sequence[Filesystem] = (),
    nics: Sequence[Nic] = (),
    configdrive: bool = False,
    hostname: str = "tiny",
    vnc: bool = True,
) -> TinyPod:
    """Overlay over ``image``, extra volumes, a seed ISO (NoCloud or ConfigDrive) and the machine using them."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    root = pod_dir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(root),
                    str(root_size)], check=True)
    disks = [Disk(name="root", path=str(root), format=DiskFormat.QCOW2, role=DiskRole.ROOT, serial="vmpod-root")]
    files = [root]
    for volume, size, fmt in volumes:
        path = pod_dir / f"{volume}.{fmt.value}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt.value, str(path), str(size)], check=True)
        disks.append(Disk(name=volume, path=str(path), format=fmt, role=DiskRole.VOLUME, serial=f"vmpod-{volume}"))
        files.append(path)
    machine_uuid = uuid.uuid4()
    seed = pod_dir / "seed.iso"
    if configdrive:
        meta = {"uuid": str(machine_uuid), "hostname": hostname}
        write_iso({"openstack/latest/meta_data.json": json.dumps(meta).encode(),
                   "openstack/latest/user_data": b"#cloud-config\n"}, CONFIGDRIVE_LABEL, seed)
    else:
        meta = {"instance-id": str(machine_uuid), "local-hostname": hostname}
        write_iso({"meta-data": json.dumps(meta, indent=2).encode(), "user-data": b"#cloud-config\n"},
                  NOCLOUD_LABEL, seed)
    disks.append(Disk(name="seed", path=str(seed), format=DiskFormat.RAW, role=DiskRole.SEED, read_only=True,
                      cdrom=True, serial="vmpod-seed"))
    files.append(seed)
    machine = Machine(
        name=name, uuid=machine_uuid, memory_bytes=256 << 20, vcpus=1, disk_bus=bus, disks=tuple(disks),
        serial_log=str(pod_dir / "vm_0.log"), runtime_dir=str(pod_dir / "run"),
        labels={MARKER_LABEL: "true", "io.kubernetes.pod.name": name}, filesystems=tuple(shares),
        nics=tuple(nics), vnc=vnc,
    )
    return TinyPod(machine=machine, files=tuple(files))


def log_lines(log: Path, *, partial: bool = False) -> list[str]:
    """The guest's console lines in a CRI log (``P`` pieces joined); every line must be well formed.

    With ``partial``, an unfinished last line (``P`` pieces not yet followed by an ``F``) is included.
    """
    if not log.exists():
        return []
    lines, current = [], ""
    for raw in log.read_text(errors="replace").split("\n")[:-1]:
        match = CRI_LINE.match(raw)
        assert match, f"not a CRI log line: {raw!r}"
        current += match.group(2)
        if match.group(1) == "F":
            lines.append(current)
            current = ""
    if partial and current:
        lines.append(current)
    return lines


def stop_gracefully_and_check_log(backend: Backend, name: str, started: MachineStatus,
                                  log: Path) -> MachineStatus:
    """Check stats of the running machine, stop it with the ACPI button and check the pod log.

    The guest must power off by itself (``Stopped``, exit code 0, started_at unchanged) and
    every ``VMPOD-*`` console line must be in the log exactly once.  Returns the final status.
    """
    stats = backend.stats(name)
    assert stats.cpu_time_ns > 0
    assert stats.memory_bytes > 0
    stopped = backend.stop(name, timeout=120)
    assert (stopped.state, stopped.exit_reason, stopped.exit_code) == (MachineState.STOPPED, "Stopped", 0)
    assert stopped.finished_at >= stopped.started_at == started.started_at
    lines = log_lines(log)
    assert "VMPOD-POWEROFF" in lines, "the guest did not power off on the ACPI button"
    counts = collections.Counter(line for line in lines if line.startswith("VMPOD-"))
    assert all(count == 1 for count in counts.values()), f"lost or duplicated console lines: {counts}"
    assert backend.status(name) == stopped
    return stopped


def wait_for_line(log: Path, prefix: str, timeout: float = 240, *, partial: bool = False) -> list[str]:
    """Wait until a console line starts with ``prefix``; returns every line so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(log, partial=partial)
        if any(line.startswith(prefix) for line in lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no {prefix!r} line in {log} after {timeout} s; the log has:\n" +
                         "\n".join(log_lines(log)[-40:]))


def pids_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def qemu_pids(machine_dir: Path) -> list[int]:
    """Live qemu processes started for the machine in ``machine_dir`` (by their pidfile argument)."""
    pids = []
    for pid in pids_mentioning(f"{machine_dir}/qemu.pid"):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.endswith(b"qemu-system-x86_64"):
            pids.append(pid)
    return pids


def pids_with_open(paths: Iterable[Path]) -> dict[int, str]:
    """Processes holding one of ``paths`` open (an fd pointing at it), with the path."""
    wanted = {str(p.resolve()) for p in paths}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd).removesuffix(" (deleted)")
            except OSError:
                continue
            if target in wanted:
                found[int(entry.name)] = target
    return found


def qemu_pid(backend: QemuBackend, name: str) -> int:
    run = read_json(backend.root / name / "run.json")
    assert run is not None, f"{name} has no run.json"
    return int(run["pid"])


def supervisor_pid(backend: QemuBackend, name: str) -> int:
    run = read_json(backend.root / name / "run.json")
    assert run is not None, f"{name} has no run.json"
    return int(run["supervisor_pid"])


def open_backend(state_dir: Path) -> QemuBackend:
    return QemuBackend(BackendConfig(state_dir=str(state_dir)))


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def destroy_all(state_dir: Path) -> None:
    """Destroy every machine of the qemu backend in ``state_dir`` (test teardown, also after a failure)."""
    machines = state_dir / "backends" / "qemu" / "machines"
    if not machines.is_dir():
        return
    backend = open_backend(state_dir)
    for directory in sorted(machines.iterdir()):
        backend.destroy(directory.name)
