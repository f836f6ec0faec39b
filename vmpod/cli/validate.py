"""``vmpod validate FILE...``: check Kubernetes manifests of VM pods without running anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vmpod.cli._common import add_input_arguments, print_errors, print_notes, safe_streams
from vmpod.errors import SpecError
from vmpod.manifest import load_manifest_files

__all__ = ["register", "run"]

_DESCRIPTION = """\
Check that every VM pod in the manifests is valid: the pod kinds and fields
vmpod supports, every Virtlet annotation's value, the ConfigMaps and Secrets
the pods refer to (they must be in the same input), volumes and mounts.
Each FILE is checked on its own; - reads standard input.

Output:
  stdout  one line per valid file: "FILE: ok, N VM pods: NAME, ..."
  stderr  one line per problem: "FILE: PATH: message (accepted: ...)", where
          PATH is the field, e.g. spec.template.metadata.annotations.VirtletVCPUCount
          ("FILE (document N)" in a multi-document file; "FILE: message" for a
          file that cannot be read or parsed), and notes such as skipped
          Services, prefixed "note: ".  A pod name used in several files is a
          note here (render, which takes the files together, refuses it).

Exit status: 0 when every VM pod of every file is valid, 1 otherwise,
2 for a usage error.
"""


def register(subparsers: Any) -> None:
    """Add the ``validate`` subcommand."""
    parser = subparsers.add_parser(
        "validate",
        help="check VM pod manifests (exit 0 when every VM pod is valid)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate every file in ``args.files``; returns the exit status."""
    safe_streams()
    failed = False
    seen: dict[str, str] = {}
    for name in args.files:
        try:
            result = load_manifest_files([name], accept_non_vm=args.accept_non_vm)
        except SpecError as exc:
            print_errors(exc)
            failed = True
            continue
        print_notes(result.notes)
        source = "<stdin>" if name == "-" else name
        for pod in result.pods:
            if pod.full_name in seen and seen[pod.full_name] != source:
                print(f"note: {source}: pod {pod.full_name} is also defined in {seen[pod.full_name]}",
                      file=sys.stderr)
            seen.setdefault(pod.full_name, source)
        if not args.quiet:
            names = ", ".join(pod.name for pod in result.pods)
            count = len(result.pods)
            print(f"{source}: ok, {count} VM pod{'s' if count != 1 else ''}" + (f": {names}" if names else ""))
    return 1 if failed else 0
