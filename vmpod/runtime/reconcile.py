"""Reconcile: make the store and the backends agree when the runtime opens.

The algorithm, in order (every step idempotent, so a crash during reconcile
is itself reconciled next time):

1. **Unfinished operations** (``operations`` rows: only a crash or a failed
   undo leaves one):

   * ``create``: undone: the machine is destroyed (it never ran: starting is
     a separate step recorded after ``create`` finishes), volume handlers
     detach, the CNI network (if one was recorded) is detached (``DEL``, the
     namespace removed), every recorded artefact is removed.  The sandbox stays; the
     client's retry creates the container again.  Should the backend report
     the machine *running* (started by hand), it is left alone and reported.
   * ``stop``: dropped; the container's state is read back in step 2.
   * ``delete``: finished (without the grace period: the machine is
     destroyed, the CNI network detached), so a delete the user asked for
     always completes.

2. **Containers**: each container's state is compared with the backend's
   ``list()`` and updated when it changed (a guest that powered off while
   vmpod was down is EXITED with its exit reason).  Running machines are
   adopted as they are: reconcile never starts, stops or restarts one.  A
   machine the backend lost is marked EXITED (``MachineLost``) and its disks
   are kept; starting the container defines it again.

3. **Orphan machines**: a machine carrying vmpod's marker *and this store's
   id* (:data:`~vmpod.runtime.builder.STORE_LABEL`) that no pod accounts for
   is reported and destroyed (only a power cut between a lost intent and its
   side effect can make one).  Machines with the marker of another store are
   reported and left alone; machines without the marker are never touched.

4. **Files**: anything under ``pods/`` and ``logs/`` that no artefact row
   accounts for (an interrupted write's temporary file, a directory whose
   intent a power cut lost) is removed, and so are unfinished image fetches.

A backend that cannot be reached is skipped with a warning: its pods keep
their recorded state until the next reconcile.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from vmpod.backend import MachineInfo, MachineState
from vmpod.errors import VmpodError
from vmpod.machine import MARKER_LABEL
from vmpod.runtime.builder import STORE_LABEL
from vmpod.runtime.files import remove_path
from vmpod.runtime.records import ArtefactKind, OperationKind
from vmpod.runtime.states import ContainerState

if TYPE_CHECKING:
    from vmpod.runtime.runtime import Runtime

__all__ = ["ReconcileReport", "reconcile", "unaccounted_paths"]

log = logging.getLogger(__name__)


@attrs.frozen
class ReconcileReport:
    """What reconcile found and did."""

    undone: tuple[str, ...] = ()
    """Pods (``namespace/name``) whose unfinished create was undone."""
    finished: tuple[str, ...] = ()
    """Pods whose unfinished delete was completed (they are gone)."""
    adopted: tuple[str, ...] = ()
    """Pods whose machine was found running and adopted."""
    changed: tuple[str, ...] = ()
    """Pods whose container state changed to what the backend reports."""
    orphans_removed: tuple[str, ...] = ()
    """Machines with this store's marker that no pod accounts for: destroyed."""
    foreign: tuple[str, ...] = ()
    """Machines with vmpod's marker from another store: left alone."""
    files_removed: tuple[str, ...] = ()
    """Paths nobody accounts for: removed."""
    unreachable: tuple[str, ...] = ()
    """Backends that could not be listed (their pods were not checked)."""
    problems: tuple[str, ...] = ()
    """Things reconcile could not fix (it will try again next time)."""
    seconds: float = 0.0


def unaccounted_paths(runtime: Runtime) -> list[Path]:
    """Paths under ``pods/`` and ``logs/`` that no artefact accounts for.

    A path is accounted for when it is an artefact, an ancestor of one, or inside a
    ``tree`` artefact (whose contents belong to a volume handler or the backend).
    """
    kinds = {a.path: a.kind for a in runtime.store.artefacts()}
    ancestors: set[str] = set()
    for path in kinds:
        parent = os.path.dirname(path)
        while parent not in ancestors and parent != os.path.dirname(parent):
            ancestors.add(parent)
            parent = os.path.dirname(parent)
    found: list[Path] = []
    for top in (runtime.layout.pods, runtime.layout.logs):
        if not top.is_dir():
            continue
        for directory, dirnames, filenames in os.walk(top):
            descend = []
            for name in dirnames:
                path = os.path.join(directory, name)
                kind = kinds.get(path)
                if kind is ArtefactKind.TREE:
                    continue
                if kind is not None or path in ancestors:
                    descend.append(name)
                else:
                    found.append(Path(path))
            dirnames[:] = descend
            found.extend(Path(directory, name) for name in filenames if os.path.join(directory, name) not in kinds)
    return found


def reconcile(runtime: Runtime) -> ReconcileReport:
    """Reconcile ``runtime``'s store with its backends (see the module docstring)."""
    started = time.perf_counter()
    store = runtime.store
    undone: list[str] = []
    finished: list[str] = []
    adopted: list[str] = []
    changed: list[str] = []
    problems: list[str] = []
    unreachable: list[str] = []

    pods = {p.uid: p for p in store.pods()}
    listings: dict[str, dict[str, MachineInfo]] = {}
    for name in sorted({p.backend for p in pods.values()} | {runtime.backend_name}):
        try:
            listings[name] = {m.name: m for m in runtime.backend(name).list()}
        except VmpodError as exc:
            unreachable.append(name)
            log.warning("reconcile: backend %s cannot be listed, its pods are not checked: %s", name, exc)

    # 1. unfinished operations
    for operation in store.operations():
        record = pods.get(operation.pod_uid)
        if record is None:
            with store.transaction() as tx:
                tx.finish(operation.pod_uid)
            continue
        if record.backend not in listings:
            continue
        machine = listings[record.backend].get(record.machine_name)
        try:
            if operation.kind is OperationKind.CREATE:
                if machine is not None and machine.state is MachineState.RUNNING:
                    problems.append(f"{record.full_name}: unfinished create, but machine {machine.name} runs; "
                                    "left alone")
                    continue
                runtime._undo_create(record, reason=None)
                undone.append(record.full_name)
                listings[record.backend].pop(record.machine_name, None)
            elif operation.kind is OperationKind.STOP:
                with store.transaction() as tx:
                    tx.finish(record.uid)
            else:
                runtime._delete(record, whole_pod=operation.step == "pod", keep_log=operation.keep_log, timeout=0)
                listings[record.backend].pop(record.machine_name, None)
                if operation.step == "pod":
                    finished.append(record.full_name)
        except VmpodError as exc:
            problems.append(f"{record.full_name}: unfinished {operation.kind}: {exc}")
            continue
        if store.operation(record.uid) is not None:
            problems.append(f"{record.full_name}: unfinished {operation.kind} could not be completed")

    # 2. containers against the backends
    pods = {p.uid: p for p in store.pods()}
    for record in pods.values():
        container = record.container
        if container is None or record.backend not in listings:
            continue
        machine = listings[record.backend].get(record.machine_name)
        status = None
        if machine is not None:
            expected = {MachineState.CREATED: ContainerState.CREATED, MachineState.RUNNING: ContainerState.RUNNING,
                        MachineState.STOPPED: ContainerState.EXITED}
            if expected.get(machine.state) is container.state and container.reason != "MachineLost":
                if container.state is ContainerState.RUNNING:
                    adopted.append(record.full_name)
                continue
            try:
                status = runtime.backend(record.backend).status(record.machine_name)
            except VmpodError:
                status = None
        update = runtime._state_update(container, status)
        if update:
            with runtime._events() as (tx, events):
                tx.update_container(record.uid, **update)
                events.extend(runtime._state_events(record, container, update))
                if update.get("state") is ContainerState.RUNNING:
                    events.append(runtime._event(record, "Adopted", f"machine {record.machine_name} is running"))
            changed.append(record.full_name)

    # 3. orphan machines
    known = {p.machine_name for p in pods.values()}
    orphans: list[str] = []
    foreign: list[str] = []
    for backend_name, machines in listings.items():
        for machine in machines.values():
            if not machine.owned or machine.name in known:
                continue
            if machine.labels.get(STORE_LABEL) != store.store_id:
                foreign.append(f"{backend_name}:{machine.name}")
                continue
            try:
                runtime.backend(backend_name).destroy(machine.name)
                orphans.append(f"{backend_name}:{machine.name}")
                log.warning("reconcile: removed machine %s: it carries vmpod's marker (%s) but no pod owns it",
                            machine.name, MARKER_LABEL)
            except VmpodError as exc:
                problems.append(f"orphan machine {machine.name}: {exc}")

    # 4. files nobody accounts for
    removed_files: list[str] = []
    for path in unaccounted_paths(runtime):
        remove_path(path)
        removed_files.append(str(path))
    removed_files += [str(p) for p in runtime.images.sweep()]

    report = ReconcileReport(
        undone=tuple(undone), finished=tuple(finished), adopted=tuple(adopted), changed=tuple(changed),
        orphans_removed=tuple(orphans), foreign=tuple(foreign), files_removed=tuple(removed_files),
        unreachable=tuple(unreachable), problems=tuple(problems), seconds=time.perf_counter() - started)
    for problem in problems:
        log.warning("reconcile: %s", problem)
    return report
