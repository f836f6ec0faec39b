"""The hypervisor backend contract.

A backend realises :class:`~vmpod.machine.Machine` objects on a hypervisor.
It is registered by a plugin (see :func:`vmpod.hookspecs.vmpod_backends`) and
driven by the runtime.  The contract, checked for every backend by the
property-based state machine in :mod:`vmpod.testing.conformance`:

* every call is **idempotent**: creating a machine that exists (same name and
  UUID) returns its status unchanged; starting a running one returns its status
  (same ``started_at``: it is not rebooted); stopping one that is not running
  (CREATED or STOPPED) returns its status unchanged; destroying one that is
  gone succeeds;
* machine states move only along :data:`TRANSITIONS`;
* ``list()`` and ``status()`` agree, and ``list()`` shows every machine the
  backend can see, vmpod's and others'; ``owned`` is true exactly when the
  machine's labels contain :data:`~vmpod.machine.MARKER_LABEL` (any value),
  and the labels and UUID given to ``create`` come back unchanged;
* ``destroy()`` leaves nothing behind that the backend created: once every
  machine is destroyed, ``<state_dir>/backends/<name>`` holds only what the
  backend created when it was opened (its own bookkeeping);
* a machine survives the backend object being closed and a new one opened
  (a vmpod restart): the new object reports it with the same status, and
  never restarts it.

Optional (:class:`GuestAccess`, announced by :attr:`Capabilities.port_forward`
and :attr:`Capabilities.vnc`): forwarding a loopback port of the host to a
guest port of a *running* machine while it runs (``vmpod port-forward``,
``vmpod ssh``), and telling where its VNC server listens.  Dynamic forwards
live only as long as the machine's current run: a machine that stops (or is
destroyed) loses them, so a forward whose client crashed is harmless (it listens
on loopback only) and gone with the run.

Errors:

* :class:`~vmpod.errors.NotFoundError` for an unknown machine (every call but
  ``create`` and ``destroy``);
* :class:`~vmpod.errors.ConflictError` for ``create`` of a name that exists
  with another UUID;
* :class:`~vmpod.errors.InvalidTransition` for ``console`` and ``stats`` of a
  machine that is not running;
* :class:`~vmpod.errors.BackendError` (with the hypervisor's message) for
  failures, and for ``console`` when :attr:`Capabilities.console` is false.
  A ``start`` that fails leaves the machine not running (a backend that can
  tell reports it STOPPED with exit reason ``StartError``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

from vmpod.machine import Machine, PortForward

__all__ = [
    "LOOPBACK",
    "TRANSITIONS",
    "Backend",
    "BackendConfig",
    "Capabilities",
    "ConsoleEndpoint",
    "GuestAccess",
    "MachineInfo",
    "MachineState",
    "MachineStats",
    "MachineStatus",
]


class MachineState(enum.StrEnum):
    """State of a machine as a backend reports it.

    ``CREATED``: defined, never started since; ``RUNNING``: the guest runs (or is shutting down);
    ``STOPPED``: it ran and stopped (guest poweroff, ``stop``, or the hypervisor died: see
    ``exit_reason``); ``UNKNOWN``: the backend cannot tell.
    """

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


#: Allowed state changes; a backend never reports a transition outside this table.
TRANSITIONS: Mapping[MachineState, frozenset[MachineState]] = {
    MachineState.CREATED: frozenset({MachineState.RUNNING, MachineState.STOPPED, MachineState.UNKNOWN}),
    MachineState.RUNNING: frozenset({MachineState.STOPPED, MachineState.UNKNOWN}),
    MachineState.STOPPED: frozenset({MachineState.RUNNING, MachineState.UNKNOWN}),
    MachineState.UNKNOWN: frozenset(MachineState),
}


@attrs.frozen
class MachineStatus:
    """A machine's state with its timestamps (nanoseconds since the epoch, 0 when not yet).

    ``started_at`` is the start of the current (or last) run; ``finished_at`` the end of the
    last run, 0 while the machine runs; a CREATED machine has neither.

    :param exit_reason: why it stopped (STOPPED only): ``Completed`` (guest powered off),
        ``Stopped`` (by vmpod), ``Crashed``, ``Killed`` (forced off after the stop timeout, or the
        hypervisor process died), ``StartError`` (it could not boot), ``Error``...
    """

    name: str
    state: MachineState
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    exit_reason: str = ""
    message: str = ""


@attrs.frozen
class MachineInfo:
    """One entry of :meth:`Backend.list`: ``owned`` when its labels contain :data:`~vmpod.machine.MARKER_LABEL`."""

    name: str
    uuid: str
    state: MachineState
    owned: bool
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class MachineStats:
    """Resource usage of a running machine."""

    timestamp: int
    cpu_time_ns: int
    memory_bytes: int


@attrs.frozen
class ConsoleEndpoint:
    """Where the interactive serial console of a machine can be reached.

    ``kind`` is ``unix``: a stream socket at ``path`` served by the machine's console monitor
    (:class:`vmpod.consolemux.ConsoleMux`), which any number of clients may connect to at once
    (each gets the console's output from then on; what each writes goes to the console); a
    ``path`` beyond the 107-byte unix socket limit is reached with
    :func:`vmpod.consolemux.connect_unix`.  ``pty`` (a terminal device at ``path``, one client)
    is for a backend that cannot multiplex; ``vmpod attach`` refuses it.
    """

    kind: str
    path: str


@attrs.frozen
class Capabilities:
    """What a backend can do, shown by ``vmpod plugins`` and used by the runtime to refuse early.

    ``port_forward`` and ``vnc``: the backend implements :class:`GuestAccess` (dynamic port
    forwards; a VNC server to report).
    """

    accelerator: str = "none"
    disk_buses: tuple[str, ...] = ("scsi", "virtio")
    max_disks: Mapping[str, int] = attrs.field(factory=lambda: {"scsi": 26, "virtio": 21})
    filesystems: tuple[str, ...] = ()
    network_modes: tuple[str, ...] = ("user",)
    console: bool = True
    graceful_stop: bool = True
    survives_restart: bool = True
    port_forward: bool = False
    vnc: bool = False
    notes: str = ""


@attrs.frozen
class BackendConfig:
    """What the runtime passes to a backend factory.

    :param state_dir: vmpod's state directory; a backend keeps its own files under
        ``<state_dir>/backends/<name>``.
    :param options: backend-specific settings (e.g. ``uri`` for libvirt), from the CLI or config.
    """

    state_dir: str
    options: Mapping[str, str] = attrs.field(factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A hypervisor backend.  See the module docstring for the contract."""

    name: str

    def capabilities(self) -> Capabilities:
        """What this backend supports on this host."""
        ...

    def create(self, machine: Machine) -> MachineStatus:
        """Define ``machine`` (state CREATED); the same name and UUID again returns the existing status.

        :raises ConflictError: a machine with this name and another UUID exists.
        """
        ...

    def start(self, name: str) -> MachineStatus:
        """Boot the machine; a running machine is left alone."""
        ...

    def stop(self, name: str, timeout: float) -> MachineStatus:
        """Ask the guest to power off (ACPI), force it off after ``timeout`` seconds.

        A machine that is not running (CREATED or STOPPED) is returned unchanged.
        """
        ...

    def destroy(self, name: str) -> None:
        """Force off and remove the machine and everything the backend made for it; gone is fine."""
        ...

    def status(self, name: str) -> MachineStatus:
        """Current status; :class:`~vmpod.errors.NotFoundError` when there is no such machine."""
        ...

    def list(self) -> tuple[MachineInfo, ...]:
        """Every machine this backend sees, vmpod's and others'."""
        ...

    def console(self, name: str) -> ConsoleEndpoint:
        """Where to reach the interactive serial console of a running machine (``vmpod attach``).

        A ``unix`` endpoint takes several clients at once; its monitor runs as long as the
        machine does, outliving the backend object (a monitor that died is started again by
        the backend's next call for the machine).

        :raises InvalidTransition: the machine is not running.
        :raises BackendError: the backend has no console (:attr:`Capabilities.console` is false).
        """
        ...

    def stats(self, name: str) -> MachineStats:
        """CPU time and memory of a running machine; :class:`InvalidTransition` when it is not running."""
        ...

    def close(self) -> None:
        """Release connections; machines keep running."""
        ...


#: The only host address a forward may listen on: a forward never exposes a guest beyond the host.
LOOPBACK = "127.0.0.1"


@runtime_checkable
class GuestAccess(Protocol):
    """Reaching a running machine's guest from the host; optional (see :attr:`Capabilities.port_forward`).

    Forwards are TCP (or UDP) from ``forward.host_address`` (always :data:`LOOPBACK`) port
    ``forward.host_port`` to ``forward.guest_port`` of the guest's first user-mode NIC.  They are
    not part of the :class:`~vmpod.machine.Machine` and not kept across runs.
    """

    def add_port_forward(self, name: str, forward: PortForward) -> None:
        """Start forwarding ``forward`` on the running machine ``name``.

        :raises InvalidTransition: the machine is not running.
        :raises ConflictError: the host port is taken (by anything); the message names it.
        :raises BackendError: the machine has no user-mode NIC, or the hypervisor refused.
        """
        ...

    def remove_port_forward(self, name: str, forward: PortForward) -> None:
        """Stop forwarding ``forward``; a forward that is not there (or a machine not running) is fine."""
        ...

    def vnc_address(self, name: str) -> tuple[str, int] | None:
        """Where the running machine's VNC server listens (host, port), ``None`` without one.

        :raises InvalidTransition: the machine is not running.
        """
        ...
