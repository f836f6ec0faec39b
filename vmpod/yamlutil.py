"""Safe YAML reading with limits, for input that may be hostile.

PyYAML's safe loader never runs code, but aliases can make a small document
describe an enormous (or cyclic) tree.  Every document vmpod reads passes
through :func:`check_tree`, which refuses cycles, trees deeper than
:data:`MAX_DEPTH` and more than :data:`MAX_NODES` nodes after alias
expansion.  YAML syntax errors become :class:`~vmpod.errors.SpecError` with
the line and column.

A stream that starts with ``{`` or ``[`` and parses as JSON is read as JSON
(as kubectl does), so JSON strings may hold any character; anything else is
read as YAML.  The loader reads YAML the way Kubernetes does (YAML converted
to JSON), so everything it returns is JSON data:

* timestamps such as ``2024-01-01`` stay strings;
* the tags that build non-JSON values (``!!binary``, ``!!set``, ``!!omap``,
  ``!!pairs``, ``!!timestamp``) are errors;
* a key written twice in one mapping is an error (kubectl refuses it too),
  instead of the last one silently winning.

libyaml's composer recurses once per nesting level and crashes the process
(a C stack overflow, not an exception) on inputs nested tens of thousands of
levels deep.  Before handing a large text to it, :func:`_check_nesting`
bounds the nesting cheaply, and when the bound is not small enough it counts
the real depth with libyaml's event stream, which does not recurse.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from vmpod.errors import SpecError

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "check_json_data",
    "check_tree",
    "dump_yaml",
    "dump_yaml_all",
    "safe_load_all_limited",
    "safe_load_limited",
]

MAX_DEPTH = 200
MAX_NODES = 5_000_000

_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Texts shorter than this cannot nest deeply enough to hurt libyaml (each
# level needs at least one character); it crashes somewhere past 20000 levels.
_SAFE_NESTING = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_REFUSED_TAGS = ("binary", "set", "omap", "pairs", "timestamp")


class _JSONLoader(_Base):  # type: ignore[valid-type,misc]
    """A safe loader that produces JSON data only and refuses duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # the base class reports the unhashable key
                if key in seen:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _refuse(loader: yaml.SafeLoader, node: Node) -> Any:
    raise ConstructorError(None, None, f"the YAML tag {node.tag} is not supported (only JSON data is)",
                           node.start_mark)


for _tag in _REFUSED_TAGS:
    _JSONLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)
# Plain scalars that look like dates stay strings, as in Kubernetes.
_JSONLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in _Base.yaml_implicit_resolvers.items()
}

if hasattr(yaml, "CSafeDumper"):
    _Dumper: type[Any] = yaml.CSafeDumper
else:  # pragma: no cover - libyaml is missing

    class _PyDumper(yaml.SafeDumper):
        """PyYAML's own emitter writes U+0085 raw in plain scalars, where readers see a line break."""

        def analyze_scalar(self, scalar: str) -> Any:
            analysis = super().analyze_scalar(scalar)
            if "\x85" in scalar:
                analysis.allow_flow_plain = analysis.allow_block_plain = False
                analysis.allow_single_quoted = analysis.allow_block = False
            return analysis

    _Dumper = _PyDumper


class _BlockDumper(_Dumper):  # type: ignore[misc]
    """Multi-line strings as ``|`` blocks, where YAML allows it (the emitter falls back to quotes)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any, *, sort_keys: bool = False, ascii_only: bool = False) -> str:
    """``data`` as block-style YAML that :func:`safe_load_limited` reads back equal (any string included).

    ``ascii_only`` escapes every non-ASCII character (for a stream that cannot encode them).
    """
    text: str = yaml.dump(data, Dumper=_BlockDumper, sort_keys=sort_keys, allow_unicode=not ascii_only,
                          default_flow_style=False)
    return text


def dump_yaml_all(documents: Iterable[Any], *, sort_keys: bool = False, ascii_only: bool = False) -> str:
    """Several documents as one YAML stream (each starts with ``---``); see :func:`dump_yaml`."""
    text: str = yaml.dump_all(list(documents), Dumper=_BlockDumper, sort_keys=sort_keys,
                              allow_unicode=not ascii_only,
                              default_flow_style=False, explicit_start=True)
    return text


_INDICATORS = re.compile(r"[-?:]")


def _nesting_bound(text: str) -> int:
    """An upper bound of the nesting depth of ``text`` that is cheap to compute.

    Flow collections need one bracket per level; block collections need
    more indentation (a sequence may share its parent key's column) or a
    compact indicator (``- - x``, ``- a: b``) on the same line.
    """
    flow = text.count("[") + text.count("{")
    block = 0
    for line in text.split("\n"):
        body = line.lstrip(" ")
        block = max(block, 2 * (len(line) - len(body) + 1) + len(_INDICATORS.findall(body)))
    return flow + block + 2


def _check_nesting(text: str, path: str) -> None:
    if len(text) < _SAFE_NESTING or _nesting_bound(text) < _SAFE_NESTING:
        return
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Base):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(path, "document nested too deeply", accepted=f"at most {MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None


def _yaml_error(exc: yaml.YAMLError, path: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return SpecError(path, f"invalid YAML{where}: {problem}", accepted="valid YAML or JSON")


def safe_load_limited(text: str, path: str = "") -> Any:
    """Parse one YAML (or JSON) document (empty text gives None) and check it with :func:`check_tree`."""
    json_documents = _json_documents(text, path)
    if json_documents is not None and len(json_documents) == 1:
        check_tree(json_documents[0], path)
        return json_documents[0]
    _check_nesting(text, path)
    try:
        data = yaml.load(text, Loader=_JSONLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise SpecError(path, f"unreadable YAML: {exc}", accepted="valid YAML or JSON") from None
    check_tree(data, path)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _json_documents(text: str, path: str) -> list[Any] | None:
    """The documents of ``text`` when it is JSON (one value or several in a row), else None."""
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return None
    decoder = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)
    documents = []
    index = 0
    try:
        while index < len(stripped):
            document, index = decoder.raw_decode(stripped, index)
            documents.append(document)
            while index < len(stripped) and stripped[index] in " \t\r\n":
                index += 1
    except json.JSONDecodeError:
        return None  # not JSON after all: YAML (a flow mapping, say) gets its turn
    except RecursionError:
        raise SpecError(path, "document nested too deeply", accepted=f"at most {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise SpecError(path, f"unreadable JSON: {exc}", accepted="valid YAML or JSON") from None
    return documents


def safe_load_all_limited(text: str, path: str = "") -> Iterator[Any]:
    """Parse every document of a YAML (or JSON) stream, each checked with :func:`check_tree`."""
    json_documents = _json_documents(text, path)
    if json_documents is not None:
        budget = [MAX_NODES]
        for document in json_documents:
            check_tree(document, path, budget)
            yield document
        return
    _check_nesting(text, path)
    try:
        documents = list(yaml.load_all(text, Loader=_JSONLoader))  # a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise SpecError(path, f"unreadable YAML: {exc}", accepted="valid YAML or JSON") from None
    budget = [MAX_NODES]
    for document in documents:
        check_tree(document, path, budget)
        yield document


def check_tree(data: Any, path: str = "", budget: list[int] | None = None) -> None:
    """Refuse cyclic, too deep or too large trees, counting shared nodes every time they appear.

    Shared nodes (YAML aliases) are measured once and their size reused, so
    an alias bomb is refused in time proportional to the text, not to the
    tree it describes.
    """
    remaining = budget if budget is not None else [MAX_NODES]
    sizes: dict[int, int] = {}  # id -> expanded size of a finished container
    heights: dict[int, int] = {}  # id -> nesting height of a finished container
    on_path: set[int] = set()
    # Iterative post-order walk over the containers: (node, children visited?)
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, dict | list):
            continue
        key = id(node)
        children = list(node.values()) if isinstance(node, dict) else node
        if done:
            on_path.discard(key)
            size = 1 + sum(sizes.get(id(child), 1) for child in children)
            height = 1 + max((heights.get(id(child), 0) for child in children), default=0)
            if size > MAX_NODES:
                raise SpecError(path, "document too large after expanding aliases",
                                accepted=f"at most {MAX_NODES} nodes")
            if height > MAX_DEPTH:
                raise SpecError(path, "document nested too deeply", accepted=f"at most {MAX_DEPTH} levels")
            sizes[key] = size
            heights[key] = height
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError(path, "document refers to itself (cyclic alias)", accepted="a tree without cycles")
        if len(on_path) >= MAX_DEPTH:
            raise SpecError(path, "document nested too deeply", accepted=f"at most {MAX_DEPTH} levels")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if isinstance(child, dict | list))
    remaining[0] -= sizes.get(id(data), 1)
    if remaining[0] < 0:
        raise SpecError(path, "document too large after expanding aliases", accepted=f"at most {MAX_NODES} nodes")


_JSON_ACCEPTED = "JSON data: strings, numbers, true/false, null, lists and mappings with string keys"


def check_json_data(data: Any, path: str = "") -> None:
    """Refuse anything that is not JSON data, or is nested deeper than :data:`MAX_DEPTH`.

    JSON data is ``None``, ``bool``, ``int``, finite ``float``, ``str``, and
    lists and dicts of those, dict keys being strings.  The error's path
    points into ``data`` (``users[0].name``).
    """
    stack: list[tuple[Any, str, int]] = [(data, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if node is None or isinstance(node, bool | int | str):
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                raise SpecError(where, "not a finite number", value=node, accepted=_JSON_ACCEPTED)
            continue
        if depth >= MAX_DEPTH:
            raise SpecError(where, "data nested too deeply", accepted=f"at most {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise SpecError(where, "mapping keys must be strings", value=key, accepted=_JSON_ACCEPTED)
                stack.append((value, _join_key(where, key), depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{where}[{index}]", depth + 1) for index, value in enumerate(node))
        else:
            raise SpecError(where, f"a {type(node).__name__} is not JSON data", value=node, accepted=_JSON_ACCEPTED)


def _join_key(path: str, key: str) -> str:
    if key and key.replace("_", "").replace("-", "").isalnum() and key.isascii():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"
