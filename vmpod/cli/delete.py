"""``vmpod delete POD... | -f FILE``: stop pods and remove everything they created."""

from __future__ import annotations

import argparse

from vmpod.cli._runtime import add_namespace, open_runtime
from vmpod.errors import NotFoundError, SpecError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``delete``."""
    parser = subparsers.add_parser("delete", help="delete pods",
                                   description="Stop pods (gracefully) and remove their machines, disks and logs.")
    parser.add_argument("names", nargs="*", metavar="POD")
    parser.add_argument("-f", "--filename", dest="files", action="append", default=[], metavar="FILE",
                        help="delete the pods of this manifest (repeatable)")
    parser.add_argument("--keep-log", action="store_true", help="keep the console log file")
    parser.add_argument("--grace-period", type=float, default=None, metavar="SECONDS",
                        help="how long the guest may take to power off (default: the pod's "
                             "terminationGracePeriodSeconds); 0 forces it off")
    parser.add_argument("--now", action="store_true", help="same as --grace-period 0")
    parser.add_argument("--ignore-not-found", action="store_true", help="a missing pod is not an error")
    add_namespace(parser)
    parser.set_defaults(handler=_delete)


def _delete(args: argparse.Namespace) -> int:
    targets = [(args.namespace, name) for name in args.names]
    if args.files:
        from vmpod.manifest import load_manifest_files  # noqa: PLC0415

        targets += [(pod.namespace, pod.name) for pod in load_manifest_files(args.files).pods]
    if not targets:
        raise SpecError("", "name the pods to delete, or give -f FILE", accepted="vmpod delete POD... | -f FILE")
    grace = 0.0 if args.now else args.grace_period
    runtime = open_runtime(args)
    assert runtime is not None
    missing: list[str] = []
    with runtime:
        for namespace, name in dict.fromkeys(targets):
            record = runtime.store.pod_by_name(namespace, name)
            if record is None:
                missing.append(f'pod "{name}" not found in namespace "{namespace}"')
                continue
            runtime.delete_pod(record, keep_log=args.keep_log, timeout=grace)
            print(f'pod "{name}" deleted')
    if missing and not args.ignore_not_found:
        raise NotFoundError("; ".join(missing))
    return 0
