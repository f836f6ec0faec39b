"""The ``vmpod`` command.

Each subcommand lives in its own module under :mod:`vmpod.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a
function ``(args) -> int``.  :func:`main` turns every
:class:`~vmpod.errors.VmpodError` into a message on stderr and a non-zero exit
code: a user mistake never prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from vmpod.errors import SpecError, VmpodError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Modules providing subcommands, in the order ``vmpod --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "vmpod.cli.validate",
    "vmpod.cli.render",
    "vmpod.cli.seed",
    "vmpod.cli.run",
    "vmpod.cli.get",
    "vmpod.cli.describe",
    "vmpod.cli.logs",
    "vmpod.cli.attach",
    "vmpod.cli.port_forward",
    "vmpod.cli.ssh",
    "vmpod.cli.vnc",
    "vmpod.cli.delete",
    "vmpod.cli.plugins",
    "vmpod.cli.images",
)

log = logging.getLogger("vmpod")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="vmpod",
        description="Run virtual machines as Kubernetes-style pods.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="vmpod's state directory (env VMPOD_STATE_DIR; default /var/lib/vmpod for root, "
                             "else $XDG_DATA_HOME/vmpod)")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help="hypervisor backend for new pods (env VMPOD_BACKEND; default: the highest-priority "
                             "installed backend, fake only when nothing else is installed)")
    parser.add_argument("--network", default=None, metavar="MODE",
                        help="network mode for new pods: user (default) or cni (env VMPOD_NETWORK; see "
                             "docs/networking.md)")
    parser.add_argument("--cni-conf-dir", default=None, metavar="DIR",
                        help="CNI network configurations, cni mode (env VMPOD_CNI_CONF_DIR; default /etc/cni/net.d)")
    parser.add_argument("--cni-bin-dir", default=None, metavar="DIRS",
                        help="CNI plugin directories, ':'-separated, cni mode (env VMPOD_CNI_BIN_DIR; default "
                             "/opt/cni/bin:/usr/lib/cni)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmpod`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="vmpod: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args))
    except SpecError as exc:
        print(f"vmpod: error: {exc}" if "\n" not in str(exc) else f"vmpod: errors:\n{exc}", file=sys.stderr)
        return 1
    except VmpodError as exc:
        print(f"vmpod: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
