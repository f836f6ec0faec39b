"""Dynamic port forwards on qemu's user-mode network, shared by the qemu and libvirt backends.

Both backends give the guest a user-mode (slirp) netdev and add or remove host
forwards on a running machine with the human monitor commands ``hostfwd_add``
and ``hostfwd_remove`` (through QMP's ``human-monitor-command``; libvirt through
``qemuMonitorCommand``).  This module builds those commands, reads their
replies (the monitor answers an error with text, not with a QMP error) and checks
first that the host port is free, so that a taken port is reported by its
number rather than in qemu's words.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence

from vmpod.backend import LOOPBACK
from vmpod.errors import BackendError, ConflictError, SpecError
from vmpod.machine import NetworkMode, Nic, PortForward

__all__ = [
    "PROTOCOLS",
    "check_forward",
    "check_host_port_free",
    "hostfwd_add_command",
    "hostfwd_remove_command",
    "hostfwd_rule",
    "read_hostfwd_reply",
    "user_netdev_index",
]

#: Protocols a forward may use.
PROTOCOLS = ("tcp", "udp")


def check_forward(forward: PortForward) -> None:
    """Refuse a forward that is not loopback, has a port out of range or an unknown protocol."""
    if forward.protocol not in PROTOCOLS:
        raise SpecError("protocol", "unknown protocol", value=forward.protocol, accepted=" or ".join(PROTOCOLS))
    if forward.host_address != LOOPBACK:
        raise SpecError("host address", "forwards listen on loopback only", value=forward.host_address,
                        accepted=LOOPBACK)
    for field, port in (("guest port", forward.guest_port), ("host port", forward.host_port)):
        if not 1 <= port <= 65535:
            raise SpecError(field, "not a port number", value=port, accepted="1 to 65535")


def user_netdev_index(nics: Sequence[Nic]) -> int:
    """The index of the first user-mode NIC (whose netdev gets the forwards).

    :raises BackendError: when the machine has none (a tap NIC is reached at its pod IP instead).
    """
    for index, nic in enumerate(nics):
        if nic.mode is NetworkMode.USER:
            return index
    raise BackendError("the machine has no user-mode NIC to forward ports on (reach a CNI pod at its pod IP)")


def hostfwd_rule(forward: PortForward) -> str:
    """``tcp:127.0.0.1:8080-:80``: the rule of ``-netdev user,hostfwd=`` and ``hostfwd_add``."""
    return f"{forward.protocol}:{forward.host_address}:{forward.host_port}-:{forward.guest_port}"


def hostfwd_add_command(netdev: str, forward: PortForward) -> str:
    """The human monitor command adding ``forward`` to the user netdev ``netdev``."""
    return f"hostfwd_add {netdev} {hostfwd_rule(forward)}"


def hostfwd_remove_command(netdev: str, forward: PortForward) -> str:
    """The human monitor command removing ``forward`` (named by its host side) from ``netdev``."""
    return f"hostfwd_remove {netdev} {forward.protocol}:{forward.host_address}:{forward.host_port}"


def read_hostfwd_reply(reply: str, forward: PortForward, *, adding: bool) -> None:
    """Raise for a ``hostfwd_add`` (``adding``) reply that is not empty; removal replies are informational.

    qemu says ``Could not set up host forwarding rule '...'`` when the port is taken
    (:class:`ConflictError` naming the port) and other text for other problems.
    """
    text = reply.strip()
    if not adding or not text:
        return
    if "Could not set up host forwarding rule" in text:
        raise ConflictError(_taken(forward))
    raise BackendError(f"hostfwd_add {hostfwd_rule(forward)}: {text}")


def check_host_port_free(forward: PortForward) -> None:
    """Bind the host side for a moment; :class:`ConflictError` naming the port when that fails.

    The socket is closed at once (with ``SO_REUSEADDR``, as qemu binds, so that a port in
    ``TIME_WAIT`` does not count as taken).
    """
    kind = socket.SOCK_STREAM if forward.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            with contextlib.suppress(OSError):
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((forward.host_address, forward.host_port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConflictError(_taken(forward)) from None
            raise BackendError(f"cannot use {forward.host_address}:{forward.host_port}: {exc.strerror}") from None


def _taken(forward: PortForward) -> str:
    return (f"local port {forward.host_port} ({forward.protocol} on {forward.host_address}) is already in use; "
            "choose another local port")
