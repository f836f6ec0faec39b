"""``vmpod vnc POD [PORT]``: where a pod's VNC server listens; with ``PORT``, forward a local port to it.

Without ``PORT`` it prints the VNC endpoint (``127.0.0.1:5900``: the hypervisor listens
on loopback only) and exits.  With ``PORT`` it also relays ``127.0.0.1:PORT`` to it
(``0``: any free port) and prints ``Forwarding from 127.0.0.1:PORT -> VNC 127.0.0.1:5900``
until interrupted or until the VM stops, as ``virtletctl vnc`` does.
"""

from __future__ import annotations

import argparse

from vmpod.cli._runtime import add_namespace
from vmpod.errors import VmpodError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``vnc``."""
    parser = subparsers.add_parser(
        "vnc", help="show (or forward a local port to) a pod's VNC server",
        description="Print where a running pod's VM has its VNC server; with PORT, forward 127.0.0.1:PORT to it "
                    "until interrupted (virtletctl vnc style).")
    parser.add_argument("name", metavar="POD")
    parser.add_argument("port", metavar="PORT", nargs="?", help="local port to forward (0: any free port)")
    add_namespace(parser)
    parser.set_defaults(handler=_vnc)


def _vnc(args: argparse.Namespace) -> int:
    from vmpod.cli._reach import guest_access, parse_port, reach, wait_for_signal  # noqa: PLC0415
    from vmpod.relay import TcpRelay  # noqa: PLC0415

    local = parse_port(args.port, "PORT", allow_zero=True) if args.port is not None else None
    with reach(args, args.name) as target:
        address = guest_access(target, "show a VNC server").vnc_address(target.machine)
        if address is None:
            raise VmpodError(f'the VM of pod "{target.pod}" has no VNC server')
        host, port = address
        print(f"VNC of pod {target.pod}: {host}:{port}", flush=True)
        if local is None:
            return 0
        with TcpRelay(local, (host, port)) as relay:
            print(f"Forwarding from 127.0.0.1:{relay.port} -> VNC {host}:{port}", flush=True)
            return wait_for_signal(target)
