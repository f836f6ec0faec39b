"""``vmpod render FILE... [-o yaml|json]``: the resolved VM pods, as vmpod sees them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vmpod.cli._common import add_input_arguments, print_errors, print_notes, safe_streams, stdout_is_utf8
from vmpod.convert import unstructure
from vmpod.errors import SpecError
from vmpod.manifest import load_manifest_files
from vmpod.yamlutil import dump_yaml_all

__all__ = ["register", "run"]

_DESCRIPTION = """\
Read the manifests (all FILEs together; - reads standard input), expand every
workload into its VM pods (a StatefulSet gives NAME-0..NAME-N-1...), resolve
annotations, ConfigMaps and Secrets, and print each pod in vmpod's
unstructured form (the one vmpod.convert reads back with structure()).

Output:
  stdout  -o yaml (default): one YAML document per pod, each starting "---";
          -o json: a JSON array with one object per pod.
  stderr  notes (skipped Services...) prefixed "note: ", and on failure one
          "FILE: PATH: message" line per problem; nothing is printed on stdout
          then.  A pod name used twice (in one file or across files) is an error.

Exit status: 0 when every pod was rendered, 1 when the input has errors,
2 for a usage error.
"""


def register(subparsers: Any) -> None:
    """Add the ``render`` subcommand."""
    parser = subparsers.add_parser(
        "render",
        help="print the resolved VM pods of manifests (YAML or JSON)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="output format")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Render every VM pod of ``args.files`` on stdout; returns the exit status."""
    safe_streams()
    try:
        result = load_manifest_files(args.files, accept_non_vm=args.accept_non_vm)
    except SpecError as exc:
        print_errors(exc)
        return 1
    print_notes(result.notes)
    data = [unstructure(pod) for pod in result.pods]
    if args.output == "json":
        text = json.dumps(data, indent=2, ensure_ascii=not stdout_is_utf8()) + "\n"
    else:
        text = dump_yaml_all(data, ascii_only=not stdout_is_utf8()) if data else ""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
