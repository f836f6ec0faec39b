"""Shared helpers of the pod commands: opening the runtime, naming pods, formatting ages.

The runtime (and with it cloud-init, pycdlib, cattrs) is imported only when a command runs,
so ``vmpod --help`` and the other commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vmpod.errors import ConflictError, VmpodError

if TYPE_CHECKING:
    from vmpod.runtime import PodRecord, Runtime

__all__ = ["add_namespace", "age", "open_runtime", "phase", "state_dir"]

log = logging.getLogger("vmpod")


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else ``$VMPOD_STATE_DIR`` or the default."""
    from vmpod.runtime.layout import default_state_dir  # noqa: PLC0415
    return Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()


def open_runtime(args: argparse.Namespace, *, write: bool = True) -> Runtime | None:
    """Open the runtime for a command.

    ``write``: the command changes pods and waits for the writer lock.  Otherwise a
    read-only runtime is used when another process holds the lock (and None is returned
    when there is no store at all yet: nothing to show).
    """
    from vmpod.network import NetworkOptions  # noqa: PLC0415
    from vmpod.runtime import Runtime  # noqa: PLC0415
    from vmpod.runtime.store import StoreError  # noqa: PLC0415

    directory = state_dir(args)
    network = NetworkOptions.resolve(getattr(args, "network", None), getattr(args, "cni_conf_dir", None),
                                     getattr(args, "cni_bin_dir", None))
    try:
        if write:
            runtime = Runtime.open(directory, backend=args.backend, network=network)
        else:
            if not (directory / "vmpod.db").exists():
                return None
            try:
                runtime = Runtime.open(directory, backend=args.backend, lock_timeout=1.0, network=network)
            except ConflictError:
                log.info("another vmpod process is changing %s: showing what the store says", directory)
                runtime = Runtime.open(directory, backend=args.backend, readonly=True, network=network)
    except StoreError:
        raise
    except OSError as exc:
        raise VmpodError(f"cannot use the state directory {directory}: {exc.strerror or exc}") from None
    log.info("backend for new pods: %s (%s)", runtime.backend_name, runtime.backend_reason)
    report = runtime.last_reconcile
    if report is not None:
        for line in report.problems:
            print(f"vmpod: warning: {line}", file=sys.stderr)
    return runtime


def add_namespace(parser: argparse.ArgumentParser) -> None:
    """Add ``-n/--namespace``."""
    parser.add_argument("-n", "--namespace", default="default", help="the pod's namespace (default: default)")


def phase(record: PodRecord) -> str:
    """The STATUS column of a pod."""
    from vmpod.runtime.states import pod_phase  # noqa: PLC0415
    container = record.container
    return pod_phase(record.state, container.state if container else None, operation=record.operation,
                     reason=container.reason if container else "")


def age(ns: int, now: int | None = None) -> str:
    """kubectl's compact age: ``42s``, ``5m``, ``3h``, ``2d``."""
    if ns <= 0:
        return "<unknown>"
    seconds = max(0, ((now or time.time_ns()) - ns) // 1_000_000_000)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
