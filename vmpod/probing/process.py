"""Starting, finding and stopping a pod's prober process.

The prober of pod ``uid`` keeps its files in ``pods/<uid>/probes/`` (a ``tree`` artefact of the
pod, removed with it):

``status.json``   the probe status (:mod:`vmpod.probing.status`)
``prober.lock``   held (``flock``) by the running prober: one per pod
``prober.json``   the prober's identity (pid, start time, boot id: :mod:`vmpod.procutil`)
``prober.log``    its stdout and stderr

The runtime starts it when the container starts (and on every open, for running containers
whose prober died), and stops it before the pod is deleted.  It runs only for pods with a
``tcpSocket`` or ``httpGet`` probe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from vmpod.model import ExecAction, VMPod
from vmpod.probing import LOCK_FILE, LOG_FILE, PROBER_FILE, PROBES_DIR
from vmpod.procutil import ProcessIdentity, read_json

__all__ = ["LOCK_FILE", "LOG_FILE", "PROBER_FILE", "PROBES_DIR", "needs_prober", "prober_alive", "start_prober",
           "stop_prober"]


#: Environment variables the prober must not inherit (fault injection is for the command under test).
_DROPPED_ENV = ("VMPOD_FAULT_POINT",)


def needs_prober(pod: VMPod) -> bool:
    """True when the pod has a probe vmpod can run (tcpSocket or httpGet)."""
    probes = (pod.container.readiness_probe, pod.container.liveness_probe)
    return any(p is not None and not isinstance(p.handler, ExecAction) for p in probes)


def _identity(directory: Path) -> ProcessIdentity | None:
    record = read_json(directory / PROBER_FILE)
    return None if record is None else ProcessIdentity.from_run(record)


def prober_alive(directory: Path) -> bool:
    """True while the prober recorded in ``directory`` runs."""
    identity = _identity(directory)
    return identity is not None and identity.alive()


def start_prober(state_dir: Path, uid: str, directory: Path) -> None:
    """Start the prober of pod ``uid`` unless it runs; returns once it is detached (it daemonizes itself)."""
    if prober_alive(directory) or not directory.is_dir():
        return
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    subprocess.run([sys.executable, "-m", "vmpod.probing", "--state-dir", str(state_dir), "--uid", uid],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   close_fds=True, check=False, timeout=60)


def stop_prober(directory: Path, timeout: float = 5.0) -> None:
    """Stop the prober recorded in ``directory`` (SIGTERM, SIGKILL after ``timeout`` s); gone is fine."""
    identity = _identity(directory)
    if identity is None or not identity.send(signal.SIGTERM):
        return
    if not identity.wait(timeout):
        identity.send(signal.SIGKILL)
        identity.wait(timeout)
