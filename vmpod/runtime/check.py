"""Consistency checks of a state directory: what the crash and concurrency tests assert after reconcile.

:func:`check_consistency` returns every violation it finds (an empty list
means consistent):

* no unfinished operation is left;
* every pod's backend has its machine exactly when the pod has a container,
  and the container's CRI state is the one the machine's state maps to;
* every file artefact (root overlay, seed, log) of a pod exists;
* no machine carrying vmpod's marker and this store's id is unknown to the store;
* a CNI attachment (``networks`` row) belongs to a pod with a container, its
  namespace exists and the pod's IP is recorded; no namespace named after this
  store is left without one;
* nothing under ``pods/`` and ``logs/`` is unaccounted for, and every image
  file has its record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from vmpod.errors import VmpodError
from vmpod.network import netns, netns_name
from vmpod.runtime.builder import STORE_LABEL
from vmpod.runtime.reconcile import unaccounted_paths
from vmpod.runtime.records import ArtefactKind, PodRecord
from vmpod.runtime.states import container_state

if TYPE_CHECKING:
    from vmpod.runtime.runtime import Runtime

__all__ = ["check_consistency"]


def _network_problems(runtime: Runtime, by_uid: Mapping[str, PodRecord]) -> list[str]:
    problems: list[str] = []
    recorded = set()
    for network in runtime.store.networks():
        recorded.add(network.netns)
        owner = by_uid.get(network.pod_uid)
        if owner is None or owner.container is None:
            problems.append(f"CNI attachment {network.netns} of a pod without a container ({network.pod_uid})")
            continue
        if not netns.exists(network.netns):
            problems.append(f"pod {owner.full_name}: its network namespace {network.netns} is missing")
        if not owner.pod_ip:
            problems.append(f"pod {owner.full_name}: CNI attachment without a pod IP")
    prefix = netns_name(runtime.store.store_id, "")
    if os.path.isdir(netns.NETNS_DIR):
        problems += [f"network namespace {name} without a CNI attachment" for name in sorted(os.listdir(
            netns.NETNS_DIR)) if name.startswith(prefix) and name not in recorded]
    return problems


def check_consistency(runtime: Runtime) -> list[str]:
    """Every inconsistency between the store, the backends and the files (see the module docstring)."""
    problems: list[str] = []
    store = runtime.store
    problems += [f"unfinished {op.kind} on pod {op.pod_uid} (step {op.step})" for op in store.operations()]
    pods = store.pods()
    names = {p.machine_name for p in pods}
    by_uid = {p.uid: p for p in pods}
    listings = {}
    for backend in sorted({p.backend for p in pods} | {runtime.backend_name}):
        try:
            listings[backend] = {m.name: m for m in runtime.backend(backend).list()}
        except VmpodError as exc:
            problems.append(f"backend {backend} cannot be listed: {exc}")
    for pod in pods:
        machines = listings.get(pod.backend)
        if machines is None:
            continue
        machine = machines.get(pod.machine_name)
        container = pod.container
        if container is None:
            if machine is not None:
                problems.append(f"pod {pod.full_name} has no container but machine {machine.name} exists")
            continue
        if machine is None:
            if container.reason != "MachineLost":
                problems.append(f"pod {pod.full_name}: container {container.state.name} without machine")
            continue
        if container_state(machine.state) is not container.state:
            problems.append(f"pod {pod.full_name}: container {container.state.name}, machine {machine.state}")
    for artefact in store.artefacts():
        if artefact.retained:
            if artefact.kind is not ArtefactKind.LOG:
                problems.append(f"retained artefact {artefact.path} is not a log")
            continue
        owner = by_uid.get(artefact.pod_uid)
        if owner is None:
            problems.append(f"artefact {artefact.path} of unknown pod {artefact.pod_uid}")
            continue
        if owner.container is not None and artefact.kind in (ArtefactKind.FILE, ArtefactKind.LOG) \
                and not Path(artefact.path).exists():
            problems.append(f"pod {owner.full_name}: {artefact.kind} {artefact.path} is missing")
    for backend, machines in listings.items():
        for machine in machines.values():
            if machine.owned and machine.labels.get(STORE_LABEL) == store.store_id and machine.name not in names:
                problems.append(f"orphan machine {backend}:{machine.name}")
    problems += _network_problems(runtime, by_uid)
    problems += [f"unaccounted path {path}" for path in unaccounted_paths(runtime)]
    known_images = {image.path for image in store.images()}
    for directory in (runtime.layout.images, runtime.layout.images_tmp):
        if directory.is_dir():
            problems += [f"unaccounted image file {p}" for p in directory.iterdir() if str(p) not in known_images]
    return problems
