"""The ``qemu`` backend: machines are daemonized qemu processes, no hypervisor daemon needed.

Each machine lives in ``<state_dir>/backends/qemu/machines/<name>/``:

``machine.json``
    the :class:`~vmpod.machine.Machine` and its creation time (written by ``create``);
``op.lock``
    serialises ``start``/``stop``/``destroy`` of the machine across threads and processes;
``qemu.pid``, ``qmp.sock``, ``console.sock``, ``serial.raw``
    qemu's pidfile, QMP monitor, serial console and raw serial output (see :mod:`vmpod_qemu.argv`);
``run.json``, ``exit.json``, ``stop.json``, ``log.state``, ``supervisor.lock``, ``supervisor.log``
    the supervisor's records (see :mod:`vmpod_qemu.supervisor`);
``attach.sock``
    the console monitor's socket (in the supervisor): :meth:`QemuBackend.console`, ``vmpod attach``.

``start`` builds the argv (:func:`vmpod_qemu.argv.build_argv`, KVM when it really works, else
TCG, see :mod:`vmpod.accel`) and starts the machine's supervisor, which starts qemu, keeps the
pod log and records how qemu ended.  ``stop`` asks the guest to power off
(``system_powerdown`` over QMP) and forces qemu off after the timeout (QMP ``quit``, then
SIGKILL).  ``status`` and ``stats`` ask qemu over QMP (``query-status``), with CPU time and
resident memory from ``/proc``.  A new backend object (a vmpod restart) finds the machines in
their directories and their qemu processes through ``run.json`` and the QMP sockets; it never
starts a second qemu, and restarts a lost supervisor in *attach* mode so that the log goes on.
A qemu that died is ``STOPPED`` with the reason its supervisor recorded (``Killed``,
``Crashed``, ``Completed``, ``Error``; ``Stopped`` when vmpod stopped it).  A pid is never
signalled unless it is still the recorded process (:class:`vmpod.procutil.ProcessIdentity`).

Reaching a guest (:class:`vmpod.backend.GuestAccess`): ``add_port_forward`` and
``remove_port_forward`` run the monitor commands ``hostfwd_add``/``hostfwd_remove`` (QMP
``human-monitor-command``) on the first user netdev (``net<N>``), after binding the host port
for a moment to report a taken one by number (:mod:`vmpod.forwarding`); ``vnc_address`` asks
QMP ``query-vnc``.  Such forwards end with the qemu process.

Backend options (``BackendConfig.options``): ``binary`` (default ``qemu-system-x86_64``),
``accel`` (``auto``, ``kvm`` or ``tcg``; default ``auto``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs

from vmpod import consolelog, convert
from vmpod.accel import detect_accelerator
from vmpod.backend import (
    BackendConfig,
    Capabilities,
    ConsoleEndpoint,
    MachineInfo,
    MachineState,
    MachineStats,
    MachineStatus,
)
from vmpod.consolelog import CriLogWriter
from vmpod.consolemux import ATTACH_SOCKET
from vmpod.errors import BackendError, BackendUnavailable, ConflictError, InvalidTransition, NotFoundError
from vmpod.forwarding import (
    check_forward,
    check_host_port_free,
    hostfwd_add_command,
    hostfwd_remove_command,
    read_hostfwd_reply,
    user_netdev_index,
)
from vmpod.machine import MARKER_LABEL, Machine, NetworkMode, PortForward
from vmpod.procutil import ProcessIdentity, read_json, write_json
from vmpod_qemu import supervisor
from vmpod_qemu.argv import CONSOLE_SOCKET, DEFAULT_BINARY, MAX_DISKS, QMP_SOCKET, QemuPaths, build_argv
from vmpod_qemu.process import cpu_time_ns, holding_supervisor_lock, rss_bytes, supervisor_running, wait_supervisor
from vmpod_qemu.qmp import QMPUnavailable, qmp_call
from vmpod_qemu.supervisor import EXIT_FILE, RUN_FILE, STOP_FILE, boot_records, exit_record

__all__ = ["QemuBackend"]

log = logging.getLogger(__name__)

MACHINE_FILE: Final = "machine.json"
OP_LOCK: Final = "op.lock"
#: Files a new boot must not inherit (``run.json``/``exit.json``/``stop.json`` name their boot and stay).
_PER_BOOT: Final = ("qemu.pid", QMP_SOCKET, CONSOLE_SOCKET, ATTACH_SOCKET, "serial.raw")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_LAUNCHER: Final = Path(supervisor.__file__).resolve().with_name("launcher.py")
#: How long qemu gets to exit after QMP ``quit`` before it is killed, and how long to wait after that.
_QUIT_GRACE: Final = 3.0
_KILL_GRACE: Final = 5.0
#: How long a supervisor gets to finish the log and ``exit.json`` once qemu is gone.
_SUPERVISOR_GRACE: Final = 5.0
_MAX_UNIX_PATH: Final = 107


def _launcher_path() -> str:
    """The import path the launcher (``python -I -S``, no site packages) finds the supervisor and vmpod by."""
    roots = [Path(supervisor.__file__).resolve().parents[1], Path(consolelog.__file__).resolve().parents[1]]
    entries = [str(root) for root in roots] + [entry for entry in sys.path if os.path.isabs(entry)]
    return os.pathsep.join(dict.fromkeys(entries))


def _console_link(socket_path: Path) -> Path:
    """A short path (a symlink) for a console socket whose own path is too long to connect to."""
    digest = hashlib.sha256(os.fsencode(str(socket_path))).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"vmpod-qemu-{os.geteuid()}" / f"{digest}.sock"


@attrs.frozen
class _Record:
    machine: Machine
    created_at: int


class QemuBackend:
    """The qemu backend (see the module docstring); implements :class:`vmpod.backend.Backend`."""

    name: str = "qemu"

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.root = Path(config.state_dir).absolute() / "backends" / "qemu" / "machines"
        self.root.mkdir(parents=True, exist_ok=True)
        self.binary = config.options.get("binary", DEFAULT_BINARY)
        accel = config.options.get("accel", "auto")
        if accel not in ("auto", "kvm", "tcg"):
            raise BackendError(f"qemu: option accel={accel!r}: use auto, kvm or tcg")
        self._accel = accel
        if shutil.which(self.binary) is None:
            raise BackendUnavailable(f"qemu: {self.binary} is not installed (Debian package qemu-system-x86)")
        for directory in sorted(self.root.iterdir()):
            if (directory / MACHINE_FILE).is_file():
                with contextlib.suppress(BackendError):
                    self._ensure_supervised(directory)

    # ---- helpers ------------------------------------------------------------------------

    def accelerator(self) -> str:
        """``kvm`` or ``tcg``: the option when set, else what :func:`vmpod.accel.detect_accelerator` finds."""
        return detect_accelerator() if self._accel == "auto" else self._accel

    def _dir(self, name: str) -> Path:
        if not _NAME_RE.fullmatch(name):
            raise NotFoundError(f"qemu: no machine {name!r} (not a valid machine name)")
        return self.root / name

    def _record(self, name: str) -> _Record:
        data = read_json(self._dir(name) / MACHINE_FILE)
        if data is None:
            raise NotFoundError(f"qemu: no machine {name!r}")
        return _Record(machine=convert.structure(data["machine"], Machine), created_at=int(data["created_at"]))

    @contextlib.contextmanager
    def _op(self, name: str) -> Iterator[_Record]:
        """Hold the machine's operation lock; NotFoundError when there is no machine (any more)."""
        directory = self._dir(name)
        try:
            fd = os.open(directory / OP_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NotFoundError(f"qemu: no machine {name!r}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._record(name)
        finally:
            os.close(fd)

    def _spawn_supervisor(self, mode: str, directory: Path, machine: Machine, boot: str,
                          argv: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-I", "-S", str(_LAUNCHER), mode, "--dir", str(directory),
                   "--log", machine.serial_log, "--boot", boot, "--path", _launcher_path()]
        if argv:
            command += ["--", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False,
                              stdin=subprocess.DEVNULL)

    def _ensure_supervised(self, directory: Path) -> None:
        """Restart the supervisor (attach mode) of a running qemu that lost it; the log goes on."""
        run, ended = boot_records(directory)
        if run is None or ended is not None:
            return
        qemu = ProcessIdentity.from_run(run)
        if qemu is None or not qemu.alive() or supervisor_running(directory):
            return
        machine = self._record(directory.name).machine
        result = self._spawn_supervisor("attach", directory, machine, str(run.get("boot", "")))
        if result.returncode != 0 and not supervisor_running(directory):
            log.warning("qemu: cannot re-attach a supervisor to %s: %s", directory.name, result.stderr.strip())
        else:
            log.info("qemu: re-attached a supervisor to running machine %s (pid %s)", directory.name, qemu.pid)

    def _finish(self, directory: Path, machine: Machine) -> None:
        """Record how a dead qemu ended when no supervisor did: finish its log and write ``exit.json``."""
        if boot_records(directory)[1] is not None:
            return
        if supervisor_running(directory) and wait_supervisor(directory, _SUPERVISOR_GRACE) and \
                boot_records(directory)[1] is not None:
            return
        with holding_supervisor_lock(directory) as held:
            run, ended = boot_records(directory)
            if not held or run is None or ended is not None:
                return
            boot = str(run.get("boot", ""))
            CriLogWriter(directory, Path(machine.serial_log), boot).pump(final=True)
            write_json(directory / EXIT_FILE, exit_record(
                None, read_json(directory / STOP_FILE), now_ns=time.time_ns(), pid=int(run.get("pid", 0)),
                boot=boot, started_at=int(run.get("started_at", 0))))

    def _status(self, name: str, record: _Record | None = None, *, probe: bool = True) -> MachineStatus:
        """The machine's status; ``probe``: ask a running qemu over QMP (its view goes in ``message``)."""
        record = record or self._record(name)
        directory = self._dir(name)
        run, ended = boot_records(directory)
        base = MachineStatus(name=name, state=MachineState.CREATED, created_at=record.created_at)
        if run is None and ended is None:
            return base
        qemu = ProcessIdentity.from_run(run) if run is not None else None
        started_at = int((run or ended or {}).get("started_at", 0))
        if ended is None and qemu is not None and qemu.alive():
            message = ""
            if probe:
                try:
                    (state,) = qmp_call(directory / QMP_SOCKET, ("query-status", None), timeout=5)
                    message = f"qemu: {state.get('status', '?')}"
                except QMPUnavailable as exc:
                    message = str(exc)
            if not supervisor_running(directory):
                self._ensure_supervised(directory)
            return attrs.evolve(base, state=MachineState.RUNNING, started_at=started_at, message=message)
        if ended is None:
            self._finish(directory, record.machine)
            ended = boot_records(directory)[1] or {}
        return attrs.evolve(base, state=MachineState.STOPPED, started_at=started_at,
                            finished_at=max(int(ended.get("finished_at", 0)), started_at),
                            exit_code=int(ended.get("exit_code", -1)),
                            exit_reason=str(ended.get("exit_reason", "Unknown")),
                            message=str(ended.get("message", "")))

    def _running(self, name: str, operation: str) -> tuple[Path, ProcessIdentity]:
        status = self._status(name)
        directory = self._dir(name)
        run = read_json(directory / RUN_FILE)
        qemu = ProcessIdentity.from_run(run) if run is not None else None
        if status.state is not MachineState.RUNNING or qemu is None:
            raise InvalidTransition(f"qemu: cannot {operation} machine {name!r}: it is {status.state}, not running")
        return directory, qemu

    def _force_off(self, directory: Path, qemu: ProcessIdentity) -> None:
        """QMP ``quit`` (qemu exits cleanly, disks flushed), then SIGKILL if it does not go."""
        with contextlib.suppress(BackendError):
            qmp_call(directory / QMP_SOCKET, ("quit", None), timeout=2)
        if qemu.wait(_QUIT_GRACE):
            return
        log.warning("qemu: pid %d ignored QMP quit; killing it", qemu.pid)
        qemu.send(signal.SIGKILL)
        if not qemu.wait(_KILL_GRACE):
            raise BackendError(f"qemu: pid {qemu.pid} survived SIGKILL")

    def _stop_supervisor(self, directory: Path) -> None:
        """Let the supervisor finish (qemu is gone); terminate it if it lingers."""
        if wait_supervisor(directory, _SUPERVISOR_GRACE):
            return
        run = read_json(directory / RUN_FILE) or {}
        keeper = ProcessIdentity.from_run(run, prefix="supervisor_")
        if keeper is not None and keeper.send(signal.SIGTERM) and not keeper.wait(_SUPERVISOR_GRACE):
            keeper.send(signal.SIGKILL)
            keeper.wait(_KILL_GRACE)

    # ---- the Backend protocol --------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """Disks on scsi/virtio with Virtlet's limits, 9p shares, user/tap NICs, a unix-socket console."""
        accel = self.accelerator()
        return Capabilities(
            accelerator=accel,
            disk_buses=("scsi", "virtio"),
            max_disks={bus.value: limit for bus, limit in MAX_DISKS.items()},
            filesystems=("9p",),
            network_modes=("user", "tap", "cni"),  # cni: qemu starts inside the pod network namespace
            console=True,
            graceful_stop=True,
            survives_restart=True,
            port_forward=True,
            vnc=True,
            notes=f"{self.binary} ({accel}), daemonized, one supervisor process per machine; state in {self.root}",
        )

    def create(self, machine: Machine) -> MachineStatus:
        """Record ``machine`` (CREATED); the same name and UUID again returns its status unchanged."""
        directory = self._dir(machine.name)
        try:
            existing = self._record(machine.name)
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing.machine.uuid != machine.uuid:
                raise ConflictError(f"qemu: machine {machine.name!r} exists with another UUID "
                                    f"({existing.machine.uuid})")
            return self._status(machine.name, existing)
        build_argv(machine, accel="tcg", paths=QemuPaths(str(directory)), binary=self.binary)  # fail early
        directory.mkdir(exist_ok=True)
        record = {"machine": convert.unstructure(machine), "created_at": time.time_ns()}
        try:
            write_json(directory / MACHINE_FILE, record)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise BackendError(f"qemu: cannot record machine {machine.name!r}: {exc}") from exc
        return self._status(machine.name)

    def start(self, name: str) -> MachineStatus:
        """Start qemu under a new supervisor; a running machine is left alone."""
        with self._op(name) as record:
            status = self._status(name, record)
            if status.state is MachineState.RUNNING:
                return status
            directory = self._dir(name)
            if not wait_supervisor(directory, _SUPERVISOR_GRACE):
                raise BackendError(f"qemu: the supervisor of {name!r} is still finishing the last run")
            for stale in _PER_BOOT:
                (directory / stale).unlink(missing_ok=True)
            accel = self.accelerator()
            argv = build_argv(record.machine, accel=accel, paths=QemuPaths(str(directory)), binary=self.binary)
            log.info("qemu: starting %s with %s", name, accel)
            boot = uuid.uuid4().hex
            result = self._spawn_supervisor("start", directory, record.machine, boot, argv)
            if result.returncode != 0:
                if (read_json(directory / EXIT_FILE) or {}).get("boot") != boot:
                    now = time.time_ns()
                    write_json(directory / EXIT_FILE, {"boot": boot, "started_at": now, "finished_at": now,
                                                       "exit_code": 1, "exit_reason": "StartError",
                                                       "message": result.stderr.strip()})
                raise BackendError(f"qemu: cannot start {name!r}: {result.stderr.strip().removeprefix('error: ')}")
            return self._status(name, record, probe=False)  # no QMP round trip while the guest boots

    def stop(self, name: str, timeout: float) -> MachineStatus:
        """ACPI power-off; after ``timeout`` seconds force qemu off (exit reason ``Killed``)."""
        with self._op(name) as record:
            status = self._status(name, record)
            if status.state is not MachineState.RUNNING:
                return status
            directory = self._dir(name)
            run = read_json(directory / RUN_FILE) or {}
            qemu = ProcessIdentity.from_run(run)
            boot = run.get("boot", "")
            if qemu is not None:
                write_json(directory / STOP_FILE, {"boot": boot, "forced": False, "requested_at": time.time_ns()})
                with contextlib.suppress(BackendError):
                    qmp_call(directory / QMP_SOCKET, ("system_powerdown", None), timeout=max(min(timeout, 5), 1))
                if not qemu.wait(timeout):
                    write_json(directory / STOP_FILE, {"boot": boot, "forced": True, "requested_at": time.time_ns()})
                    self._force_off(directory, qemu)
            self._stop_supervisor(directory)
            self._finish(directory, record.machine)
            return self._status(name, record)

    def destroy(self, name: str) -> None:
        """Force qemu off, finish the log, remove the machine directory; an unknown machine is fine."""
        try:
            directory = self._dir(name)
        except NotFoundError:
            return
        if not directory.exists():
            return
        try:
            with self._op(name) as record:
                run = read_json(directory / RUN_FILE)
                qemu = ProcessIdentity.from_run(run) if run is not None else None
                if run is not None and qemu is not None and qemu.alive():
                    write_json(directory / STOP_FILE, {"boot": run.get("boot", ""), "forced": True,
                                                       "requested_at": time.time_ns()})
                    self._force_off(directory, qemu)
                if run is not None:
                    self._stop_supervisor(directory)
                    self._finish(directory, record.machine)
                _console_link(directory / ATTACH_SOCKET).unlink(missing_ok=True)
                shutil.rmtree(directory)
        except NotFoundError:
            shutil.rmtree(directory, ignore_errors=True)

    def status(self, name: str) -> MachineStatus:
        """CREATED, RUNNING (qemu runs; QMP's view in ``message``) or STOPPED with the exit reason."""
        return self._status(name)

    def list(self) -> tuple[MachineInfo, ...]:
        """Every machine in the state directory (``owned`` when it carries vmpod's marker)."""
        infos = []
        for directory in sorted(self.root.iterdir()):
            try:
                record = self._record(directory.name)
                status = self._status(directory.name, record)
            except NotFoundError:
                continue  # destroyed meanwhile, or not a machine directory
            machine = record.machine
            infos.append(MachineInfo(name=machine.name, uuid=str(machine.uuid), state=status.state,
                                     owned=MARKER_LABEL in machine.labels, labels=dict(machine.labels)))
        return tuple(infos)

    def console(self, name: str) -> ConsoleEndpoint:
        """The console monitor's unix socket, ``attach.sock`` (any number of clients; see :mod:`vmpod.consolemux`).

        qemu's own ``console.sock`` takes one client, and the monitor is it.  A supervisor that
        was lost is restarted first (by the status check).  A socket path too long for
        ``connect`` (over 107 bytes, in a deep state directory) is given as a short symlink to it
        (:func:`_console_link`, removed by ``destroy``).
        """
        directory, _ = self._running(name, "attach to the console of")
        path = directory / ATTACH_SOCKET
        if len(os.fsencode(str(path))) <= _MAX_UNIX_PATH:
            return ConsoleEndpoint(kind="unix", path=str(path))
        link = _console_link(path)
        link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (link.is_symlink() and os.readlink(link) == str(path)):
            tmp = link.with_name(f".{link.name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path)
            os.replace(tmp, link)
        return ConsoleEndpoint(kind="unix", path=str(link))

    def stats(self, name: str) -> MachineStats:
        """CPU time and resident memory of the qemu process (checked alive over QMP first)."""
        directory, qemu = self._running(name, "get stats of")
        qmp_call(directory / QMP_SOCKET, ("query-status", None), timeout=5)
        return MachineStats(timestamp=time.time_ns(), cpu_time_ns=cpu_time_ns(qemu.pid),
                            memory_bytes=rss_bytes(qemu.pid))

    def close(self) -> None:
        """Nothing to release: every QMP session is closed after its call; machines keep running."""

    # ---- beyond the protocol -----------------------------------------------------------------

    def add_port_forward(self, name: str, forward: PortForward) -> None:
        """``hostfwd_add`` on the user netdev of the running machine (see :mod:`vmpod.forwarding`)."""
        check_forward(forward)
        directory, _ = self._running(name, "forward a port to")
        netdev = f"net{user_netdev_index(self._record(name).machine.nics)}"
        check_host_port_free(forward)
        (reply,) = qmp_call(directory / QMP_SOCKET, ("human-monitor-command",
                                                     {"command-line": hostfwd_add_command(netdev, forward)}))
        read_hostfwd_reply(str(reply), forward, adding=True)

    def remove_port_forward(self, name: str, forward: PortForward) -> None:
        """``hostfwd_remove``; a forward or machine that is gone, or a machine not running, is fine."""
        try:
            directory, _ = self._running(name, "remove a port forward of")
            nics = self._record(name).machine.nics
            if not any(nic.mode is NetworkMode.USER for nic in nics):
                return  # nothing was ever forwarded
            netdev = f"net{user_netdev_index(nics)}"
            qmp_call(directory / QMP_SOCKET, ("human-monitor-command",
                                              {"command-line": hostfwd_remove_command(netdev, forward)}))
        except (NotFoundError, InvalidTransition, QMPUnavailable):
            return

    def vnc_address(self, name: str) -> tuple[str, int] | None:
        """Where the machine's VNC server listens (``("127.0.0.1", 5900)``), or ``None`` without VNC."""
        directory, _ = self._running(name, "find the VNC server of")
        (info,) = qmp_call(directory / QMP_SOCKET, ("query-vnc", None))
        if not info.get("enabled"):
            return None
        return str(info["host"]), int(info["service"])

    def qmp(self, name: str, command: str, arguments: dict[str, object] | None = None) -> Any:
        """Run one QMP command on a running machine and return its value (for diagnostics and tests)."""
        directory, _ = self._running(name, "talk to")
        (value,) = qmp_call(directory / QMP_SOCKET, (command, arguments))
        return value

    def files(self, name: str) -> tuple[Path, ...]:
        """The backend's own files for a machine (empty once it is destroyed)."""
        directory = self.root / name
        return tuple(sorted(directory.iterdir())) if directory.is_dir() else ()
