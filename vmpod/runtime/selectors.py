"""Label selectors: CRI's exact-match maps and kubectl's ``-l`` syntax.

``a=b`` / ``a==b`` (equal), ``a!=b`` (absent or different), ``a`` (present),
``!a`` (absent), ``a in (x,y)``, ``a notin (x,y)``; terms separated by commas
are ANDed.  A mapping matches when every key has exactly that value (CRI).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from vmpod.errors import SpecError

__all__ = ["Selector", "parse_selector"]

Selector = Callable[[Mapping[str, str]], bool]

_SET_TERM = re.compile(r"\s*(!?)\s*([^\s=!(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*")
_TERM = re.compile(r"\s*(!?)\s*([^\s=!(),]+)\s*(?:(==|=|!=)\s*([^\s=!(),]*))?\s*")


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def _equals(key: str, value: str) -> Selector:
    return lambda labels: labels.get(key) == value


def _differs(key: str, value: str) -> Selector:
    return lambda labels: labels.get(key) != value


def _present(key: str, present: bool) -> Selector:
    return lambda labels: (key in labels) is present


def _member(key: str, values: frozenset[str], member: bool) -> Selector:
    return lambda labels: (labels.get(key) in values) is member


def _all(checks: list[Selector]) -> Selector:
    return lambda labels: all(check(labels) for check in checks)


def parse_selector(selector: str | Mapping[str, str] | None) -> Selector:
    """A predicate on label maps; None or empty selects everything.

    :raises SpecError: for a malformed selector string.
    """
    if selector is None:
        return _all([])
    if not isinstance(selector, str):
        return _all([_equals(k, v) for k, v in selector.items()])
    checks: list[Selector] = []
    for term in _split_terms(selector):
        set_match = _SET_TERM.fullmatch(term)
        if set_match and not set_match[1]:
            values = frozenset(v.strip() for v in set_match[4].split(",") if v.strip())
            checks.append(_member(set_match[2], values, set_match[3] == "in"))
            continue
        match = _TERM.fullmatch(term)
        if match is None or (match[1] and match[3]):
            raise SpecError("selector", "invalid label selector term", value=term.strip(),
                            accepted="key=value, key!=value, key, !key, key in (a,b), key notin (a,b)")
        negate, key, op, value = match[1], match[2], match[3], match[4] or ""
        if op is None:
            checks.append(_present(key, not negate))
        elif op == "!=":
            checks.append(_differs(key, value))
        else:
            checks.append(_equals(key, value))
    return _all(checks)
