"""Named fault points: make the process kill itself at a chosen step (crash-safety tests).

The runtime calls :func:`point` between every recorded intent, side effect and
recorded outcome of its operations.  Normally that costs one comparison.  With

``VMPOD_FAULT_POINT=<name>``      the process sends itself ``SIGKILL`` the first
                                  time it reaches ``<name>``;
``VMPOD_FAULT_POINT=<name>@<n>``  ... the ``n``-th time;

so a test can run any command (``vmpod run``, ``vmpod delete``) and interrupt
it exactly there, as a power cut or an OOM kill would.  :data:`POINTS` lists
every name; the crash test checks that each one is reached and survived.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["ENV", "POINTS", "configure", "point"]

ENV = "VMPOD_FAULT_POINT"

#: Every fault point, in the order an operation reaches them.
POINTS: tuple[str, ...] = (
    # run_pod / create_sandbox + create_container
    "create.intent",            # pod row, operation and every planned artefact committed
    "create.workdir",           # pod directories made
    "create.rootdisk",          # root overlay written
    "create.volumes",           # every volume handler attached
    "create.network",           # the pod's network attached (cni mode: namespace, CNI ADD, tap; result recorded)
    "create.seed",              # seed ISO written
    "create.machine.before",    # just before the backend creates the machine
    "create.machine.after",     # the backend has created it, the outcome is not recorded
    "create.outcome",           # container CREATED committed
    # start_container
    "start.before",             # just before the backend starts the machine
    "start.after",              # started, the outcome is not recorded
    "start.outcome",            # container RUNNING committed
    # stop_container
    "stop.intent",
    "stop.after",               # stopped, the outcome is not recorded
    # delete_pod / remove_container / remove_sandbox
    "delete.intent",            # the delete operation is committed
    "delete.stopped",           # the machine is stopped
    "delete.destroyed",         # the machine is destroyed
    "delete.volumes",           # volumes detached
    "delete.network",           # the pod's network detached (cni mode: CNI DEL, namespace removed)
    "delete.files",             # files removed, rows not yet
    "delete.outcome",           # the pod's rows are gone
)

class _Armed:
    lock = threading.Lock()
    target: str | None = None
    countdown = 0


def configure(spec: str | None) -> None:
    """Arm the fault point described by ``spec`` (``name`` or ``name@n``), or disarm with None/empty."""
    with _Armed.lock:
        if not spec:
            _Armed.target, _Armed.countdown = None, 0
            return
        name, _, count = spec.partition("@")
        if name not in POINTS:
            raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
        _Armed.target, _Armed.countdown = name, int(count or 1)


def point(name: str) -> None:
    """Reach the fault point ``name``: if it is the armed one (and its count is reached), SIGKILL."""
    if name != _Armed.target:
        return
    with _Armed.lock:
        _Armed.countdown -= 1
        fire = _Armed.countdown == 0
    if fire:
        os.kill(os.getpid(), signal.SIGKILL)


configure(os.environ.get(ENV))
