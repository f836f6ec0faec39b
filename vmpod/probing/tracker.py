"""kubelet's probe state machine, one probe at a time, pure (the clock is a parameter).

For a container that started at ``started_at`` (nanoseconds, wall clock), following kubelet's
``prober/worker.go``:

* the result starts as **failure for readiness** (not ready until a probe succeeds) and
  **success for liveness**;
* nothing is probed before ``initialDelaySeconds`` have passed since the start; then a probe
  runs every ``periodSeconds``;
* a probe result changes the tracked result only after ``successThreshold`` consecutive
  successes or ``failureThreshold`` consecutive failures (the run counts identical results in
  a row);
* a liveness probe that reaches failure puts itself **on hold**: the container is to be
  restarted, and a new start (a new ``started_at``) begins a fresh tracker;
* an ``unsupported`` probe (``exec``) never changes the result: readiness stays not ready,
  liveness is ignored.
"""

from __future__ import annotations

import enum

import attrs

from vmpod.model import Probe
from vmpod.probing.checks import Outcome, Result

__all__ = ["ProbeKind", "ProbeState", "due", "initial_state", "observe"]

_NS = 1_000_000_000


class ProbeKind(enum.StrEnum):
    """Which probe of the container."""

    READINESS = "readiness"
    LIVENESS = "liveness"


@attrs.frozen
class ProbeState:
    """The tracked state of one probe for one run of the container.

    :param result: the thresholded result (what readiness and liveness mean).
    :param last: the last raw result (``""``: not probed yet).
    :param run: how many times in a row ``last`` came.
    :param next_at: when the next probe is due (ns).
    :param on_hold: liveness failed: no more probes until the container starts again.
    """

    kind: ProbeKind
    started_at: int
    result: Result
    next_at: int
    last: str = ""
    last_message: str = ""
    run: int = 0
    probes: int = 0
    last_probe_at: int = 0
    last_transition_at: int = 0
    on_hold: bool = False


def initial_state(kind: ProbeKind, probe: Probe, started_at: int) -> ProbeState:
    """The state before the first probe of a container that started at ``started_at``."""
    initial = Result.FAILURE if kind is ProbeKind.READINESS else Result.SUCCESS
    return ProbeState(kind=kind, started_at=started_at, result=initial,
                      next_at=started_at + probe.initial_delay_seconds * _NS)


def due(state: ProbeState, now: int) -> bool:
    """True when a probe should run at ``now``."""
    return not state.on_hold and now >= state.next_at


def observe(state: ProbeState, probe: Probe, outcome: Outcome, now: int) -> ProbeState:
    """The state after a probe run that ended at ``now`` with ``outcome``."""
    next_at = state.next_at + probe.period_seconds * _NS
    if next_at <= now:
        next_at = now + probe.period_seconds * _NS
    raw = outcome.result
    run = state.run + 1 if state.last == raw else 1
    result = state.result
    if raw is Result.SUCCESS and run >= probe.success_threshold:
        result = Result.SUCCESS
    elif raw is Result.FAILURE and run >= probe.failure_threshold:
        result = Result.FAILURE
    on_hold = state.on_hold
    if state.kind is ProbeKind.LIVENESS and result is Result.FAILURE:
        on_hold, run = True, 0
    return attrs.evolve(state, result=result, next_at=next_at, last=str(raw), last_message=outcome.message, run=run,
                        probes=state.probes + 1, last_probe_at=now,
                        last_transition_at=now if result is not state.result else state.last_transition_at,
                        on_hold=on_hold)
