"""The probe status of a pod: ``pods/<uid>/probes/status.json``, written atomically, cheap to read.

The runtime writes a first one when it creates a container with probes (readiness: not
ready); the prober replaces it (write a temporary file, rename) after every probe that
changed something.  ``vmpod get`` reads only this file per pod: no process is asked.

A status belongs to one run of the container (``started_at``): results of an earlier run
never count for the current one (kubelet resets readiness when a container restarts).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import attrs

from vmpod import convert
from vmpod.model import ExecAction, Probe, VMPod
from vmpod.probing.checks import Result, describe_handler
from vmpod.probing.tracker import ProbeState

__all__ = ["MAX_EVENTS", "STATUS_FILE", "ProbeEvent", "ProbeStatus", "ProbeView", "initial_status", "is_ready",
           "probe_summary", "read_status", "write_status"]

STATUS_FILE = "status.json"
#: Probe events kept in the status (the oldest are dropped).
MAX_EVENTS = 20


@attrs.frozen
class ProbeView:
    """One probe as the pod declares it (``describe``'s line) and its tracked state (``None``: not started)."""

    summary: str
    supported: bool
    state: ProbeState | None = None


@attrs.frozen
class ProbeEvent:
    """A probe event (``Unhealthy``...), aggregated like kubectl's ``(x5 over 2m)``."""

    type: str
    reason: str
    message: str
    first: int
    last: int
    count: int = 1


@attrs.frozen
class ProbeStatus:
    """What the prober knows about one pod.

    :param started_at: the container run the states belong to (0: none yet).
    :param restart_pending: a liveness restart of the run ``restart_pending`` was decided and
        may not have finished (a prober killed halfway finishes it when started again).
    """

    uid: str
    started_at: int = 0
    readiness: ProbeView | None = None
    liveness: ProbeView | None = None
    restart_pending: int = 0
    updated_at: int = 0
    events: tuple[ProbeEvent, ...] = ()
    format: int = 1

    def with_event(self, kind: str, reason: str, message: str, now: int) -> ProbeStatus:
        """This status with one more event: the same type, reason and message again counts up (and moves last)."""
        events = list(self.events)
        same = next((e for e in events if (e.type, e.reason, e.message) == (kind, reason, message)), None)
        if same is not None:
            events.remove(same)
            events.append(attrs.evolve(same, last=now, count=same.count + 1))
        else:
            events.append(ProbeEvent(type=kind, reason=reason, message=message, first=now, last=now))
        return attrs.evolve(self, events=tuple(events[-MAX_EVENTS:]))


def probe_summary(probe: Probe) -> str:
    """kubectl's line: ``tcp-socket :22 delay=0s timeout=1s period=10s #success=1 #failure=3``."""
    return (f"{describe_handler(probe.handler)} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds}s "
            f"period={probe.period_seconds}s #success={probe.success_threshold} #failure={probe.failure_threshold}")


def _view(probe: Probe | None) -> ProbeView | None:
    if probe is None:
        return None
    return ProbeView(summary=probe_summary(probe), supported=not isinstance(probe.handler, ExecAction))


def initial_status(pod: VMPod) -> ProbeStatus:
    """The status of a pod whose container has not run yet: readiness (if any) not ready."""
    return ProbeStatus(uid=pod.uid, readiness=_view(pod.container.readiness_probe),
                       liveness=_view(pod.container.liveness_probe))


def read_status(path: Path) -> ProbeStatus | None:
    """The status in ``path``; None when there is none (or it cannot be read: treated as none)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        return convert.from_json(text, ProbeStatus)
    except ValueError:
        return None


def write_status(path: Path, status: ProbeStatus) -> None:
    """Replace ``path`` with ``status`` atomically (a crash leaves the old or the new file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(convert.to_json(status, indent=None) + "\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def is_ready(status: ProbeStatus | None, *, running: bool, started_at: int) -> bool:
    """Kubernetes' container ``ready``: running and, with a readiness probe, that probe succeeded in this run."""
    if not running:
        return False
    if status is None or status.readiness is None:
        return True
    state = status.readiness.state
    return (status.readiness.supported and state is not None and status.started_at == started_at
            and state.started_at == started_at and state.result is Result.SUCCESS)
