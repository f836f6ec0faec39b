"""The per-pod prober, run as ``python -m vmpod.probing --state-dir DIR --uid UID [--foreground]``.

A small detached process (its own session, started by :func:`vmpod.probing.process.start_prober`)
that runs a pod's ``tcpSocket``/``httpGet`` probes on schedule while the container runs:

1. (:mod:`vmpod.probing.__main__`) it takes ``prober.lock`` (one prober per pod; a second one
   exits at once) and records its identity in ``prober.json``;
2. every round it reads the pod from the store (read-only) and the machine's state from the
   backend; it exits when the pod is gone or its container does not run (the runtime starts
   it again with the container);
3. due probes run against :func:`vmpod.runtime.endpoints.pod_endpoint`; their tracked states
   (:mod:`vmpod.probing.tracker`) and failure events go to ``status.json``, replaced atomically
   whenever something changed;
4. a liveness probe that reached its failure threshold makes it restart the VM as kubelet
   does: with the writer lock of the state directory it records ``Killing`` (with the failure),
   stops the container (the pod's grace period) and, unless ``restartPolicy`` is ``Never``,
   starts it again (``restart_count`` + 1).  The decision is written first
   (``restart_pending``): a prober killed halfway finishes the restart when started again.

It never writes the store except through the runtime, under the writer lock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from vmpod.model import ExecAction, Probe, RestartPolicy, VMPod
from vmpod.probing.checks import Outcome, Result, run_check
from vmpod.probing.process import PROBES_DIR
from vmpod.probing.status import STATUS_FILE, ProbeStatus, ProbeView, initial_status, read_status, write_status
from vmpod.probing.tracker import ProbeKind, due, initial_state, observe

if TYPE_CHECKING:
    from vmpod.runtime.records import PodRecord

__all__ = ["Prober", "serve"]

log = logging.getLogger("vmpod.prober")

#: Longest sleep between rounds (the prober also notices a stopped container this often).
_MAX_SLEEP = 2.0
#: The prober gives up after this many rounds in a row that could not read the machine's state.
_MAX_ERRORS = 30
#: How long a liveness restart waits for the state directory's writer lock.
_LOCK_TIMEOUT = 600.0


def _now() -> int:
    return time.time_ns()


class Prober:
    """The probe loop of one pod (see the module docstring)."""

    def __init__(self, state_dir: Path, uid: str) -> None:
        from vmpod.runtime import Runtime  # noqa: PLC0415

        self.state_dir = state_dir
        self.uid = uid
        self.runtime = Runtime.open(state_dir, readonly=True)
        self.directory = self.runtime.layout.pod_dir(uid) / PROBES_DIR
        self.path = self.directory / STATUS_FILE

    def close(self) -> None:
        """Release the store and the backends."""
        self.runtime.close()

    def _write(self, status: ProbeStatus) -> ProbeStatus:
        status = attrs.evolve(status, updated_at=_now())
        write_status(self.path, status)
        return status

    def run(self) -> int:
        """Probe until the pod is gone or its container stops; returns the exit code."""
        from vmpod.errors import VmpodError  # noqa: PLC0415
        from vmpod.runtime.states import ContainerState  # noqa: PLC0415

        status = read_status(self.path)
        errors = 0
        while True:
            record = self.runtime.find(self.uid)
            if record is None or not self.directory.is_dir():
                return 0
            try:
                record = self.runtime.refresh(self.uid)
                errors = 0
            except VmpodError as exc:
                errors += 1
                log.warning("cannot read the state of pod %s (%d in a row): %s", self.uid, errors, exc)
                if errors >= _MAX_ERRORS:
                    return 1  # the next writable open of the state directory starts a new prober
                time.sleep(_MAX_SLEEP)
                continue
            pod = self.runtime.pod_spec(record)
            if status is None:
                status = initial_status(pod)
            container = record.container
            if status.restart_pending:
                status = self._restart(status, pod, "")
                continue
            if container is None or container.state is not ContainerState.RUNNING:
                return 0
            if status.started_at != container.started_at:
                status = self._fresh(pod, container.started_at)
            status, failed = self._round(status, pod, record)
            if failed is not None:
                status = self._restart(status, pod, failed)
                continue
            time.sleep(self._sleep(status))

    def _fresh(self, pod: VMPod, started_at: int) -> ProbeStatus:
        """A new run of the container: every probe starts over (readiness not ready)."""
        base = initial_status(pod)
        views: dict[str, ProbeView | None] = {}
        for kind, probe, view in ((ProbeKind.READINESS, pod.container.readiness_probe, base.readiness),
                                  (ProbeKind.LIVENESS, pod.container.liveness_probe, base.liveness)):
            started = view
            if probe is not None and view is not None and view.supported:
                started = attrs.evolve(view, state=initial_state(kind, probe, started_at))
            views[str(kind)] = started
        previous = read_status(self.path)
        events = previous.events if previous is not None else ()
        return self._write(attrs.evolve(base, started_at=started_at, readiness=views["readiness"],
                                        liveness=views["liveness"], events=events))

    def _round(self, status: ProbeStatus, pod: VMPod, record: PodRecord) -> tuple[ProbeStatus, str | None]:
        """Run the due probes; returns the new status and, when liveness failed, its message."""
        changed = False
        failed: str | None = None
        for kind, probe in ((ProbeKind.READINESS, pod.container.readiness_probe),
                            (ProbeKind.LIVENESS, pod.container.liveness_probe)):
            view = status.readiness if kind is ProbeKind.READINESS else status.liveness
            if probe is None or view is None or view.state is None or not due(view.state, _now()):
                continue
            outcome = self._check(pod, record, probe)
            now = _now()
            state = observe(view.state, probe, outcome, now)
            view = attrs.evolve(view, state=state)
            if kind is ProbeKind.READINESS:
                status = attrs.evolve(status, readiness=view)
            else:
                status = attrs.evolve(status, liveness=view)
            label = "Readiness" if kind is ProbeKind.READINESS else "Liveness"
            if outcome.result is Result.FAILURE:
                status = status.with_event("Warning", "Unhealthy", f"{label} probe failed: {outcome.message}", now)
            elif outcome.message:
                status = status.with_event("Warning", "ProbeWarning", f"{label} probe warning: {outcome.message}",
                                           now)
            if kind is ProbeKind.LIVENESS and state.on_hold:
                failed = outcome.message or "liveness probe failed"
            changed = True
        if changed:
            status = self._write(status)
        return status, failed

    def _check(self, pod: VMPod, record: PodRecord, probe: Probe) -> Outcome:
        from vmpod.errors import SpecError  # noqa: PLC0415
        from vmpod.runtime.endpoints import pod_endpoint, resolve_port  # noqa: PLC0415
        handler = probe.handler
        if isinstance(handler, ExecAction):
            return Outcome(Result.UNSUPPORTED, "unsupported")
        try:
            port = resolve_port(pod, handler.port, "port")
            if handler.host:
                host, via_forward = handler.host, False
            else:
                host, port = pod_endpoint(record, self.runtime.machine(record), port)
                via_forward = not record.pod_ip
        except SpecError as exc:
            return Outcome(Result.FAILURE, str(exc))
        return run_check(handler, host, port, float(probe.timeout_seconds), via_forward=via_forward)

    @staticmethod
    def _sleep(status: ProbeStatus) -> float:
        now = _now()
        upcoming = [v.state.next_at for v in (status.readiness, status.liveness)
                    if v is not None and v.state is not None and not v.state.on_hold]
        if not upcoming:
            return _MAX_SLEEP
        return min(_MAX_SLEEP, max(0.05, (min(upcoming) - now) / 1e9))

    def _restart(self, status: ProbeStatus, pod: VMPod, message: str) -> ProbeStatus:
        """Restart the container after a liveness failure, as ``restartPolicy`` says (see the module docstring)."""
        from vmpod.runtime import Runtime  # noqa: PLC0415
        from vmpod.runtime.states import ContainerState  # noqa: PLC0415

        run = status.restart_pending or status.started_at
        status = self._write(attrs.evolve(status, restart_pending=run))
        record = self.runtime.find(self.uid)
        if record is None:
            return status
        restart = pod.restart_policy is not RestartPolicy.NEVER
        with Runtime.open(self.state_dir, backend=record.backend, lock_timeout=_LOCK_TIMEOUT,
                          reconcile=False) as writer:
            current = writer.find(self.uid)
            container = current.container if current is not None else None
            if current is not None and container is not None and container.state is ContainerState.RUNNING \
                    and container.started_at == run:
                writer.record_event(current, "Killing", f"Container {container.name} failed liveness probe, "
                                    + ("will be restarted" if restart else "restartPolicy is Never: not restarted")
                                    + (f" ({message})" if message else ""))
                writer.stop_container(self.uid, timeout=float(pod.termination_grace_period_seconds))
            current = writer.find(self.uid)
            container = current.container if current is not None else None
            if restart and container is not None and container.state is ContainerState.EXITED \
                    and container.started_at == run:
                writer.start_container(self.uid)
        return self._write(attrs.evolve(status, restart_pending=0))


def serve(state_dir: Path, uid: str) -> int:
    """Probe pod ``uid`` (the caller holds the pod's prober lock); returns the exit code."""
    prober = Prober(state_dir, uid)
    try:
        return prober.run()
    except Exception:
        log.exception("prober of pod %s failed", uid)
        return 1
    finally:
        with contextlib.suppress(Exception):
            prober.close()
