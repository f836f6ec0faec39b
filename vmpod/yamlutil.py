"""Safe YAML reading with limits, for input that may be hostile.

PyYAML's safe loader never runs code, but aliases can make a small document
describe an enormous (or cyclic) tree.  Every document vmpod reads passes
through :func:`check_tree`, which refuses cycles, trees deeper than
:data:`MAX_DEPTH` and more than :data:`MAX_NODES` nodes after alias
expansion.  YAML syntax errors become :class:`~vmpod.errors.SpecError` with
the line and column.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from vmpod.errors import SpecError

__all__ = ["MAX_DEPTH", "MAX_NODES", "check_tree", "safe_load_all_limited", "safe_load_limited"]

MAX_DEPTH = 200
MAX_NODES = 5_000_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_error(exc: yaml.YAMLError, path: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return SpecError(path, f"invalid YAML{where}: {problem}", accepted="valid YAML or JSON")


def safe_load_limited(text: str, path: str = "") -> Any:
    """Parse one YAML document (empty text gives None) and check it with :func:`check_tree`."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise SpecError(path, f"unreadable YAML: {exc}", accepted="valid YAML or JSON") from None
    check_tree(data, path)
    return data


def safe_load_all_limited(text: str, path: str = "") -> Iterator[Any]:
    """Parse every document of a YAML stream, each checked with :func:`check_tree`."""
    try:
        documents = list(yaml.load_all(text, Loader=_Loader))  # a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise SpecError(path, f"unreadable YAML: {exc}", accepted="valid YAML or JSON") from None
    budget = [MAX_NODES]
    for document in documents:
        check_tree(document, path, budget)
        yield document


def check_tree(data: Any, path: str = "", budget: list[int] | None = None) -> None:
    """Refuse cyclic, too deep or too large trees (counting shared nodes every time they appear)."""
    remaining = budget if budget is not None else [MAX_NODES]
    on_path: set[int] = set()
    # Iterative walk: (node, depth, leaving?)
    stack: list[tuple[Any, int, bool]] = [(data, 0, False)]
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        remaining[0] -= 1
        if remaining[0] < 0:
            raise SpecError(path, "document too large after expanding aliases",
                            accepted=f"at most {MAX_NODES} nodes")
        if isinstance(node, dict | list):
            if id(node) in on_path:
                raise SpecError(path, "document refers to itself (cyclic alias)",
                                accepted="a tree without cycles")
            if depth >= MAX_DEPTH:
                raise SpecError(path, "document nested too deeply", accepted=f"at most {MAX_DEPTH} levels")
            on_path.add(id(node))
            stack.append((node, depth, True))
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1, False) for child in children)
