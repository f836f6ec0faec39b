"""Generate ``docs/reference/hooks.md`` from the docstrings of :mod:`vmpod.hookspecs`.

The hookspec docstrings are the reference; this module renders them (and the
records the hooks use) as Markdown.  A test compares the output with the
committed page, so the two never drift apart::

    python -m vmpod.docgen_hooks --write docs/reference/hooks.md   # regenerate
    python -m vmpod.docgen_hooks --check docs/reference/hooks.md   # exit 1 when stale

Only the small part of reStructuredText the docstrings use is understood:
``:param x:``, ``:return:``, ``:raises X:``, ``Example::`` blocks,
``.. versionadded::``, roles such as ``:class:`~vmpod.x.Y``` and ````literals````.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmpod import hookspecs
from vmpod._markers import PROJECT

__all__ = ["hook_functions", "main", "render", "rst_to_markdown", "short_signature"]

#: The records and protocols the hooks take or return, in the order the page shows them.
RECORDS: tuple[type, ...] = (
    hookspecs.BackendSpec,
    hookspecs.VolumeHandlerSpec,
    hookspecs.VolumeHandler,
    hookspecs.VolumeContext,
    hookspecs.VolumeAttachment,
    hookspecs.ImageSourceSpec,
    hookspecs.PodEvent,
)

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|ref):`(~?)([^`]+)`")
_FIELD = re.compile(r":(param|return|returns|raises)\s*([^:]*):\s*(.*)")


def hook_functions() -> list[Callable[..., Any]]:
    """Every hookspec function of :mod:`vmpod.hookspecs`, in source order."""
    marker = f"{PROJECT}_spec"
    functions = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker)]
    return sorted(functions, key=lambda f: f.__code__.co_firstlineno)


def short_signature(function: Callable[..., Any]) -> str:
    """``name(arg1, arg2)``: how the page's headings (and the docs test) name a hook."""
    return f"{function.__name__}({', '.join(inspect.signature(function).parameters)})"


def _full_signature(function: Callable[..., Any]) -> str:
    signature = inspect.signature(function)
    parameters = ", ".join(
        name if parameter.annotation is inspect.Parameter.empty else f"{name}: {parameter.annotation}"
        for name, parameter in signature.parameters.items()
    )
    result = "" if signature.return_annotation is inspect.Signature.empty else f" -> {signature.return_annotation}"
    return f"def {function.__name__}({parameters}){result}"


def _inline(text: str) -> str:
    text = _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)
    return text.replace("``", "`")


def _blocks(lines: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Split docstring lines into ("text", lines), ("code", lines) and ("field", lines) blocks."""
    index = 0
    while index < len(lines):
        line = lines[index]
        if _FIELD.match(line) or line.startswith(".. "):
            block = [line]
            index += 1
            while index < len(lines) and lines[index].startswith(" ") and lines[index].strip():
                block.append(lines[index].strip())
                index += 1
            yield "field", block
        elif line.rstrip().endswith("::"):
            yield "text", [line.rstrip()[:-1]]
            index += 1
            code: list[str] = []
            while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
                code.append(lines[index])
                index += 1
            yield "code", textwrap.dedent("\n".join(code)).strip("\n").splitlines()
        else:
            yield "text", [line]
            index += 1


def rst_to_markdown(docstring: str) -> str:
    """The Markdown for one docstring."""
    out: list[str] = []
    parameters_started = False
    for kind, block in _blocks(inspect.cleandoc(docstring).splitlines()):
        if kind == "code":
            out += ["", "```python", *block, "```", ""]
            continue
        if kind == "text":
            out.append(_inline(block[0]))
            continue
        head = " ".join(block)
        if head.startswith(".. versionadded::"):
            out += ["", f"*Added in version {head.split('::', 1)[1].strip()}.*"]
            continue
        if head.startswith(".. "):
            out.append(_inline(head))
            continue
        match = _FIELD.match(head)
        assert match is not None
        field, name, text = match[1], match[2].strip(), _inline(match[3])
        if field == "param":
            if not parameters_started:
                out += ["", "**Parameters:**", ""]
                parameters_started = True
            out.append(f"- `{name}`: {text}")
        elif field == "raises":
            out += ["", f"**Raises** `{name}`: {text}"]
        else:
            out += ["", f"**Returns:** {text}"]
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _record_section(record: type) -> list[str]:
    lines = [f"### {record.__name__}", "", rst_to_markdown(record.__doc__ or "").rstrip(), ""]
    if attrs.has(record):
        lines += ["| Field | Type | Default |", "| --- | --- | --- |"]
        for field in attrs.fields(record):
            if field.default is attrs.NOTHING:
                default = "required"
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]  # attrs' Factory is a class
                default = f"`{getattr(field.default.factory, '__name__', 'factory')}()`"
            else:
                default = f"`{field.default!r}`"
            lines.append(f"| `{field.name}` | `{field.type}` | {default} |")
        lines.append("")
    else:
        for name, method in inspect.getmembers(record, inspect.isfunction):
            if name.startswith("_"):
                continue
            lines += [f"- `{_full_signature(method).removeprefix('def ')}`: {_inline(inspect.getdoc(method) or '')}"]
        lines.append("")
    return lines


def render() -> str:
    """The whole ``docs/reference/hooks.md`` page."""
    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from vmpod/hookspecs.py by `python -m vmpod.docgen_hooks --write docs/reference/hooks.md`;",
        "     do not edit by hand: tests/test_plugins.py fails when this page and the docstrings differ. -->",
        "",
        rst_to_markdown(hookspecs.__doc__ or "").rstrip(),
        "",
        "Writing a plugin step by step: [Writing plugins](../plugins.md).",
        "",
        "## Hooks",
        "",
    ]
    for function in hook_functions():
        lines += [f"### {short_signature(function)}", "", "```python", _full_signature(function), "```", "",
                  rst_to_markdown(function.__doc__ or "").rstrip(), ""]
    lines += ["## Records", "", "What the hooks yield and receive (`from vmpod.hookspecs import ...`).", ""]
    for record in RECORDS:
        lines += _record_section(record)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the page, write it (``--write PATH``) or check a file is current (``--check PATH``)."""
    parser = argparse.ArgumentParser(prog="python -m vmpod.docgen_hooks", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", help="write the page to PATH")
    group.add_argument("--check", metavar="PATH", help="exit 1 when PATH differs from the generated page")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(page, encoding="utf-8")
    elif args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).exists() else ""
        if current != page:
            print(f"{args.check} is stale: run python -m vmpod.docgen_hooks --write {args.check}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
