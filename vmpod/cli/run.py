"""``vmpod run FILE`` and ``vmpod apply -f FILE``: run the VM pods of a manifest."""

from __future__ import annotations

import argparse

from vmpod.cli._runtime import open_runtime, state_dir

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``apply``."""
    run = subparsers.add_parser("run", help="run the VM pods of manifest files",
                                description="Create and start every VM pod of the manifests (again: no change).")
    run.add_argument("files", nargs="+", metavar="FILE", help="manifest files (- for standard input)")
    _options(run)
    run.set_defaults(handler=_run)
    apply = subparsers.add_parser("apply", help="same as run: vmpod apply -f FILE",
                                  description="Create and start every VM pod of the manifests (again: no change).")
    apply.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                       help="manifest file (repeatable; - for standard input)")
    _options(apply)
    apply.set_defaults(handler=_run)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait until every pod is Running")
    parser.add_argument("--wait-ready", action="store_true",
                        help="wait until every pod is Ready (running, and its readiness probe succeeded)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long --wait and --wait-ready wait (default 300)")


def _run(args: argparse.Namespace) -> int:
    from vmpod.manifest import load_manifest_files  # noqa: PLC0415

    result = load_manifest_files(args.files)
    for note in result.notes:
        print(f"vmpod: note: {note}")
    if not result.pods:
        print("vmpod: no VM pods in the input")
        return 1
    runtime = open_runtime(args)
    assert runtime is not None
    with runtime:
        for pod in result.pods:
            before = runtime.find(pod.uid)
            runtime.run_pod(pod)
            print(f"pod/{pod.name} {'unchanged' if before and before.container else 'created'}", flush=True)
    if args.wait or args.wait_ready:
        # Wait without the writer lock, so that other vmpod commands can run meanwhile.
        from vmpod.runtime import Runtime  # noqa: PLC0415

        with Runtime.open(state_dir(args), backend=args.backend, readonly=True) as watcher:
            for pod in result.pods:
                if args.wait_ready:
                    watcher.wait_ready(pod.uid, args.timeout)
                    print(f"pod/{pod.name} ready")
                else:
                    watcher.wait_running(pod.uid, args.timeout)
                    print(f"pod/{pod.name} running")
    return 0
