"""The runtime: VM pods as CRI pod sandboxes with one VM container each, kept in a durable store.

See :mod:`vmpod.runtime` for the overview.  Every operation that has side
effects follows one protocol:

1. **intent**: one transaction records the operation (``operations`` row) and
   every path it is about to create (``artefacts`` rows);
2. **side effects**: files, volume handlers, backend calls, each idempotent;
3. **outcome**: one transaction records the result and removes the
   operation row.

A crash anywhere leaves either no trace (before 1), or an open operation
that :mod:`vmpod.runtime.reconcile` finishes (``delete``) or undoes
(``create``), or a finished operation.  :func:`vmpod.runtime.faults.point`
marks every step in between for the crash tests.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from vmpod import convert, qcow2
from vmpod.backend import Backend, BackendConfig, Capabilities, ConsoleEndpoint, MachineState, MachineStatus
from vmpod.errors import (
    BackendError,
    ConflictError,
    InvalidTransition,
    NotFoundError,
    SpecError,
    VmpodError,
)
from vmpod.hookspecs import PodEvent, VolumeAttachment, VolumeContext, VolumeHandlerSpec
from vmpod.machine import Machine
from vmpod.model import ExecAction, VMPod
from vmpod.network import NetworkOptions
from vmpod.plugins import PluginManager, get_plugin_manager
from vmpod.runtime import faults
from vmpod.runtime.builder import build_machine, machine_name, persistent_root_device, root_disk_size
from vmpod.runtime.endpoints import loopback_forwards
from vmpod.runtime.files import remove_path, sync_filesystem
from vmpod.runtime.imagestore import ImageStore
from vmpod.runtime.layout import Layout, default_state_dir
from vmpod.runtime.locks import KeyedLocks
from vmpod.runtime.network import attach_network, detach_network, plan_network
from vmpod.runtime.reconcile import ReconcileReport, reconcile
from vmpod.runtime.records import (
    ArtefactKind,
    ContainerRecord,
    EventRecord,
    OperationKind,
    PodRecord,
)
from vmpod.runtime.rootdisk import plan_pod_root, write_pod_root
from vmpod.runtime.seed import write_seed
from vmpod.runtime.selectors import parse_selector
from vmpod.runtime.states import ContainerState, SandboxState, container_state, exit_reason
from vmpod.runtime.store import Store, Transaction

if TYPE_CHECKING:
    from vmpod.probing.status import ProbeStatus

__all__ = ["BACKEND_ENV", "Runtime", "choose_backend"]

log = logging.getLogger(__name__)

#: Environment variable naming the backend for new pods.
BACKEND_ENV = "VMPOD_BACKEND"

_FAKE = "fake"


def choose_backend(plugins: PluginManager, requested: str | None = None) -> tuple[str, str]:
    """The backend for new pods and why: ``requested``, else ``$VMPOD_BACKEND``, else the highest priority one.

    ``fake`` is the default only when no other backend is installed: it runs no guest,
    so choosing it silently would look like success.

    :raises NotFoundError: for an unknown name, or when no backend is installed.
    """
    specs = plugins.backend_specs()
    if requested:
        plugins.backend_spec(requested)
        return requested, "chosen with --backend"
    env = os.environ.get(BACKEND_ENV)
    if env:
        plugins.backend_spec(env)
        return env, f"from ${BACKEND_ENV}"
    real = [s for s in specs.values() if s.name != _FAKE]
    if real:
        best = max(real, key=lambda s: (s.priority, s.name))
        return best.name, f"highest-priority installed backend (priority {best.priority})"
    if _FAKE in specs:
        return _FAKE, "the only installed backend (it simulates VMs: no guest runs)"
    raise NotFoundError("no backend is installed: install vmpod-libvirt, vmpod-qemu or vmpod-fake")


def _now() -> int:
    return time.time_ns()


class _WriterLock:
    """An exclusive :func:`fcntl.flock` on ``vmpod.lock``: one process changes a state directory at a time."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(self._fd)
                    raise ConflictError(f"another vmpod process (pid {holder}) is changing {path.parent}; "
                                        "try again when it is done") from None
                time.sleep(0.02)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


class Runtime:
    """VM pods on one node: lifecycle, durable state, reconcile.  Safe to call from many threads.

    Open with :meth:`open`; close with :meth:`close` (or use it as a context manager).
    Operations on different pods run in parallel; on one pod they are serialized.
    """

    def __init__(self, layout: Layout, store: Store, plugins: PluginManager, *, backend: str, backend_reason: str,
                 backend_options: Mapping[str, str], lock: _WriterLock | None,
                 network: NetworkOptions | None = None) -> None:
        self.layout = layout
        self.network = network or NetworkOptions.resolve()
        self.store = store
        self.plugins = plugins
        self.backend_name = backend
        self.backend_reason = backend_reason
        self.backend_options = dict(backend_options)
        self.readonly = lock is None
        self._lock = lock
        self._pod_locks = KeyedLocks()
        self._backends: dict[str, Backend] = {}
        self._capabilities: dict[str, Capabilities] = {}
        self._backends_guard = threading.Lock()
        self._handlers: dict[type, VolumeHandlerSpec] | None = None
        self._specs: dict[tuple[str, int], VMPod] = {}
        self.images = ImageStore(layout, store, plugins.image_sources())
        self.last_reconcile: ReconcileReport | None = None

    # ---- opening and closing --------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str | Path | None = None, *, backend: str | None = None,
             backend_options: Mapping[str, str] | None = None, plugin_manager: PluginManager | None = None,
             readonly: bool = False, lock_timeout: float = 30.0, reconcile: bool = True,
             network: NetworkOptions | None = None) -> Runtime:
        """Open the runtime on ``state_dir`` (default: :func:`~vmpod.runtime.layout.default_state_dir`).

        A writable runtime takes the state directory's writer lock (waiting up to
        ``lock_timeout`` seconds) and reconciles the store with every backend before
        returning.  A ``readonly`` one takes no lock, never writes and never reconciles:
        use it to look while another process owns the directory.

        :param backend: the backend for new pods (see :func:`choose_backend`).
        :param backend_options: options passed to that backend's factory.
        :param network: the network mode for new pods and the CNI directories (default
            :meth:`NetworkOptions.resolve`: ``$VMPOD_NETWORK``..., else ``user``); see ``docs/networking.md``.
        :raises ConflictError: when another process holds the writer lock.
        """
        layout = Layout(state_dir if state_dir is not None else default_state_dir())
        plugins = plugin_manager or get_plugin_manager()
        name, why = choose_backend(plugins, backend)
        log.info("backend %s: %s", name, why)
        lock = None
        if not readonly:
            layout.root.mkdir(parents=True, exist_ok=True)
            lock = _WriterLock(layout.lock, lock_timeout)
        try:
            if not readonly:
                layout.make()
            store = Store.open(layout.db, readonly=readonly)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        runtime = cls(layout, store, plugins, backend=name, backend_reason=why, backend_options=backend_options or {},
                      lock=lock, network=network)
        if reconcile and not readonly:
            try:
                runtime.reconcile()
            except BaseException:
                runtime.close()
                raise
        return runtime

    def close(self) -> None:
        """Close backends and the store, and release the writer lock; machines keep running."""
        with self._backends_guard:
            for backend in self._backends.values():
                with contextlib.suppress(Exception):
                    backend.close()
            self._backends.clear()
        self.store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reconcile(self) -> ReconcileReport:
        """Bring the store and the backends into agreement (see :mod:`vmpod.runtime.reconcile`)."""
        self.last_reconcile = reconcile(self)
        for record in self.store.pods():  # probers that died (or a liveness restart a crash interrupted)
            if record.container is not None and record.operation == "":
                self._ensure_prober(record)
        return self.last_reconcile

    # ---- helpers ---------------------------------------------------------------------------

    def backend(self, name: str | None = None) -> Backend:
        """The backend object called ``name`` (default: the one for new pods), created on first use."""
        name = name or self.backend_name
        with self._backends_guard:
            backend = self._backends.get(name)
            if backend is None:
                options = self.backend_options if name == self.backend_name else {}
                backend = self.plugins.create_backend(name, BackendConfig(str(self.layout.root), options))
                self._backends[name] = backend
            return backend

    def capabilities(self, name: str) -> Capabilities:
        """Capabilities of backend ``name`` (asked once)."""
        caps = self._capabilities.get(name)
        if caps is None:
            caps = self.backend(name).capabilities()
            self._capabilities[name] = caps
        return caps

    def _volume_handlers(self) -> dict[type, VolumeHandlerSpec]:
        if self._handlers is None:
            self._handlers = self.plugins.volume_handlers()
        return self._handlers

    def _writable(self) -> None:
        if self.readonly:
            raise VmpodError("the runtime is open read-only")

    @contextlib.contextmanager
    def _events(self, *, durable: bool = True) -> Iterator[tuple[Transaction, list[EventRecord]]]:
        """A transaction whose events are passed to the ``vmpod_pod_event`` hook after the commit."""
        events: list[EventRecord] = []
        with self.store.transaction(durable=durable) as tx:
            yield tx, events
            for event in events:
                tx.add_event(event)
        for event in events:
            self.plugins.emit(PodEvent(namespace=event.namespace, pod=event.name, uid=event.pod_uid,
                                       reason=event.reason, message=event.message, timestamp=event.timestamp,
                                       type=event.type))

    @staticmethod
    def _event(record: PodRecord, reason: str, message: str, kind: str = "Normal") -> EventRecord:
        return EventRecord(pod_uid=record.uid, namespace=record.namespace, name=record.name, type=kind,
                           reason=reason, message=message, timestamp=_now())

    def record_event(self, record: PodRecord, reason: str, message: str, kind: str = "Normal") -> None:
        """Record an event of pod ``record`` (and tell the ``vmpod_pod_event`` hook)."""
        with self._events() as (_, events):
            events.append(self._event(record, reason, message, kind))

    def _require(self, uid: str) -> PodRecord:
        record = self.store.pod(uid)
        if record is None:
            raise NotFoundError(f"no pod with uid {uid}")
        return record

    def pod_spec(self, record: PodRecord) -> VMPod:
        """The :class:`~vmpod.model.VMPod` the pod was created from (read and parsed once per pod)."""
        key = (record.uid, record.created_at)
        cached = self._specs.get(key)
        if cached is not None:
            return cached
        text = self.store.spec_json(record.uid)
        if text is None:
            raise NotFoundError(f"no pod with uid {record.uid}")
        pod = convert.from_json(text, VMPod)
        if len(self._specs) > 4096:
            self._specs.clear()
        self._specs[key] = pod
        return pod

    def machine(self, record: PodRecord) -> Machine | None:
        """The machine given to the backend, once the container exists."""
        text = self.store.machine_json(record.uid)
        return convert.from_json(text, Machine) if text else None

    def _paths(self, pod: VMPod) -> tuple[Path, Path, Path, Path, Path]:
        work = self.layout.pod_dir(pod.uid)
        log_file = self.layout.log_file(pod.namespace, pod.name, pod.uid, pod.container.name)
        return work, work / "root.qcow2", work / "seed.iso", work / "run", log_file

    def _contexts(self, pod: VMPod, work: Path) -> builtins.list[tuple[VolumeHandlerSpec, VolumeContext]]:
        handlers = self._volume_handlers()
        result = []
        for index, volume in enumerate(pod.volumes):
            spec = handlers.get(type(volume))
            if spec is None:
                raise SpecError(f"spec.volumes[{index}]", "no volume handler for this kind of volume",
                                value=type(volume).__name__)
            mounts = tuple(m for m in pod.container.volume_mounts if m.name == volume.name)
            devices = tuple(d for d in pod.container.volume_devices if d.name == volume.name)
            result.append((spec, VolumeContext(pod=pod, volume=volume, mounts=mounts, devices=devices,
                                               work_dir=work / "volumes" / volume.name,
                                               disk_bus=pod.vm.disk_driver)))
        return result

    def _planned_artefacts(self, pod: VMPod, record: PodRecord) -> builtins.list[tuple[ArtefactKind, str]]:
        work, root, seed, run, log_file = self._paths(pod)
        log_file = Path(record.log_path)
        planned = [(ArtefactKind.DIR, str(work)), (ArtefactKind.FILE, str(root)), (ArtefactKind.FILE, str(seed)),
                   (ArtefactKind.TREE, str(run))]
        if persistent_root_device(pod) is not None:  # the root is the volume's device: no overlay
            planned.remove((ArtefactKind.FILE, str(root)))
        if pod.volumes:
            planned.append((ArtefactKind.DIR, str(work / "volumes")))
            planned += [(ArtefactKind.TREE, str(work / "volumes" / v.name)) for v in pod.volumes]
        if pod.container.readiness_probe is not None or pod.container.liveness_probe is not None:
            planned.append((ArtefactKind.TREE, str(self.probes_dir(pod.uid))))
        planned.append((ArtefactKind.LOG, str(log_file)))
        return planned

    # ---- probes (vmpod.probing) ------------------------------------------------------------

    def probes_dir(self, uid: str) -> Path:
        """``pods/<uid>/probes``: the probe status and the prober's files (see :mod:`vmpod.probing.process`)."""
        from vmpod.probing.process import PROBES_DIR  # noqa: PLC0415

        return self.layout.pod_dir(uid) / PROBES_DIR

    def probe_status(self, record: PodRecord) -> ProbeStatus | None:
        """The pod's :class:`~vmpod.probing.status.ProbeStatus` (None: the pod has no probes)."""
        from vmpod.probing.status import STATUS_FILE, read_status  # noqa: PLC0415

        return read_status(self.probes_dir(record.uid) / STATUS_FILE)

    def ready(self, record: PodRecord) -> bool:
        """Kubernetes' container ``ready``: running, and its readiness probe (if any) succeeded in this run."""
        from vmpod.probing.status import is_ready  # noqa: PLC0415

        container = record.container
        if container is None:
            return False
        return is_ready(self.probe_status(record), running=container.state is ContainerState.RUNNING,
                        started_at=container.started_at)

    def _ensure_prober(self, record: PodRecord) -> None:
        """Start the pod's prober when it has runnable probes and its container runs (or a restart is pending)."""
        from vmpod.probing.process import needs_prober, start_prober  # noqa: PLC0415

        directory = self.probes_dir(record.uid)
        if not directory.is_dir() or not needs_prober(self.pod_spec(record)):
            return
        container = record.container
        status = self.probe_status(record)
        running = container is not None and container.state is ContainerState.RUNNING
        if running or (status is not None and status.restart_pending):
            try:
                start_prober(self.layout.root, record.uid, directory)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("pod %s: cannot start its prober: %s", record.full_name, exc)

    def _write_probe_status(self, pod: VMPod) -> builtins.list[EventRecord]:
        """The first probe status of a new container (readiness not ready); events for exec probes."""
        from vmpod.probing.checks import EXEC_UNSUPPORTED  # noqa: PLC0415
        from vmpod.probing.status import STATUS_FILE, initial_status, write_status  # noqa: PLC0415

        container = pod.container
        if container.readiness_probe is None and container.liveness_probe is None:
            return []
        directory = self.probes_dir(pod.uid)
        directory.mkdir(parents=True, exist_ok=True)
        write_status(directory / STATUS_FILE, initial_status(pod))
        messages = []
        if container.readiness_probe is not None and isinstance(container.readiness_probe.handler, ExecAction):
            messages.append(f"Readiness probe is exec ({EXEC_UNSUPPORTED}): the pod never becomes ready; "
                            "use a tcpSocket or httpGet probe")
        if container.liveness_probe is not None and isinstance(container.liveness_probe.handler, ExecAction):
            messages.append(f"Liveness probe is exec ({EXEC_UNSUPPORTED}): it is ignored")
        return [EventRecord(pod.uid, pod.namespace, pod.name, "Warning", "ProbeUnsupported", m, _now())
                for m in messages]

    # ---- queries -----------------------------------------------------------------------------

    def get(self, name: str, namespace: str = "default") -> PodRecord:
        """The pod ``namespace/name`` (or with uid ``name``); :class:`NotFoundError` when absent."""
        record = self.store.pod_by_name(namespace, name) or self.store.pod(name)
        if record is None:
            raise NotFoundError(f'pod "{name}" not found in namespace "{namespace}"')
        return record

    def find(self, uid: str) -> PodRecord | None:
        """The pod with this uid, or None."""
        return self.store.pod(uid)

    def list(self, label_selector: str | Mapping[str, str] | None = None, *,
             namespace: str | None = None) -> builtins.list[PodRecord]:
        """Pods matching ``label_selector`` (a CRI map or kubectl syntax), optionally in one namespace."""
        matches = parse_selector(label_selector)
        return [p for p in self.store.pods()
                if (namespace is None or p.namespace == namespace) and matches(p.labels)]

    def events(self, record: PodRecord) -> builtins.list[EventRecord]:
        """The pod's events, oldest first."""
        return self.store.events(record.uid)

    def refresh(self, uid: str) -> PodRecord:
        """Re-read the container state from the backend (recording a change when writable)."""
        with self._pod_locks.hold(uid):
            record = self._require(uid)
            container = record.container
            if container is None:
                return record
            try:
                status = self.backend(record.backend).status(record.machine_name)
            except NotFoundError:
                status = None
            update = self._state_update(container, status)
            if update and not self.readonly:
                with self._events() as (tx, events):
                    tx.update_container(uid, **update)
                    events.extend(self._state_events(record, container, update))
                return self._require(uid)
            if update:
                return attrs.evolve(record, container=attrs.evolve(container, **update))
            return record

    def attach_endpoint(self, uid: str) -> ConsoleEndpoint:
        """Where to attach to the serial console of pod ``uid``'s running VM (``vmpod attach``).

        Any number of clients may attach at once (the backend's console monitor multiplexes them).

        :raises NotFoundError: no such pod.
        :raises InvalidTransition: the pod has no VM yet, or its VM is not running.
        :raises BackendError: the backend has no interactive console.
        """
        record = self._require(uid)
        if record.container is None:
            raise InvalidTransition(f'pod "{record.full_name}" has no VM yet')
        if not self.capabilities(record.backend).console:
            raise BackendError(f'the {record.backend} backend of pod "{record.full_name}" has no interactive console')
        backend = self.backend(record.backend)
        state = backend.status(record.machine_name).state
        if state is not MachineState.RUNNING:
            raise InvalidTransition(f'the VM of pod "{record.full_name}" is {state}, not running')
        return backend.console(record.machine_name)

    @staticmethod
    def _state_update(container: ContainerRecord, status: MachineStatus | None) -> dict[str, Any]:
        """The container columns that differ from what the backend reports (None: the machine is gone)."""
        if status is None:
            if container.state is ContainerState.EXITED and container.reason == "MachineLost":
                return {}
            return {"state": ContainerState.EXITED, "finished_at": container.finished_at or _now(),
                    "exit_code": 255, "reason": "MachineLost",
                    "message": "the backend no longer has this machine; its disks are kept: "
                               "start the container to define it again, or delete the pod"}
        state = container_state(status.state)
        if state is container.state and state is not ContainerState.EXITED:
            return {}
        update: dict[str, Any] = {"state": state}
        if state is ContainerState.RUNNING:
            update.update(started_at=status.started_at or container.started_at, finished_at=0, exit_code=0,
                          reason="", message="")
        elif state is ContainerState.EXITED:
            update.update(finished_at=status.finished_at or container.finished_at or _now(),
                          exit_code=status.exit_code, reason=exit_reason(status.exit_reason, status.exit_code),
                          message=status.message)
            if status.started_at:
                update["started_at"] = status.started_at
        elif state is ContainerState.UNKNOWN:
            update.update(reason=status.exit_reason or "Unknown", message=status.message)
        return {k: v for k, v in update.items() if getattr(container, k) != v}

    def _state_events(self, record: PodRecord, container: ContainerRecord,
                      update: Mapping[str, Any]) -> builtins.list[EventRecord]:
        state = update.get("state", container.state)
        if not isinstance(state, ContainerState) or state is container.state:
            return []
        if state is ContainerState.EXITED:
            return [self._event(record, str(update.get("reason", "Exited")),
                                str(update.get("message", "")) or "the machine stopped", "Warning")]
        return [self._event(record, "StateChanged", f"container is {state.name}")]

    # ---- CRI-shaped steps ------------------------------------------------------------------------

    def create_sandbox(self, pod: VMPod, *, backend: str | None = None) -> PodRecord:
        """Record pod ``pod`` as a READY sandbox (no side effects); the same pod again returns it.

        :raises ConflictError: when a different pod has the same uid or name.
        """
        self._writable()
        with self._pod_locks.hold(pod.uid):
            return self._create_sandbox(pod, backend, durable=True)

    def _create_sandbox(self, pod: VMPod, backend: str | None, *, durable: bool) -> PodRecord:
        spec_json = convert.to_json(pod, indent=None)
        existing = self.store.pod(pod.uid)
        if existing is not None:
            if self.store.spec_json(pod.uid) != spec_json:
                raise ConflictError(f"pod {pod.full_name} exists with a different spec; delete it first")
            return existing
        other = self.store.pod_by_name(pod.namespace, pod.name)
        if other is not None:
            raise ConflictError(f"pod {pod.full_name} exists with another uid ({other.uid}); delete it first")
        name = backend or self.backend_name
        self.plugins.backend_spec(name)
        log_file = self._paths(pod)[4]
        created_at = _now()
        with self._events(durable=durable) as (tx, events):
            tx.insert_pod(uid=pod.uid, namespace=pod.namespace, name=pod.name, labels=pod.labels,
                          annotations=pod.annotations, backend=name, machine_name=machine_name(pod),
                          log_path=str(log_file), spec_json=spec_json, created_at=created_at)
            events.append(EventRecord(pod.uid, pod.namespace, pod.name, "Normal", "SandboxReady",
                                      f"pod sandbox created on backend {name}", _now()))
        self._specs[(pod.uid, created_at)] = pod
        return self._require(pod.uid)

    def create_container(self, uid: str, *, durable: bool = True) -> ContainerRecord:
        """Create the pod's VM (image, root overlay, volumes, seed, machine): container CREATED.

        Idempotent: an existing container is returned.  On failure everything made so far is
        removed and the error raised.
        """
        self._writable()
        with self._pod_locks.hold(uid):
            record = self._require(uid)
            if record.container is not None:
                return record.container
            self._settle(record)
            record = self._require(uid)
            if record.state is not SandboxState.READY:
                raise InvalidTransition(f"pod {record.full_name}: the sandbox is not ready")
            return self._create_container(record, durable=durable)

    def _create_container(self, record: PodRecord, *, durable: bool) -> ContainerRecord:
        pod = self.pod_spec(record)
        backend = self.backend(record.backend)
        capabilities = self.capabilities(record.backend)
        image = self.images.pull(pod.container.image)
        work, root, seed, run, _ = self._paths(pod)
        log_file = Path(record.log_path)
        contexts = self._contexts(pod, work)
        forwards = loopback_forwards(pod)  # before the intent: a bad probe port name leaves nothing
        network = plan_network(self, record)  # before the intent too: refused network mode, bad CNI config
        # A CNI attachment holds an address outside the state directory: its intent must survive a power cut.
        with self.store.transaction(durable=network is not None) as tx:
            tx.begin(record.uid, OperationKind.CREATE, "files")
            tx.add_artefacts(record.uid, self._planned_artefacts(pod, record))
            if network is not None:
                tx.put_network(network)
        faults.point("create.intent")
        try:
            for directory in (work, run, log_file.parent):
                directory.mkdir(parents=True, exist_ok=True)
            os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644))
            probe_events = self._write_probe_status(pod)
            faults.point("create.workdir")
            if persistent_root_device(pod) is None:
                qcow2.write_overlay(root, Path(image.path), image.format, root_disk_size(pod, image.virtual_size),
                                    sync=False)
            faults.point("create.rootdisk")
            attachments: dict[str, VolumeAttachment] = {}
            for spec, context in contexts:
                attachments[context.volume.name] = spec.handler.attach(context)
            faults.point("create.volumes")
            root_plan = plan_pod_root(pod, attachments, image_digest=image.digest, virtual_size=image.virtual_size)
            nic, description = attach_network(self, network) if network is not None else (None, None)
            faults.point("create.network")
            machine = build_machine(pod, root_disk=root, seed=seed, attachments=attachments, serial_log=log_file,
                                    runtime_dir=run, store_id=self.store.store_id, capabilities=capabilities,
                                    loopback_forwards=forwards, nic=nic, persistent_root=root_plan)
            machine = self.plugins.adjust_machine(pod, machine)
            self._prepare_shares(machine, work)
            write_seed(pod, seed, self.plugins, description)
            sync_filesystem(work)
            faults.point("create.seed")
            faults.point("create.machine.before")
            status = backend.create(machine)
            faults.point("create.machine.after")
            root_message = write_pod_root(root_plan, Path(image.path), image.format)  # after the backend's checks
        except Exception as exc:
            self._undo_create(record, reason=exc)
            raise
        container = ContainerRecord(pod_uid=record.uid, id=str(machine.uuid), name=pod.container.name,
                                    image=pod.container.image, image_ref=image.digest, state=ContainerState.CREATED,
                                    created_at=status.created_at or _now())
        with self._events(durable=durable) as (tx, events):
            tx.insert_container(container, convert.to_json(machine, indent=None))
            tx.finish(record.uid)
            events.append(self._event(record, "Created", f"created machine {machine.name} ({image.digest[:19]})"))
            if root_message is not None:
                events.append(self._event(record, "PersistentRoot", root_message))
            events.extend(probe_events)
        faults.point("create.outcome")
        return container

    @staticmethod
    def _prepare_shares(machine: Machine, work: Path) -> None:
        """Make ``subPath`` directories of the pod's own volumes; other shared paths must exist."""
        for share in machine.filesystems:
            source = Path(share.source)
            if source.is_dir():
                continue
            if source.is_relative_to(work):
                source.mkdir(parents=True, exist_ok=True)
            else:
                raise SpecError("spec.containers[0].volumeMounts", "the shared directory does not exist on this node",
                                value=share.source)

    def _undo_create(self, record: PodRecord, *, reason: BaseException | None) -> None:
        """Remove everything an interrupted or failed create made; the operation row goes last."""
        pod = self.pod_spec(record)
        try:
            self.backend(record.backend).destroy(record.machine_name)
            self._detach_volumes(pod)
            detach_network(self, record.uid)
            self._remove_artefacts(record.uid, container_only=False, keep_log=False)
        except Exception as exc:  # leave the operation open: reconcile or the next call retries
            log.warning("pod %s: could not undo an unfinished create: %s", record.full_name, exc)
            return
        with self._events() as (tx, events):
            tx.remove_artefacts([a.path for a in self.store.artefacts(record.uid) if not a.retained])
            tx.delete_network(record.uid)
            tx.finish(record.uid)
            if reason is not None:
                events.append(self._event(record, "Failed", f"create failed: {reason}", "Warning"))

    def _detach_volumes(self, pod: VMPod) -> None:
        work = self.layout.pod_dir(pod.uid)
        try:
            contexts = self._contexts(pod, work)
        except SpecError:
            return  # a volume kind without a handler never attached anything
        for spec, context in contexts:
            spec.handler.detach(context)

    def _remove_artefacts(self, uid: str, *, container_only: bool, keep_log: bool) -> builtins.list[str]:
        """Remove the pod's files (newest first); returns the paths removed."""
        removed: list[str] = []
        work = self.layout.pod_dir(uid)
        for artefact in reversed(self.store.artefacts(uid)):
            if artefact.retained:
                continue
            if container_only and (artefact.kind is ArtefactKind.LOG or artefact.path == str(work)
                                   or not Path(artefact.path).is_relative_to(work)):
                continue
            if artefact.kind is ArtefactKind.LOG and keep_log:
                continue
            if keep_log and artefact.kind is ArtefactKind.DIR and Path(self._log_of(uid)).is_relative_to(
                    artefact.path):
                continue
            remove_path(Path(artefact.path))
            removed.append(artefact.path)
        return removed

    def _log_of(self, uid: str) -> str:
        return next((a.path for a in self.store.artefacts(uid) if a.kind is ArtefactKind.LOG), "/nonexistent")

    def start_container(self, uid: str, *, durable: bool = True) -> ContainerRecord:
        """Boot the pod's VM: container RUNNING.  A running container is left alone.

        A machine the backend lost (host reboot, hypervisor reset) is defined again from the
        recorded machine before it starts: its disks were kept.
        """
        self._writable()
        with self._pod_locks.hold(uid):
            record = self._require(uid)
            container = record.container
            if container is None:
                raise NotFoundError(f"pod {record.full_name} has no container to start")
            if container.state is ContainerState.RUNNING:
                return container
            if record.state is not SandboxState.READY:
                raise InvalidTransition(f"pod {record.full_name}: the sandbox is not ready")
            return self._start(record, container, durable=durable)

    def _start(self, record: PodRecord, container: ContainerRecord, *, durable: bool) -> ContainerRecord:
        backend = self.backend(record.backend)
        faults.point("start.before")
        try:
            try:
                status = backend.start(record.machine_name)
            except NotFoundError:
                machine = self.machine(record)
                assert machine is not None
                backend.create(machine)
                status = backend.start(record.machine_name)
        except BackendError as exc:
            with contextlib.suppress(VmpodError):
                self.refresh(record.uid)
            self.record_event(record, "Failed", f"start failed: {exc}", "Warning")
            raise
        faults.point("start.after")
        restarts = container.restart_count + (1 if container.started_at else 0)
        with self._events(durable=durable) as (tx, events):
            tx.update_container(record.uid, state=ContainerState.RUNNING, started_at=status.started_at or _now(),
                                finished_at=0, exit_code=0, reason="", message="", restart_count=restarts)
            events.append(self._event(record, "Started", f"started machine {record.machine_name}"))
        faults.point("start.outcome")
        started = self._require(record.uid)
        self._ensure_prober(started)
        return started.container or container

    def stop_container(self, uid: str, timeout: float = 30.0) -> ContainerRecord:
        """Power the VM off (ACPI), forcing it after ``timeout`` seconds: container EXITED.  Idempotent."""
        self._writable()
        with self._pod_locks.hold(uid):
            record = self._require(uid)
            container = record.container
            if container is None:
                raise NotFoundError(f"pod {record.full_name} has no container to stop")
            if container.state is not ContainerState.RUNNING:
                return container
            self._settle(record)
            with self.store.transaction(durable=False) as tx:
                tx.begin(uid, OperationKind.STOP, "stop")
            faults.point("stop.intent")
            try:
                status: MachineStatus | None = self.backend(record.backend).stop(record.machine_name, timeout)
            except NotFoundError:
                status = None
            except Exception:
                with self.store.transaction() as tx:
                    tx.finish(uid)
                raise
            faults.point("stop.after")
            update = self._state_update(container, status)
            with self._events() as (tx, events):
                if update:
                    tx.update_container(uid, **update)
                tx.finish(uid)
                reason = str(update.get("reason", "Stopped"))
                events.append(self._event(record, "Killing" if reason == "Killed" else "Stopped",
                                          str(update.get("message", "")) or f"stopped machine {record.machine_name}"))
            return self._require(uid).container or container

    def remove_container(self, uid: str) -> None:
        """Destroy the VM and remove its disks, seed and volumes (the log stays with the sandbox).  Idempotent."""
        self._writable()
        with self._pod_locks.hold(uid):
            record = self.store.pod(uid)
            if record is None:
                return
            if record.container is None and record.operation != OperationKind.DELETE:
                self._settle(record)
                return
            self._delete(record, whole_pod=False, keep_log=True, timeout=0)

    def stop_sandbox(self, uid: str) -> None:
        """Stop the VM (forcibly) and mark the sandbox NOTREADY.  Idempotent; an unknown pod is fine."""
        self._writable()
        with self._pod_locks.hold(uid):
            record = self.store.pod(uid)
            if record is None:
                return
            if record.container is not None and record.container.state is ContainerState.RUNNING:
                self.stop_container(uid, timeout=0)
            if record.state is not SandboxState.NOTREADY:
                with self._events() as (tx, events):
                    tx.set_sandbox_state(uid, SandboxState.NOTREADY)
                    events.append(self._event(record, "SandboxStopped", "pod sandbox stopped"))

    def remove_sandbox(self, uid: str, *, keep_log: bool = False) -> None:
        """Remove the pod and everything it created (its log too unless ``keep_log``).  Idempotent."""
        self._writable()
        with self._pod_locks.hold(uid):
            record = self.store.pod(uid)
            if record is not None:
                self._delete(record, whole_pod=True, keep_log=keep_log, timeout=0)

    # ---- whole pods ---------------------------------------------------------------------------

    def run_pod(self, pod: VMPod, *, backend: str | None = None) -> PodRecord:
        """Create the sandbox and the container and start it; the same pod again returns it unchanged.

        :raises ConflictError: when a different pod has the same name or uid.
        :raises SpecError: when the pod cannot be realised (image, volumes, disk limits).
        """
        self._writable()
        with self._pod_locks.hold(pod.uid):
            existed = self.store.pod(pod.uid) is not None
            record = self._create_sandbox(pod, backend, durable=False)
            if record.operation == OperationKind.DELETE:
                raise ConflictError(f"pod {pod.full_name} is being deleted")
            self._settle(record)
            record = self._require(pod.uid)
            container = record.container
            if container is None:
                try:
                    container = self._create_container(record, durable=False)
                except Exception:
                    if not existed and self.store.operation(pod.uid) is None:
                        # A pod this call made and could not create leaves nothing behind.
                        self._delete(self._require(pod.uid), whole_pod=True, keep_log=False, timeout=0)
                    raise
                record = self._require(pod.uid)
            if container.state is ContainerState.CREATED:
                self._start(record, container, durable=True)
            return self._require(pod.uid)

    def delete_pod(self, record: PodRecord, *, keep_log: bool = False, timeout: float | None = None) -> None:
        """Stop (gracefully, up to ``timeout`` s, default the pod's grace period) and remove the pod.

        Every artefact it created goes: machine, root overlay, seed, volume files, directories
        and (unless ``keep_log``) its log.  A delete interrupted by a crash is finished by
        reconcile.
        """
        self._writable()
        with self._pod_locks.hold(record.uid):
            current = self.store.pod(record.uid)
            if current is None:
                raise NotFoundError(f'pod "{record.name}" not found in namespace "{record.namespace}"')
            grace = self.pod_spec(current).termination_grace_period_seconds if timeout is None else timeout
            self._delete(current, whole_pod=True, keep_log=keep_log, timeout=grace)

    def _delete(self, record: PodRecord, *, whole_pod: bool, keep_log: bool, timeout: float) -> None:
        uid = record.uid
        operation = self.store.operation(uid)
        if operation is not None and operation.kind is not OperationKind.DELETE:
            self._settle(record)
            operation = None
        if operation is None:
            with self._events() as (tx, events):
                tx.begin(uid, OperationKind.DELETE, "pod" if whole_pod else "container", keep_log=keep_log)
                events.append(self._event(record, "Killing", "deleting the pod" if whole_pod
                                          else "removing the container"))
        else:
            whole_pod = whole_pod or operation.step == "pod"
            keep_log = keep_log or operation.keep_log
        faults.point("delete.intent")
        from vmpod.probing.process import stop_prober  # noqa: PLC0415

        stop_prober(self.probes_dir(uid))
        backend = self.backend(record.backend)
        if timeout > 0 and record.container is not None and record.container.state is ContainerState.RUNNING:
            with contextlib.suppress(NotFoundError, InvalidTransition):
                backend.stop(record.machine_name, timeout)
        faults.point("delete.stopped")
        backend.destroy(record.machine_name)
        faults.point("delete.destroyed")
        self._detach_volumes(self.pod_spec(record))
        faults.point("delete.volumes")
        detach_network(self, uid)
        faults.point("delete.network")
        removed = self._remove_artefacts(uid, container_only=not whole_pod, keep_log=keep_log)
        faults.point("delete.files")
        with self._events() as (tx, events):
            if whole_pod:
                if keep_log:
                    tx.retain_artefact(self._log_of(uid))
                tx.delete_pod(uid)
            else:
                tx.remove_artefacts(removed)
                tx.delete_network(uid)
                tx.delete_container(uid)
                tx.finish(uid)
                events.append(self._event(record, "Removed", f"removed machine {record.machine_name}"))
        if whole_pod:
            self.plugins.emit(PodEvent(namespace=record.namespace, pod=record.name, uid=uid, reason="Deleted",
                                       message="pod deleted", timestamp=_now()))
        faults.point("delete.outcome")

    def _settle(self, record: PodRecord) -> None:
        """Finish what an earlier failed or interrupted operation on this pod left open."""
        operation = self.store.operation(record.uid)
        if operation is None:
            return
        if operation.kind is OperationKind.CREATE:
            self._undo_create(record, reason=None)
        elif operation.kind is OperationKind.STOP:
            with self.store.transaction() as tx:
                tx.finish(record.uid)
        else:
            self._delete(record, whole_pod=operation.step == "pod", keep_log=operation.keep_log, timeout=0)
        if self.store.operation(record.uid) is not None:
            raise ConflictError(f"pod {record.full_name}: an unfinished {operation.kind} could not be completed; "
                                "see the log and try again")

    # ---- waiting -------------------------------------------------------------------------------

    def wait_ready(self, uid: str, timeout: float, poll: float = 0.2) -> PodRecord:
        """Wait until the pod is ready (running, readiness probe passed); raise if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.wait_running(uid, max(0.0, deadline - time.monotonic()), poll)
            if self.ready(record):
                return record
            if time.monotonic() >= deadline:
                raise BackendError(f"pod {record.full_name} is not ready after {timeout:g} s")
            time.sleep(poll)

    def wait_running(self, uid: str, timeout: float, poll: float = 0.2) -> PodRecord:
        """Wait until the pod's container is RUNNING (reading the backend); raise if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.refresh(uid)
            container = record.container
            if container is not None and container.state is ContainerState.RUNNING:
                return record
            if container is not None and container.state is ContainerState.EXITED:
                raise BackendError(f"pod {record.full_name} exited: {container.reason} {container.message}".strip())
            if time.monotonic() >= deadline:
                raise BackendError(f"pod {record.full_name} is not running after {timeout:g} s")
            time.sleep(poll)

