"""``vmpod plugins [-o table|json]``: the loaded plugins, their versions, backends and capabilities.

Each backend is opened on a throw-away state directory just to ask its
:meth:`~vmpod.backend.Backend.capabilities` (which describe the host, not the
state); a backend that cannot be opened is listed with its error.

The backend new pods get is marked (``DEFAULT`` column, a closing line, and
``default`` in the JSON) with the reason, by the runtime's own rule,
:func:`vmpod.runtime.choose_backend`: ``--backend``, else ``$VMPOD_BACKEND``,
else the highest-priority installed backend other than ``fake``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from typing import Any

import attrs

from vmpod.backend import BackendConfig, Capabilities
from vmpod.errors import NotFoundError
from vmpod.plugins import PluginInfo, PluginManager, get_plugin_manager

__all__ = ["BackendRow", "DefaultBackend", "collect", "default_backend", "register"]


@attrs.frozen
class BackendRow:
    """One backend as ``vmpod plugins`` shows it: its capabilities, or why they are unknown."""

    name: str
    plugin: str
    description: str
    priority: int
    capabilities: Capabilities | None = None
    error: str = ""
    default: bool = False


@attrs.frozen
class DefaultBackend:
    """The backend for new pods and why (``name`` is empty when there is none: ``reason`` says why)."""

    name: str
    reason: str


def default_backend(manager: PluginManager, requested: str | None) -> DefaultBackend:
    """What :func:`vmpod.runtime.choose_backend` picks for ``requested`` (``--backend``), or why it fails."""
    from vmpod.runtime.runtime import choose_backend  # noqa: PLC0415 - the runtime is imported only here

    try:
        name, reason = choose_backend(manager, requested)
    except NotFoundError as exc:
        return DefaultBackend(name="", reason=str(exc))
    return DefaultBackend(name=name, reason=reason)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plugins``."""
    parser = subparsers.add_parser(
        "plugins", help="list plugins, backends and their capabilities",
        description="List the loaded vmpod plugins (built-in first), their versions and hooks, and each "
                    "backend with its capabilities on this host.")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(handler=_plugins)


def collect(requested: str | None = None) -> tuple[list[PluginInfo], list[BackendRow], DefaultBackend]:
    """The plugins of a freshly loaded manager, every backend they provide with capabilities, and the default.

    ``requested`` is ``--backend`` (None: ``$VMPOD_BACKEND`` or the highest priority decides).
    """
    manager = get_plugin_manager()
    infos = manager.plugin_infos()
    default = default_backend(manager, requested)
    provider = {backend: info.name for info in infos for backend in info.backends}
    rows = []
    for name, spec in sorted(manager.backend_specs().items()):
        row = BackendRow(name=name, plugin=provider.get(name, "?"), description=spec.description,
                         priority=spec.priority, default=name == default.name)
        with tempfile.TemporaryDirectory(prefix="vmpod-plugins-") as scratch:
            try:
                backend = spec.factory(BackendConfig(state_dir=scratch))
                try:
                    row = attrs.evolve(row, capabilities=backend.capabilities())
                finally:
                    backend.close()
            except Exception as exc:  # a broken or unavailable backend is shown, not fatal
                row = attrs.evolve(row, error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    return infos, rows, default


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _buses(capabilities: Capabilities) -> str:
    return ",".join(f"{bus}({capabilities.max_disks.get(bus, '?')})" for bus in capabilities.disk_buses) or "-"


def _json(infos: Sequence[PluginInfo], rows: Sequence[BackendRow], default: DefaultBackend) -> dict[str, Any]:
    def capabilities(row: BackendRow) -> dict[str, Any] | None:
        if row.capabilities is None:
            return None
        data = attrs.asdict(row.capabilities)
        data["max_disks"] = dict(row.capabilities.max_disks)
        return data

    return {
        "plugins": [{"name": i.name, "distribution": i.distribution, "version": i.version, "builtin": i.builtin,
                     "backends": list(i.backends), "hooks": list(i.hooks)} for i in infos],
        "backends": [{"name": r.name, "plugin": r.plugin, "description": r.description, "priority": r.priority,
                      "default": r.default, "capabilities": capabilities(r), "error": r.error or None}
                     for r in rows],
        "default": {"backend": default.name or None, "reason": default.reason},
    }


def _default_line(default: DefaultBackend, rows: Sequence[BackendRow]) -> str:
    if not default.name:
        return f"Default backend for new pods: none ({default.reason})"
    line = f"Default backend for new pods: {default.name} ({default.reason})"
    row = next((r for r in rows if r.name == default.name), None)
    if row is not None and row.error:
        line += f"; but it is unavailable: {row.error}"
    return line


def _plugins(args: argparse.Namespace) -> int:
    infos, rows, default = collect(getattr(args, "backend", None))
    status = 0 if default.name or not rows else 1
    if args.output == "json":
        print(json.dumps(_json(infos, rows, default), indent=2))
        return status
    print(_table([["PLUGIN", "DISTRIBUTION", "VERSION", "BUILTIN", "BACKENDS", "HOOKS"]] + [
        [i.name, i.distribution, i.version, _yes(i.builtin), ",".join(i.backends) or "-", ",".join(i.hooks) or "-"]
        for i in infos]))
    print()
    if not rows:
        print("No backend is installed: pip install vmpod-libvirt, vmpod-qemu or vmpod-fake.")
        return 0
    table = [["BACKEND", "PLUGIN", "PRIORITY", "DEFAULT", "ACCEL", "DISK BUSES", "FILESYSTEMS", "NETWORK", "CONSOLE",
              "GRACEFUL STOP", "SURVIVES RESTART", "DESCRIPTION"]]
    for row in rows:
        caps = row.capabilities
        if caps is None:
            table.append([row.name, row.plugin, str(row.priority), _yes(row.default), *["?"] * 7,
                          f"unavailable: {row.error}"])
            continue
        table.append([row.name, row.plugin, str(row.priority), _yes(row.default), caps.accelerator, _buses(caps),
                      ",".join(caps.filesystems) or "-", ",".join(caps.network_modes) or "-", _yes(caps.console),
                      _yes(caps.graceful_stop), _yes(caps.survives_restart), row.description])
    print(_table(table))
    print()
    print(_default_line(default, rows))
    return status
