"""The ``libvirt`` backend: every machine is a persistent libvirt domain, as in Virtlet.

``create`` defines the domain (:func:`vmpod_libvirt.domain.domain_xml`: type ``kvm`` when KVM
really works here, else ``qemu``); ``start`` starts it and a detached log follower
(:mod:`vmpod_libvirt.follower`) that appends the serial console to the pod log and serves the console
to ``vmpod attach`` clients (``attach.sock``, :meth:`LibvirtBackend.console`); ``stop`` presses
the ACPI power button and destroys the domain if the guest has not powered off within the
timeout; ``destroy`` destroys and undefines it and removes the backend's files.

State comes from libvirt's domain state (Virtlet's mapping, ``virtlet-behaviour.md`` 1.13):
running or shutting down is RUNNING; shut off is CREATED when vmpod never started it, else
STOPPED (also crashed).  Unlike Virtlet, a *paused* or guest-suspended domain is RUNNING (with a
message): its qemu still holds the machine's memory and will resume the same run, so reporting
it stopped would invite a second start.  Start times, stop times and exit reasons, which libvirt
forgets, are kept per run in the machine's runtime directory (:mod:`vmpod_libvirt.records`).

What marks a domain as vmpod's: the ``<vmpod:machine>`` metadata element with the machine's
labels.  ``owned`` in :meth:`list` is :data:`~vmpod.machine.MARKER_LABEL` among those labels; a
domain with no vmpod metadata at all (somebody else's) is listed but never started, stopped or
destroyed: those raise :class:`~vmpod.errors.ConflictError`.

The connection is reopened when libvirtd restarts (:class:`~vmpod_libvirt.connection.Connection`);
running domains, and virtlogd's serial output, do not notice.  A new backend object (a vmpod
restart) adopts running domains: it restarts a log follower for any that lost its follower, and
never restarts a domain.

Reaching a guest (:class:`vmpod.backend.GuestAccess`): port forwards are the monitor's
``hostfwd_add``/``hostfwd_remove`` sent with ``libvirt_qemu.qemuMonitorCommand`` (HMP) on the
domain's first user netdev, found with ``info network`` (vmpod's ``vmpodnet<N>`` from
``<qemu:commandline>`` when the machine has static forwards, libvirt's ``hostnet<N>``
otherwise); ``vnc_address`` reads ``<graphics type="vnc">`` of the live domain XML.

Backend options (``BackendConfig.options``):

``uri``
    libvirt connection URI (default ``qemu:///system``).
``accel``
    ``auto`` (default: :func:`vmpod.accel.detect_accelerator`), ``kvm`` or ``tcg``.
``allowed_devices``
    comma-separated globs of host block devices a machine may use as raw disks (default
    ``/dev/loop*``, Virtlet's ``rawDevices``); anything else is refused at ``create``.
``reconnect_timeout``
    seconds an operation waits for libvirtd to come back (default 30).

qemu runs as libvirt's configured user (``libvirt-qemu`` on Debian) with libvirt's dynamic
ownership: disks, the seed and their backing images must be reachable by that user (vmpod's
default state directory is).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Final

import libvirt_qemu  # type: ignore[import-untyped]

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
from vmpod.consolemux import ATTACH_SOCKET, bind_attach_socket
from vmpod.errors import (
    BackendError,
    BackendUnavailable,
    ConflictError,
    InvalidTransition,
    NotFoundError,
    SpecError,
)
from vmpod.forwarding import (
    check_forward,
    check_host_port_free,
    hostfwd_add_command,
    hostfwd_remove_command,
    hostfwd_rule,
    read_hostfwd_reply,
)
from vmpod.machine import MARKER_LABEL, Machine, PortForward
from vmpod.procutil import ProcessIdentity, recorded_pid, try_flock
from vmpod_libvirt import connection as lv
from vmpod_libvirt.consolelog import SerialLog
from vmpod_libvirt.domain import (
    MAX_DISKS,
    METADATA_NS,
    DomainMetadata,
    domain_type,
    domain_xml,
    parse_metadata,
)
from vmpod_libvirt.records import (
    CONSOLE_DIR,
    EXIT_FILE,
    FOLLOWER_FILE,
    FOLLOWER_LOCK,
    FOLLOWER_LOG,
    OP_LOCK,
    RECORDS_LOCK,
    RUN_FILE,
    SERIAL_RAW,
    STOP_FILE,
    backend_files,
    ensure_exit,
    exit_of_boot,
    locked,
    read_json,
    write_json,
)

__all__ = ["DEFAULT_URI", "LibvirtBackend"]

log = logging.getLogger(__name__)

DEFAULT_URI: Final = "qemu:///system"
DEFAULT_ALLOWED_DEVICES: Final = "/dev/loop*"
#: How often ``stop`` looks whether the guest has powered off.
_STOP_POLL: Final = 0.05
#: How long ``stop``/``destroy`` wait for the follower to finish the log.
_FOLLOWER_GRACE: Final = 5.0
_ACTIVE_STATES: Final = frozenset({lv.RUNNING, lv.BLOCKED, lv.SHUTDOWN, lv.PAUSED, lv.PMSUSPENDED})
_ENDED_STATES: Final = frozenset({lv.SHUTOFF, lv.CRASHED})
_MESSAGES: Final = {lv.PAUSED: "paused", lv.PMSUSPENDED: "suspended by the guest", lv.SHUTDOWN: "shutting down"}


def _virtiofs_available() -> bool:
    return shutil.which("virtiofsd") is not None or any(
        Path(p).exists() for p in ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"))


class LibvirtBackend:
    """The libvirt backend (see the module docstring); implements :class:`vmpod.backend.Backend`."""

    name: str = "libvirt"

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        options = config.options
        self.uri = options.get("uri", DEFAULT_URI)
        accel = options.get("accel", "auto")
        if accel not in ("auto", "kvm", "tcg"):
            raise BackendError(f"libvirt: option accel={accel!r}: use auto, kvm or tcg")
        self._accel = accel
        self.allowed_devices = tuple(p.strip() for p in options.get("allowed_devices", DEFAULT_ALLOWED_DEVICES)
                                     .split(",") if p.strip())
        try:
            reconnect_timeout = float(options.get("reconnect_timeout", "30"))
        except ValueError as exc:
            raise BackendError(f"libvirt: option reconnect_timeout={options['reconnect_timeout']!r}: "
                               "use a number of seconds") from exc
        self.connection = lv.Connection(self.uri, reconnect_timeout)
        self.connection.open()
        self._adopt()

    # ---- helpers ------------------------------------------------------------------------

    def accelerator(self) -> str:
        """``kvm`` or ``tcg``: the option when set, else what :func:`vmpod.accel.detect_accelerator` finds."""
        return detect_accelerator() if self._accel == "auto" else self._accel

    @staticmethod
    def _lookup(conn: lv.Connect, name: str) -> lv.Domain:
        try:
            return conn.lookupByName(name)
        except lv.LibvirtError as exc:
            if lv.error_code(exc) == lv.ERR_NO_DOMAIN:
                raise NotFoundError(f"libvirt: no domain {name!r}") from None
            raise

    @staticmethod
    def _metadata(domain: lv.Domain) -> DomainMetadata | None:
        """vmpod's metadata of ``domain``, or ``None`` when vmpod did not create it."""
        try:
            text = domain.metadata(lv.METADATA_ELEMENT, METADATA_NS, 0)
        except lv.LibvirtError as exc:
            if lv.error_code(exc) == lv.ERR_NO_DOMAIN_METADATA:
                return None
            raise
        return parse_metadata(text)

    def _ours(self, conn: lv.Connect, name: str, action: str) -> tuple[lv.Domain, DomainMetadata]:
        domain = self._lookup(conn, name)
        metadata = self._metadata(domain)
        if metadata is None:
            raise ConflictError(f"libvirt: domain {name!r} was not created by vmpod; refusing to {action} it")
        return domain, metadata

    def _call_ours(self, name: str, action: str) -> DomainMetadata:
        return self.connection.call(lambda conn: self._ours(conn, name, action)[1])

    def _failure(self, what: str, exc: Exception) -> BackendError:
        if lv.is_connection_error(exc):
            return BackendUnavailable(f"libvirt: {what}: {exc}")
        return BackendError(f"libvirt: {what}: {exc}")

    # ---- status -------------------------------------------------------------------------

    def _status_of(self, domain: lv.Domain, metadata: DomainMetadata | None) -> MachineStatus:
        """The status of ``domain`` from its libvirt state and vmpod's run records."""
        name = domain.name()
        state, reason = domain.state()[:2]
        if metadata is None:
            mapped = (MachineState.RUNNING if state in _ACTIVE_STATES else
                      MachineState.STOPPED if state in _ENDED_STATES else MachineState.UNKNOWN)
            return MachineStatus(name=name, state=mapped, message="not created by vmpod")
        created_at = metadata.created_at
        directory = Path(metadata.runtime_dir)
        if state in _ACTIVE_STATES:
            current = self._current_run(domain, metadata)
            return MachineStatus(name=name, state=MachineState.RUNNING, created_at=created_at,
                                 started_at=int(current["started_at"]), message=_MESSAGES.get(state, ""))
        if state in _ENDED_STATES:
            run = read_json(directory / RUN_FILE)
            if run is None:
                return MachineStatus(name=name, state=MachineState.CREATED, created_at=created_at)
            ended = ensure_exit(directory, run, reason if state == lv.SHUTOFF else lv.SHUTOFF_CRASHED,
                                time.time_ns())
            return MachineStatus(name=name, state=MachineState.STOPPED, created_at=created_at,
                                 started_at=int(ended["started_at"]), finished_at=int(ended["finished_at"]),
                                 exit_code=int(ended["exit_code"]), exit_reason=str(ended["exit_reason"]),
                                 message=str(ended["message"]))
        return MachineStatus(name=name, state=MachineState.UNKNOWN, created_at=created_at,
                             message=f"libvirt reports domain state {state}")

    def _current_run(self, domain: lv.Domain, metadata: DomainMetadata) -> dict[str, Any]:
        """The run record of the running ``domain``; one is made for a run vmpod did not start."""
        directory = Path(metadata.runtime_dir)
        domain_id = domain.ID()

        def current(run: dict[str, Any] | None) -> bool:
            return (run is not None and run.get("domain_id") == domain_id
                    and exit_of_boot(directory, str(run.get("boot"))) is None)

        run = read_json(directory / RUN_FILE)
        if not current(run):
            with locked(directory / RECORDS_LOCK):
                run = read_json(directory / RUN_FILE)
                if not current(run):
                    # started behind vmpod's back (virsh start), or restarted: a new run from now on
                    run = {"boot": uuid.uuid4().hex, "started_at": time.time_ns(), "domain_id": domain_id,
                           "adopted": True}
                    write_json(directory / RUN_FILE, run)
        assert run is not None
        self._ensure_follower(domain.UUIDString(), metadata, run)
        return run

    # ---- the log follower -----------------------------------------------------------------

    def _ensure_follower(self, domain_uuid: str, metadata: DomainMetadata, run: dict[str, Any]) -> None:
        """Start the log follower of a running machine unless one runs."""
        directory = Path(metadata.runtime_dir)
        if not metadata.serial_log:
            return
        # The follower lock is taken here and handed to the follower (an inherited descriptor of the
        # same open file keeps the lock): no second follower can start while the first one boots.
        lock = os.open(directory / FOLLOWER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not try_flock(lock, holder=recorded_pid(directory / FOLLOWER_FILE)):  # a just-killed one is waited for
                return  # a follower runs
            # The attach socket is bound here too (under the lock: a stale one of a killed follower is
            # replaced) and handed over: it exists once start returns, clients queue until it serves.
            listener = bind_attach_socket(directory / ATTACH_SOCKET)
            argv = [sys.executable, "-m", "vmpod_libvirt.follower", "--dir", str(directory), "--log",
                    metadata.serial_log, "--boot", str(run["boot"]), "--uri", self.uri, "--uuid", domain_uuid,
                    "--domain-id", str(run["domain_id"]), "--lock-fd", str(lock),
                    "--listen-fd", str(listener.fileno())]
            # Detached through a shell that backgrounds it in a new session and exits at once: the
            # follower is nobody's child here, outlives vmpod, and leaves no zombie to reap.
            script = 'setsid "$@" </dev/null >>"$VMPOD_FOLLOWER_LOG" 2>&1 &'
            env = {**os.environ, "VMPOD_FOLLOWER_LOG": str(directory / FOLLOWER_LOG)}
            with listener:
                subprocess.run(["/bin/sh", "-c", script, "vmpod-libvirt-follower", *argv], env=env, check=True,
                               stdin=subprocess.DEVNULL, pass_fds=(lock, listener.fileno()))
        finally:
            os.close(lock)

    @staticmethod
    def _finish_log(directory: Path, log_path: str, boot: str) -> None:
        """Stop the follower (it finishes the log) and make sure every line of ``boot`` is in the log."""
        follower = ProcessIdentity.from_run(read_json(directory / FOLLOWER_FILE) or {})
        if follower is not None:
            follower.send(signal.SIGTERM)  # only if it is still the recorded process (through a pidfd)
        deadline = time.monotonic() + _FOLLOWER_GRACE
        while True:
            with locked(directory / FOLLOWER_LOCK, blocking=False) as free:
                if free:
                    if log_path and boot:
                        SerialLog(directory, Path(log_path), boot).pump(final=True)
                    (directory / FOLLOWER_FILE).unlink(missing_ok=True)
                    return
            if time.monotonic() >= deadline:
                log.warning("libvirt: the log follower in %s did not finish in time", directory)
                return
            time.sleep(0.02)

    # ---- adoption --------------------------------------------------------------------------

    def _adopt(self) -> None:
        """vmpod (re)started: give running vmpod domains a follower; finish logs a dead follower left."""
        def walk(conn: lv.Connect) -> None:
            for domain in conn.listAllDomains(0):
                try:
                    metadata = self._metadata(domain)
                    if metadata is None or not Path(metadata.runtime_dir).is_dir():
                        continue
                    status = self._status_of(domain, metadata)
                except lv.LibvirtError as exc:
                    if lv.error_code(exc) == lv.ERR_NO_DOMAIN:
                        continue  # removed meanwhile
                    raise
                directory = Path(metadata.runtime_dir)
                if status.state is MachineState.STOPPED and (directory / FOLLOWER_FILE).exists():
                    run = read_json(directory / RUN_FILE) or {}
                    self._finish_log(directory, metadata.serial_log, str(run.get("boot", "")))

        self.connection.call(walk)

    # ---- the Backend protocol -----------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """Virtlet's buses and limits, 9p (and virtiofs when virtiofsd is installed), the accelerator."""
        accelerator = self.accelerator()
        return Capabilities(
            accelerator=accelerator,
            disk_buses=("scsi", "virtio"),
            max_disks={bus.value: limit for bus, limit in MAX_DISKS.items()},
            filesystems=("9p", "virtiofs") if _virtiofs_available() else ("9p",),
            network_modes=("user", "tap"),
            console=True,
            graceful_stop=True,
            survives_restart=True,
            port_forward=True,
            vnc=True,
            notes=f"libvirt at {self.uri}, domain type {domain_type(accelerator)}",
        )

    def _validate(self, machine: Machine) -> None:
        """Refuse what libvirt would only refuse at start, before anything is defined."""
        for index, disk in enumerate(machine.disks):
            if disk.block:
                real = os.path.realpath(disk.path)
                if not any(fnmatch.fnmatchcase(real, g) or fnmatch.fnmatchcase(disk.path, g)
                           for g in self.allowed_devices):
                    raise SpecError(f"machine.disks[{index}].path",
                                    f"block device of volume {disk.name!r} is not one the libvirt backend may use",
                                    value=disk.path, accepted="block devices matching "
                                    f"{', '.join(self.allowed_devices) or 'nothing'} (backend option allowed_devices)")
                try:
                    mode = os.stat(real).st_mode
                except OSError as exc:
                    raise SpecError(f"machine.disks[{index}].path", f"block device of volume {disk.name!r} "
                                    f"cannot be used: {exc.strerror}", value=disk.path) from None
                if not stat.S_ISBLK(mode):
                    raise SpecError(f"machine.disks[{index}].path", f"volume {disk.name!r} is not a block device",
                                    value=disk.path, accepted="a block device")
            elif not os.path.isfile(disk.path):
                raise BackendError(f"libvirt: disk {disk.name!r} of {machine.name!r}: {disk.path} is not a file")
        for share in machine.filesystems:
            if not os.path.isdir(share.source):
                raise BackendError(f"libvirt: filesystem {share.tag!r} of {machine.name!r}: {share.source} "
                                   "is not a directory")

    def create(self, machine: Machine) -> MachineStatus:
        """Define the domain (CREATED); the same name and UUID again returns its status.

        :raises ConflictError: a domain with this name and another UUID exists, or one that is not vmpod's.
        :raises SpecError: a block device outside ``allowed_devices``.
        :raises BackendError: a machine libvirt cannot run (too many disks for the bus...).
        """
        created_at = time.time_ns()
        xml = domain_xml(machine, self.accelerator(), created_at=created_at)
        self._validate(machine)

        def define(conn: lv.Connect) -> MachineStatus:
            try:
                existing = conn.lookupByName(machine.name)
            except lv.LibvirtError as exc:
                if lv.error_code(exc) != lv.ERR_NO_DOMAIN:
                    raise
            else:
                metadata = self._metadata(existing)
                if metadata is None:
                    raise ConflictError(f"libvirt: a domain named {machine.name!r} exists and is not vmpod's")
                if existing.UUIDString() != str(machine.uuid):
                    raise ConflictError(f"libvirt: a domain named {machine.name!r} exists with another UUID "
                                        f"({existing.UUIDString()}, not {machine.uuid})")
                return self._status_of(existing, metadata)
            Path(machine.runtime_dir).mkdir(parents=True, exist_ok=True)
            try:
                conn.defineXML(xml)
            except lv.LibvirtError as exc:
                if lv.error_code(exc) in (lv.ERR_OPERATION_FAILED, lv.ERR_DOM_EXIST):
                    raise ConflictError(f"libvirt: cannot define {machine.name!r}: {exc}") from None
                raise
            log.info("libvirt: defined domain %s (type %s)", machine.name, domain_type(self.accelerator()))
            return MachineStatus(name=machine.name, state=MachineState.CREATED, created_at=created_at)

        try:
            return self.connection.call(define)
        except lv.LibvirtError as exc:
            raise self._failure(f"cannot define {machine.name!r}", exc) from None

    def start(self, name: str) -> MachineStatus:
        """Start the domain and its log follower; a running domain is left alone."""
        metadata = self._call_ours(name, "start")
        directory = Path(metadata.runtime_dir)
        directory.mkdir(parents=True, exist_ok=True)
        with locked(directory / OP_LOCK):
            status = self.status(name)
            if status.state is MachineState.RUNNING:
                return status
            previous = read_json(directory / RUN_FILE)
            if previous is not None:
                self._finish_log(directory, metadata.serial_log, str(previous.get("boot", "")))
            for path in [directory / SERIAL_RAW, *directory.glob(f"{SERIAL_RAW}.*")]:
                path.unlink(missing_ok=True)
            shutil.rmtree(directory / CONSOLE_DIR, ignore_errors=True)
            boot = uuid.uuid4().hex
            started_at = max(time.time_ns(), status.finished_at, status.created_at)
            with locked(directory / RECORDS_LOCK):
                write_json(directory / RUN_FILE, {"boot": boot, "started_at": started_at, "domain_id": -1})
                try:
                    domain_uuid, domain_id = self.connection.call(lambda conn: _start(self._lookup(conn, name)))
                except lv.LibvirtError as exc:
                    write_json(directory / EXIT_FILE, {
                        "boot": boot, "started_at": started_at, "finished_at": max(time.time_ns(), started_at),
                        "exit_code": 1, "exit_reason": "StartError", "message": str(exc)})
                    raise self._failure(f"cannot start {name!r}", exc) from None
                run = {"boot": boot, "started_at": started_at, "domain_id": domain_id}
                write_json(directory / RUN_FILE, run)
            self._ensure_follower(domain_uuid, metadata, run)
            return self.status(name)

    def stop(self, name: str, timeout: float) -> MachineStatus:
        """ACPI power button, then destroy after ``timeout`` seconds; a machine not running is returned unchanged."""
        metadata = self._call_ours(name, "stop")
        directory = Path(metadata.runtime_dir)
        with locked(directory / OP_LOCK):
            status = self.status(name)
            if status.state is not MachineState.RUNNING:
                return status
            run = read_json(directory / RUN_FILE) or {}
            boot = str(run.get("boot", ""))
            write_json(directory / STOP_FILE, {"boot": boot, "forced": False})
            try:
                self.connection.call(lambda conn: _power_button(self._lookup(conn, name)))
                deadline = time.monotonic() + max(0.0, timeout)
                while self._active(name) and time.monotonic() < deadline:
                    time.sleep(_STOP_POLL)
                if self._active(name):
                    write_json(directory / STOP_FILE, {"boot": boot, "forced": True})
                    self.connection.call(lambda conn: _force_off(self._lookup(conn, name)))
            except lv.LibvirtError as exc:
                raise self._failure(f"cannot stop {name!r}", exc) from None
            status = self.status(name)
            self._finish_log(directory, metadata.serial_log, boot)
            return status

    def _active(self, name: str) -> bool:
        return bool(self.connection.call(lambda conn: self._lookup(conn, name).isActive()))

    def destroy(self, name: str) -> None:
        """Destroy and undefine the domain, stop its follower, remove the backend's files; gone is fine.

        :raises ConflictError: the domain is not vmpod's (it is left alone).
        """
        try:
            metadata = self._call_ours(name, "destroy")
        except NotFoundError:
            return
        directory = Path(metadata.runtime_dir)
        with contextlib.ExitStack() as stack:
            if directory.is_dir():
                stack.enter_context(locked(directory / OP_LOCK))
            try:
                self.connection.call(lambda conn: _remove(conn, name))
            except lv.LibvirtError as exc:
                raise self._failure(f"cannot destroy {name!r}", exc) from None
            if directory.is_dir():
                run = read_json(directory / RUN_FILE) or {}
                self._finish_log(directory, metadata.serial_log, str(run.get("boot", "")))
                for path in backend_files(directory):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        log.info("libvirt: removed domain %s", name)

    def status(self, name: str) -> MachineStatus:
        """The machine's status; :class:`~vmpod.errors.NotFoundError` when there is no such domain."""
        try:
            return self.connection.call(lambda conn: self._status_in(conn, name))
        except lv.LibvirtError as exc:
            raise self._failure(f"cannot get the state of {name!r}", exc) from None

    def _status_in(self, conn: lv.Connect, name: str) -> MachineStatus:
        domain = self._lookup(conn, name)
        return self._status_of(domain, self._metadata(domain))

    def list(self) -> tuple[MachineInfo, ...]:
        """Every domain of the connection: vmpod's (``owned`` with the marker label) and others'."""
        def collect(conn: lv.Connect) -> tuple[MachineInfo, ...]:
            infos = []
            for domain in conn.listAllDomains(0):
                try:
                    metadata = self._metadata(domain)
                    status = self._status_of(domain, metadata)
                    domain_uuid = domain.UUIDString()
                except lv.LibvirtError as exc:
                    if lv.error_code(exc) == lv.ERR_NO_DOMAIN:
                        continue  # removed meanwhile
                    raise
                labels = dict(metadata.labels) if metadata is not None else {}
                infos.append(MachineInfo(name=status.name, uuid=domain_uuid, state=status.state,
                                         owned=MARKER_LABEL in labels, labels=labels))
            return tuple(sorted(infos, key=lambda info: info.name))

        try:
            return self.connection.call(collect)
        except lv.LibvirtError as exc:
            raise self._failure("cannot list domains", exc) from None

    def _running(self, name: str, what: str) -> lv.Domain:
        def get(conn: lv.Connect) -> lv.Domain:
            domain = self._lookup(conn, name)
            status = self._status_of(domain, self._metadata(domain))
            if status.state is not MachineState.RUNNING:
                raise InvalidTransition(f"libvirt: {what} of {name!r}: the machine is {status.state}, not running")
            return domain

        try:
            return self.connection.call(get)
        except lv.LibvirtError as exc:
            raise self._failure(f"cannot get {what} of {name!r}", exc) from None

    def console(self, name: str) -> ConsoleEndpoint:
        """The console monitor's unix socket, ``attach.sock`` in the runtime directory (any number of clients).

        The monitor is the machine's log follower (:mod:`vmpod_libvirt.follower`), which holds the
        serial pty; a follower that was lost is started again first (by the status check).  A
        path too long for a plain ``connect`` is reached with :func:`vmpod.consolemux.connect_unix`.
        """
        domain = self._running(name, "the console")
        metadata = self._metadata(domain)
        if metadata is None or not metadata.serial_log:
            raise BackendError(f"libvirt: domain {name!r} has no console monitor (it was not started by vmpod)")
        return ConsoleEndpoint(kind="unix", path=str(Path(metadata.runtime_dir) / ATTACH_SOCKET))

    def stats(self, name: str) -> MachineStats:
        """CPU time (libvirt's, ns) and qemu's resident memory of a running machine."""
        domain = self._running(name, "the stats")
        try:
            info = domain.info()
            memory = domain.memoryStats()
        except lv.LibvirtError as exc:
            raise self._failure(f"cannot get the stats of {name!r}", exc) from None
        rss = memory.get("rss")
        return MachineStats(timestamp=time.time_ns(), cpu_time_ns=int(info[4]),
                            memory_bytes=int(rss) * 1024 if rss is not None else int(info[2]) * 1024)

    def close(self) -> None:
        """Close the libvirt connection; domains and their log followers keep running."""
        self.connection.close()

    # ---- GuestAccess -------------------------------------------------------------------------

    def _live_xml(self, domain: lv.Domain, what: str, name: str) -> ET.Element:
        try:
            return ET.fromstring(domain.XMLDesc(0))
        except lv.LibvirtError as exc:
            raise self._failure(f"cannot get {what} of {name!r}", exc) from None

    def _hmp(self, domain: lv.Domain, command: str, name: str) -> str:
        """One human monitor command on the domain's qemu (``virsh qemu-monitor-command --hmp``)."""
        try:
            return str(libvirt_qemu.qemuMonitorCommand(domain, command,
                                                       libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
        except lv.LibvirtError as exc:
            raise self._failure(f"{command.split(maxsplit=1)[0]} on {name!r}", exc) from None

    def add_port_forward(self, name: str, forward: PortForward) -> None:
        """``hostfwd_add`` on the domain's first user-mode netdev (found with the monitor's ``info network``)."""
        check_forward(forward)
        domain = self._running(name, "a port forward")
        netdev = _user_netdev(self._hmp(domain, "info network", name))
        if netdev is None:
            raise BackendError(f"libvirt: domain {name!r} has no user-mode NIC to forward ports on "
                               "(reach a CNI pod at its pod IP)")
        check_host_port_free(forward)
        read_hostfwd_reply(self._hmp(domain, hostfwd_add_command(netdev, forward), name), forward, adding=True)

    def remove_port_forward(self, name: str, forward: PortForward) -> None:
        """``hostfwd_remove``; a forward or machine that is gone, or a machine not running, is fine."""
        try:
            domain = self._running(name, "a port forward")
            netdev = _user_netdev(self._hmp(domain, "info network", name))
            if netdev is not None:
                self._hmp(domain, hostfwd_remove_command(netdev, forward), name)
        except (NotFoundError, InvalidTransition):
            return
        except BackendError as exc:
            log.info("libvirt: removing forward %s of %s: %s", hostfwd_rule(forward), name, exc)

    def vnc_address(self, name: str) -> tuple[str, int] | None:
        """The VNC server of the running domain (``<graphics type='vnc'>``, loopback), ``None`` without one."""
        domain = self._running(name, "the VNC server")
        graphics = self._live_xml(domain, "the VNC server", name).find("devices/graphics[@type='vnc']")
        if graphics is None or int(graphics.get("port", "-1")) <= 0:
            return None
        return graphics.get("listen") or "127.0.0.1", int(graphics.get("port", "-1"))


def _user_netdev(info_network: str) -> str | None:
    """The id of the first user-mode netdev in the human monitor's ``info network``.

    A user NIC with static forwards is ``vmpodnet<N>`` (``<qemu:commandline>``), one without is
    libvirt's own ``hostnet<N>``; both show as `` \\ <id>: index=0,type=user,...``.
    """
    for line in info_network.splitlines():
        match = re.match(r"\s*\\?\s*([\w.#-]+): index=\d+,type=user\b", line)
        if match is not None:
            return match.group(1)
    return None


def _start(domain: lv.Domain) -> tuple[str, int]:
    """Start ``domain`` (already running is fine: a call retried after a reconnect); its UUID and id."""
    try:
        domain.create()
    except lv.LibvirtError as exc:
        if not (lv.error_code(exc) == lv.ERR_OPERATION_INVALID and domain.isActive()):
            raise
    return domain.UUIDString(), domain.ID()


def _power_button(domain: lv.Domain) -> None:
    try:
        domain.shutdownFlags(lv.SHUTDOWN_ACPI)
    except lv.LibvirtError as exc:
        if domain.isActive():
            raise
        log.debug("libvirt: %s stopped before the power button: %s", domain.name(), exc)


def _force_off(domain: lv.Domain) -> None:
    try:
        domain.destroy()
    except lv.LibvirtError:
        if domain.isActive():
            raise


def _remove(conn: lv.Connect, name: str) -> None:
    try:
        domain = conn.lookupByName(name)
        if domain.isActive():
            _force_off(domain)
        domain.undefineFlags(lv.UNDEFINE_ALL)
    except lv.LibvirtError as exc:
        if lv.error_code(exc) != lv.ERR_NO_DOMAIN:
            raise
