"""CRI pod-sandbox and container states, and how a backend's machine state maps onto them.

The numeric values are the CRI ``runtime.v1`` enum values, so the CRI adapter
can pass them through.  The mapping from :class:`~vmpod.backend.MachineState`
adapts Virtlet's ``virtToKubeState`` (its 1.13): a machine that was defined and
never started is ``CREATED``; a running one (or one shutting down) is
``RUNNING``; one that ran and stopped is ``EXITED`` with the backend's exit
reason (Virtlet reported none: vmpod does); anything the backend cannot tell
is ``UNKNOWN``, which makes the kubelet kill and recreate the container.
"""

from __future__ import annotations

import enum

from vmpod.backend import MachineState

__all__ = ["ContainerState", "SandboxState", "container_state", "exit_reason", "pod_phase"]


class SandboxState(enum.IntEnum):
    """CRI ``PodSandboxState``."""

    READY = 0
    NOTREADY = 1


class ContainerState(enum.IntEnum):
    """CRI ``ContainerState``."""

    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


_FROM_MACHINE = {
    MachineState.CREATED: ContainerState.CREATED,
    MachineState.RUNNING: ContainerState.RUNNING,
    MachineState.STOPPED: ContainerState.EXITED,
    MachineState.UNKNOWN: ContainerState.UNKNOWN,
}


def container_state(machine: MachineState) -> ContainerState:
    """The CRI container state of a machine in state ``machine``."""
    return _FROM_MACHINE[machine]


def exit_reason(reason: str, exit_code: int) -> str:
    """The CRI ``reason`` of an exited container: the backend's, or containerd's ``Completed``/``Error``."""
    if reason:
        return reason
    return "Completed" if exit_code == 0 else "Error"


def pod_phase(sandbox: SandboxState, container: ContainerState | None, *, operation: str = "",
              reason: str = "") -> str:
    """The STATUS ``vmpod get`` shows, in kubectl's words.

    ``Terminating`` while a delete runs, ``ContainerCreating`` while the container is made,
    then ``Created``/``Running``, and for an exited container its reason (``Completed``,
    ``Error``, ``Stopped``...).  A sandbox without a container is ``Pending`` (``NotReady``
    once stopped).
    """
    if operation == "delete":
        return "Terminating"
    if container is None:
        if operation == "create":
            return "ContainerCreating"
        return "NotReady" if sandbox is SandboxState.NOTREADY else "Pending"
    if container is ContainerState.EXITED:
        return reason or "Exited"
    return {ContainerState.CREATED: "Created", ContainerState.RUNNING: "Running",
            ContainerState.UNKNOWN: "Unknown"}[container]
