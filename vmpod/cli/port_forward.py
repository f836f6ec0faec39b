"""``vmpod port-forward POD [LOCAL:]REMOTE...``: forward local ports to a running VM (kubectl style).

Each ``LOCAL:REMOTE`` forwards ``127.0.0.1:LOCAL`` to port ``REMOTE`` of the guest;
``REMOTE`` alone uses the same number locally, ``:REMOTE`` (or ``0:REMOTE``) any free local
port.  It prints ``Forwarding from 127.0.0.1:LOCAL -> REMOTE`` per port and forwards until
interrupted (SIGINT, SIGTERM, SIGHUP) or until the VM stops, then removes its forwards.
See :mod:`vmpod.cli._reach` for how a pod is reached.
"""

from __future__ import annotations

import argparse
import sys

from vmpod.cli._runtime import add_namespace
from vmpod.errors import SpecError
from vmpod.machine import PortForward

__all__ = ["parse_mapping", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``port-forward``."""
    parser = subparsers.add_parser(
        "port-forward", help="forward local ports to a pod's VM",
        description="Forward 127.0.0.1:LOCAL to port REMOTE of a running pod's VM until interrupted "
                    "(kubectl port-forward style).")
    parser.add_argument("name", metavar="POD")
    parser.add_argument("ports", metavar="[LOCAL:]REMOTE", nargs="+",
                        help="REMOTE alone: the same local port; :REMOTE or 0:REMOTE: any free local port")
    parser.add_argument("--address", default="127.0.0.1", help="local address (only 127.0.0.1 is accepted)")
    add_namespace(parser)
    parser.set_defaults(handler=_port_forward)


def parse_mapping(text: str, address: str = "127.0.0.1") -> PortForward:
    """``[LOCAL:]REMOTE`` as a TCP :class:`PortForward` (host port 0: any free port)."""
    from vmpod.cli._reach import parse_port  # noqa: PLC0415

    local, sep, remote = text.rpartition(":")
    if not sep:
        local = remote
    remote_port = parse_port(remote, f"port mapping {text!r}: REMOTE")
    local_port = parse_port(local, f"port mapping {text!r}: LOCAL", allow_zero=True) if local else 0
    return PortForward(guest_port=remote_port, host_port=local_port, host_address=address)


def _port_forward(args: argparse.Namespace) -> int:
    from vmpod.backend import LOOPBACK  # noqa: PLC0415
    from vmpod.cli._reach import forward_ports, reach, wait_for_signal  # noqa: PLC0415

    if args.address != LOOPBACK:
        raise SpecError("--address", "forwards listen on loopback only", value=args.address, accepted=LOOPBACK)
    wanted = [parse_mapping(text, args.address) for text in args.ports]
    locals_ = [f.host_port for f in wanted if f.host_port]
    duplicate = next((port for port in locals_ if locals_.count(port) > 1), None)
    if duplicate is not None:
        raise SpecError("[LOCAL:]REMOTE", "a local port is given twice", value=duplicate)
    with reach(args, args.name) as target, forward_ports(target, wanted) as active:
        for forward in active:
            print(f"Forwarding from {forward.host_address}:{forward.host_port} -> {forward.guest_port}", flush=True)
        status = wait_for_signal(target)
    sys.stdout.flush()
    return status
