"""Helpers shared by the manifest subcommands (``validate``, ``render``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from vmpod.errors import SpecError, SpecErrors

__all__ = ["add_input_arguments", "print_errors", "print_notes", "safe_streams", "stdout_is_utf8"]


def safe_streams() -> None:
    """Never fail on a character the terminal cannot show: escape it instead."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def stdout_is_utf8() -> bool:
    """True when standard output encodes every character (else JSON output is written as ASCII)."""
    return (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "") == "utf8"


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``FILE...`` and ``--accept-non-vm``."""
    parser.add_argument("files", metavar="FILE", nargs="+", help="manifest file (YAML or JSON); - for stdin")
    parser.add_argument(
        "--accept-non-vm",
        action="store_true",
        help="treat pods without the kubernetes.io/target-runtime: virtlet.cloud annotation as VM pods "
        "(by default they are errors: vmpod runs only VM pods)",
    )


def print_errors(error: SpecError) -> None:
    """Every problem in ``error`` as one ``FILE: PATH: message`` line on stderr."""
    errors = error.errors if isinstance(error, SpecErrors) else (error,)
    for each in errors:
        print(_one_line(str(each)), file=sys.stderr)


def print_notes(notes: Iterable[str]) -> None:
    """Notes (skipped objects...) on stderr, each prefixed ``note:``."""
    for note in notes:
        print(f"note: {_one_line(note)}", file=sys.stderr)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
