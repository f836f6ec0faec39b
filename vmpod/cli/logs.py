"""``vmpod logs [-f] [--tail N] POD``: the VM's serial console."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vmpod.cli._runtime import add_namespace, open_runtime, state_dir
from vmpod.errors import NotFoundError, SpecError

if TYPE_CHECKING:
    from vmpod.runtime.logs import LogLine

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``logs``."""
    parser = subparsers.add_parser("logs", help="print a pod's console log",
                                   description="Print the serial console of a pod's VM (kubectl logs style).")
    parser.add_argument("name", metavar="POD")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing while the VM runs")
    parser.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines (-1: all)")
    parser.add_argument("--timestamps", action="store_true", help="prefix each line with its timestamp")
    add_namespace(parser)
    parser.set_defaults(handler=_logs)


def _write(line: LogLine, stamps: bool) -> None:
    from vmpod.runtime.logs import timestamp  # noqa: PLC0415

    out = sys.stdout.buffer
    if stamps:
        out.write(timestamp(line.timestamp).encode() + b" ")
    out.write(line.content if line.content.endswith(b"\n") else line.content + b"\n")
    out.flush()


def _logs(args: argparse.Namespace) -> int:
    from vmpod.runtime import ContainerState, Runtime  # noqa: PLC0415
    from vmpod.runtime.logs import follow, read_lines  # noqa: PLC0415

    if args.tail < -1:
        raise SpecError("--tail", "must be -1 (all) or a number of lines", value=args.tail)
    tail = None if args.tail == -1 else args.tail
    runtime = open_runtime(args, write=False)
    if runtime is None:
        raise NotFoundError(f'pod "{args.name}" not found in namespace "{args.namespace}"')
    with runtime:
        record = runtime.get(args.name, args.namespace)
        path = record.log_path
        uid = record.uid
    if not args.follow:
        for line in read_lines(Path(path), tail=tail):
            _write(line, args.timestamps)
        return 0
    # Following: look the pod up in the store (read-only, no lock) between reads.
    watcher = Runtime.open(state_dir(args), backend=args.backend, readonly=True)
    last_check = [0.0, True]

    def running() -> bool:
        if time.monotonic() - last_check[0] >= 1.0:
            record = watcher.find(uid)
            last_check[0] = time.monotonic()
            last_check[1] = bool(record and record.container and record.container.state is ContainerState.RUNNING)
        return bool(last_check[1])

    with watcher:
        for line in follow(Path(path), tail=tail, keep_going=running):
            _write(line, args.timestamps)
    return 0

