"""CNI ``ADD``, ``DEL`` and ``CHECK`` of a network configuration list, with ``prevResult`` chaining.

As the specification's runtime does: ``ADD`` runs the plugins in order, each
receiving the previous plugin's result as ``prevResult`` (the first none), and
the last result is the attachment's result; ``DEL`` runs them in reverse, each
with the recorded result as ``prevResult`` (from spec 0.4.0 on, and when it is
known); ``CHECK`` (0.4.0 and later) runs them in order with it.  ``DEL`` of an
attachment that is partly or not at all set up succeeds: plugins must
tolerate it, and a missing network namespace is passed on as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmpod.network.config import NetworkConfig
from vmpod.network.errors import NetworkError
from vmpod.network.plugins import Invocation, run_plugin

__all__ = ["RESULT_VERSIONS", "add", "check", "delete"]

#: Configuration and result versions vmpod runs (those whose results have ``interfaces``, ``ips`` with
#: ``interface``, ``routes``; 0.3.x is still what some node networks ship, e.g. flannel's default).
RESULT_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")


def _version_at_least(version: str, wanted: tuple[int, int, int]) -> bool:
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        return False
    return parts >= wanted


def add(config: NetworkConfig, invocation: Invocation) -> dict[str, Any]:
    """Attach: ``ADD`` through every plugin; the final result.

    :raises NetworkError: when a plugin fails or the chain yields no result.  The caller
        runs :func:`delete` to undo what the first plugins did.
    """
    if config.cni_version not in RESULT_VERSIONS:
        raise NetworkError(f"CNI network configuration {config.source or config.name}: cniVersion "
                           f"{config.cni_version!r} is not supported (accepted: {', '.join(RESULT_VERSIONS)})")
    result: dict[str, Any] | None = None
    for index, plugin in enumerate(config.plugins):
        answer = run_plugin(str(plugin["type"]), "ADD", config.plugin_config(index, result), invocation)
        if answer is None:
            raise NetworkError(f"CNI plugin {plugin['type']} ADD returned no result")
        result = answer
    assert result is not None
    version = result.get("cniVersion")
    if version not in RESULT_VERSIONS:
        raise NetworkError(f"CNI network {config.name}: the result has cniVersion {version!r} "
                           f"(accepted: {', '.join(RESULT_VERSIONS)})")
    return result


def delete(config: NetworkConfig, invocation: Invocation, prev_result: Mapping[str, Any] | None) -> None:
    """Detach: ``DEL`` through every plugin in reverse order (``prev_result``: the recorded ADD result).

    :raises NetworkError: when a plugin fails (the attachment may then be partly released).
    """
    previous = dict(prev_result) if prev_result is not None and _version_at_least(config.cni_version,
                                                                                   (0, 4, 0)) else None
    for index in reversed(range(len(config.plugins))):
        run_plugin(str(config.plugins[index]["type"]), "DEL", config.plugin_config(index, previous), invocation)


def check(config: NetworkConfig, invocation: Invocation, prev_result: Mapping[str, Any]) -> None:
    """``CHECK`` the attachment against its recorded result (spec 0.4.0 and later).

    :raises NetworkError: when the configuration's version has no CHECK or a plugin finds a problem.
    """
    if not _version_at_least(config.cni_version, (0, 4, 0)):
        raise NetworkError(f"CNI network {config.name}: CHECK needs cniVersion 0.4.0 or later, "
                           f"not {config.cni_version}")
    for index in range(len(config.plugins)):
        run_plugin(str(config.plugins[index]["type"]), "CHECK", config.plugin_config(index, prev_result),
                   invocation)
