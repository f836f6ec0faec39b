"""Shared by ``vmpod port-forward``, ``ssh`` and ``vnc``: finding a running pod's VM and forwarding to it.

A pod in ``user`` network mode is reached through its backend's dynamic forwards
(:class:`vmpod.backend.GuestAccess`: qemu's ``hostfwd_add`` on the VM's user-mode
network).  A pod with a pod IP (``cni`` mode) is reached directly: a
:class:`~vmpod.relay.TcpRelay` in this process joins the local port to
``<pod IP>:<port>``.

Crash safety: each backend forward is recorded first as a lease file,
``<state dir>/forwards/<machine>.<protocol>-<local port>.json``, naming the backend, the
forward and this process.  The session removes the forward and then the lease.  When a
client is killed, its forward stays until the VM stops (the hypervisor forgets it then;
it only ever listens on loopback) or until the next session for the same VM finds the
lease of a dead process and removes the forward.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

import attrs

from vmpod.backend import LOOPBACK, Backend, GuestAccess, MachineState
from vmpod.errors import ConflictError, InvalidTransition, NotFoundError, SpecError, VmpodError
from vmpod.machine import PortForward
from vmpod.procutil import ProcessIdentity, read_json, write_json

if TYPE_CHECKING:
    from vmpod.runtime import Runtime

__all__ = ["Reached", "forward_ports", "free_local_port", "guest_access", "parse_port", "reach", "wait_for_signal"]

#: How often a waiting session checks that the VM still runs.
_POLL: Final = 2.0
#: Tries at a free local port before giving up (another process may take the one chosen).
_FREE_PORT_TRIES: Final = 5


@attrs.frozen
class Reached:
    """A running pod's VM: how to reach it."""

    pod: str
    backend_name: str
    machine: str
    pod_ip: str
    backend: Backend
    leases: Path


def parse_port(text: str, what: str, *, allow_zero: bool = False) -> int:
    """A port number from the command line; :class:`SpecError` naming ``what`` otherwise."""
    low = 0 if allow_zero else 1
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not low <= port <= 65535:
        raise SpecError(what, "not a port number", value=text, accepted=f"{low} to 65535")
    return port


@contextlib.contextmanager
def reach(args: argparse.Namespace, name: str) -> Iterator[Reached]:
    """Find pod ``name`` (in ``args.namespace``) and check that its VM runs.

    The runtime is opened read-only (no writer lock is held while a session lasts).
    """
    from vmpod.cli._runtime import state_dir  # noqa: PLC0415
    from vmpod.runtime import Runtime  # noqa: PLC0415

    directory = state_dir(args)
    if not (directory / "vmpod.db").exists():
        raise NotFoundError(f'pod "{name}" not found in namespace "{args.namespace}"')
    runtime: Runtime = Runtime.open(directory, backend=args.backend, readonly=True)
    with runtime:
        record = runtime.get(name, args.namespace)
        if record.container is None:
            raise InvalidTransition(f'pod "{record.full_name}" has no VM yet')
        backend = runtime.backend(record.backend)
        state = backend.status(record.machine_name).state
        if state is not MachineState.RUNNING:
            raise InvalidTransition(f'the VM of pod "{record.full_name}" is {state}, not running')
        yield Reached(pod=record.full_name, backend_name=record.backend, machine=record.machine_name,
                      pod_ip=record.pod_ip, backend=backend, leases=runtime.layout.root / "forwards")


def guest_access(target: Reached, what: str) -> GuestAccess:
    """The backend's :class:`GuestAccess`, or a clear error when it has none."""
    if not isinstance(target.backend, GuestAccess):
        raise VmpodError(f"the {target.backend_name} backend of pod \"{target.pod}\" cannot {what}")
    return target.backend


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _lease_path(target: Reached, forward: PortForward) -> Path:
    return target.leases / f"{target.machine}.{forward.protocol}-{forward.host_port}.json"


def _reap_stale_leases(target: Reached, access: GuestAccess) -> None:
    """Remove forwards of this VM whose client died (see the module docstring)."""
    if not target.leases.is_dir():
        return
    for path in sorted(target.leases.glob(f"{target.machine}.*.json")):
        lease = read_json(path)
        if lease is None or lease.get("machine") != target.machine:
            continue
        owner = ProcessIdentity.from_run(lease)
        if owner is not None and owner.alive():
            continue
        forward = PortForward(**lease["forward"])
        with contextlib.suppress(VmpodError):
            access.remove_port_forward(target.machine, forward)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _backend_forward(target: Reached, access: GuestAccess, forward: PortForward) -> Iterator[PortForward]:
    """Add ``forward`` (host port 0: a free one) under a lease; remove both on exit."""
    tries = _FREE_PORT_TRIES if forward.host_port == 0 else 1
    for attempt in range(tries):
        chosen = attrs.evolve(forward, host_port=free_local_port()) if forward.host_port == 0 else forward
        lease = _lease_path(target, chosen)
        target.leases.mkdir(parents=True, exist_ok=True)
        me = ProcessIdentity.of(os.getpid())
        write_json(lease, {"machine": target.machine, "backend": target.backend_name,
                           "forward": attrs.asdict(chosen), **(me.to_run() if me else {})})
        try:
            access.add_port_forward(target.machine, chosen)
        except ConflictError:
            lease.unlink(missing_ok=True)
            if attempt + 1 < tries:
                continue
            raise
        except BaseException:
            lease.unlink(missing_ok=True)
            raise
        break
    try:
        yield chosen
    finally:
        try:
            access.remove_port_forward(target.machine, chosen)
        finally:
            lease.unlink(missing_ok=True)


@contextlib.contextmanager
def forward_ports(target: Reached, forwards: Sequence[PortForward]) -> Iterator[list[PortForward]]:
    """Forward each of ``forwards`` (host port 0: any free one) to the VM while the block runs.

    Yields the forwards with their actual host ports.  User-mode pods get backend forwards;
    pods with a pod IP get relays to it.
    """
    from vmpod.relay import TcpRelay  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        active: list[PortForward] = []
        if target.pod_ip:
            for forward in forwards:
                if forward.protocol != "tcp":
                    raise SpecError("protocol", "a pod with a pod IP is reached over TCP only", value=forward.protocol,
                                    accepted="tcp")
                relay = stack.enter_context(TcpRelay(forward.host_port, (target.pod_ip, forward.guest_port)))
                active.append(attrs.evolve(forward, host_port=relay.port))
        else:
            access = guest_access(target, "forward ports")
            _reap_stale_leases(target, access)
            for forward in forwards:
                active.append(stack.enter_context(_backend_forward(target, access, forward)))
        yield active


def wait_for_signal(target: Reached, *, check_running: bool = True) -> int:
    """Block until SIGINT, SIGTERM or SIGHUP (0), or until the VM stops running (1, with a message)."""
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while not stop.wait(_POLL):
            if not check_running:
                continue
            try:
                state = target.backend.status(target.machine).state
            except NotFoundError:
                state = MachineState.UNKNOWN
            except VmpodError:
                continue
            if state is not MachineState.RUNNING:
                print(f'vmpod: the VM of pod "{target.pod}" is {state}: forwarding ended', file=sys.stderr)
                return 1
        return 0
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
