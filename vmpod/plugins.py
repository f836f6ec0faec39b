"""The plugin manager: loads plugins and gives typed access to their hooks.

:func:`get_plugin_manager` builds a fresh :class:`PluginManager`: it adds the
hookspecs of :mod:`vmpod.hookspecs`, registers vmpod's built-in plugins
(:data:`BUILTIN_PLUGINS`) first, then every distribution's ``vmpod`` entry
point.  A plugin that fails to import is logged and skipped, never fatal.

Environment knobs:

* ``VMPOD_DISABLE_PLUGINS=a,b``: do not load these entry points (by name);
* ``VMPOD_TRACE_PLUGINS=1``: log every hook call, its implementations and results.

Callers use the typed methods (``backend_specs()``, ``adjust_seed()``...)
rather than ``pm.hook``, so every call site is type-checked.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import pluggy

from vmpod import hookspecs
from vmpod._markers import PROJECT
from vmpod.backend import Backend, BackendConfig
from vmpod.errors import NotFoundError, PluginConflictError
from vmpod.hookspecs import BackendSpec, ImageSourceSpec, PodEvent, VolumeHandlerSpec
from vmpod.names import is_dns_label

if TYPE_CHECKING:
    from vmpod.machine import Machine
    from vmpod.model import VMPod

__all__ = ["BUILTIN_PLUGINS", "PluginInfo", "PluginManager", "get_plugin_manager"]

log = logging.getLogger(__name__)

#: vmpod's own behaviour, registered (in this order) before any third-party plugin.
BUILTIN_PLUGINS: tuple[str, ...] = ("vmpod.volumes", "vmpod.images")

_R = TypeVar("_R")


@attrs.frozen
class PluginInfo:
    """One loaded plugin, as ``vmpod plugins`` lists it.

    :param hooks: the hooks it implements, sorted.
    """

    name: str
    distribution: str
    version: str
    backends: tuple[str, ...] = ()
    builtin: bool = False
    hooks: tuple[str, ...] = ()


class PluginManager:
    """A typed facade over a :class:`pluggy.PluginManager` for project ``vmpod``."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._distributions: dict[str, tuple[str, str]] = {}
        self._builtins: set[str] = set()

    # ---- registration -------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module; returns its name."""
        registered = self.pm.register(plugin, name=name)
        if registered is None:
            raise PluginConflictError(f"plugin {name or plugin!r} is blocked or already registered")
        return registered

    def unregister(self, name: str) -> None:
        """Unregister the plugin called ``name``."""
        self.pm.unregister(name=name)

    def load_entrypoints(self, disabled: Iterable[str] = ()) -> None:
        """Register every ``vmpod`` entry point except ``disabled``.

        A plugin that fails to import, or whose hook implementations do not match the hookspecs
        (unknown argument names...), is logged as a warning and skipped.
        """
        blocked = set(disabled)
        for entry_point in metadata.entry_points(group=PROJECT):
            if entry_point.name in blocked or self.pm.get_plugin(entry_point.name) is not None:
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a third party's bug must not break vmpod
                log.warning("plugin %s (%s) failed to load and is skipped: %s", entry_point.name,
                            entry_point.value, exc)
                continue
            dist = entry_point.dist
            try:
                self.pm.register(plugin, name=entry_point.name)
            except pluggy.PluginValidationError as exc:
                log.warning("plugin %s (%s) is invalid and is skipped: %s", entry_point.name, entry_point.value, exc)
                if self.pm.get_plugin(entry_point.name) is not None:  # pluggy leaves it half-registered
                    self.pm.unregister(name=entry_point.name)
                continue
            if dist is not None:
                self._distributions[entry_point.name] = (dist.metadata["Name"], dist.version)

    # ---- registration hooks -------------------------------------------------------

    def _collect(self, records: Iterable[Iterable[_R] | None], what: str) -> dict[str, _R]:
        result: dict[str, _R] = {}
        for batch in records:
            for record in batch or ():
                name = str(getattr(record, "name", ""))
                if not is_dns_label(name):
                    raise PluginConflictError(f"invalid {what} name {name!r}: use lower-case letters, digits, '-'")
                if name in result:
                    raise PluginConflictError(f"conflicting {what} plugins: two register the name {name!r}")
                result[name] = record
        return result

    def backend_specs(self) -> dict[str, BackendSpec]:
        """Every registered backend, by name."""
        return self._collect(self.pm.hook.vmpod_backends(), "backend")

    def backend_spec(self, name: str) -> BackendSpec:
        """The backend called ``name``; :class:`NotFoundError` lists the available ones."""
        specs = self.backend_specs()
        if name not in specs:
            raise NotFoundError(f"unknown backend {name!r}; available: {', '.join(sorted(specs)) or 'none'}")
        return specs[name]

    def create_backend(self, name: str, config: BackendConfig) -> Backend:
        """Instantiate backend ``name``."""
        return self.backend_spec(name).factory(config)

    def _attributed(self, hook_name: str, what: str) -> list[tuple[str, Any]]:
        """(plugin name, record) for every record of registration hook ``hook_name``, names checked."""
        pairs: list[tuple[str, Any]] = []
        for impl in self.chain_order(hook_name):
            records = cast(Iterable[Any], impl.function() or ())
            pairs += [(impl.plugin_name, record) for record in records]
        self._collect([[record for _, record in pairs]], what)
        return pairs

    def _resolve(self, pairs: list[tuple[str, Any]], key: str, what: str) -> dict[Any, Any]:
        """Index records by ``key`` values: a plugin's record replaces a built-in one, two plugins' conflict."""
        chosen: dict[Any, tuple[str, Any]] = {}
        for plugin, record in pairs:
            values = getattr(record, key)
            for value in values if isinstance(values, tuple) else (values,):
                if value in chosen:
                    other_plugin, other = chosen[value]
                    label = getattr(value, "__name__", repr(value))
                    if (other_plugin in self._builtins) == (plugin in self._builtins):
                        raise PluginConflictError(f"conflicting {what}s for {label}: {other.name!r} (plugin "
                                                  f"{other_plugin}) and {record.name!r} (plugin {plugin})")
                    if plugin in self._builtins:
                        continue  # the third-party one, registered earlier (tryfirst), stays
                    log.info("%s %r of plugin %s replaces built-in %r for %s", what, record.name, plugin,
                             other.name, label)
                chosen[value] = (plugin, record)
        return {value: record for value, (_, record) in chosen.items()}

    def volume_handlers(self) -> dict[type, VolumeHandlerSpec]:
        """Every volume handler, by the volume type it handles.

        A plugin's handler for a type a built-in handles replaces the built-in one; two
        third-party handlers for one type raise :class:`PluginConflictError`.
        """
        return self._resolve(self._attributed("vmpod_volume_handlers", "volume handler"), "volume_type",
                             "volume handler")

    def image_sources(self) -> dict[str, ImageSourceSpec]:
        """Every image source, by URL scheme (a plugin's source replaces a built-in one for its schemes)."""
        return self._resolve(self._attributed("vmpod_image_sources", "image source"), "schemes", "image source")

    # ---- adjustment and event hooks ---------------------------------------------

    def _chain(self, hook_name: str, value: Any, **kwargs: Any) -> Any:
        """Pass ``value`` through every implementation in :meth:`chain_order`."""
        for impl in self.chain_order(hook_name):
            arguments = {name: (value if name in ("documents", "machine") else kwargs[name])
                         for name in impl.argnames}
            result = impl.function(**arguments)
            if result is not None:
                value = result
        return value

    def chain_order(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The implementations of a hook in the order vmpod applies them (adjustments, registrations).

        Registration order (vmpod's built-ins first, then entry points), so a later plugin sees,
        and can override, what an earlier one did; ``tryfirst`` implementations come before all
        others and ``trylast`` ones after.  (pluggy's own call order is the reverse.)
        """
        impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if not (i.wrapper or i.hookwrapper)]
        # pluggy keeps [trylast (newest first), normal (oldest first), tryfirst (oldest first)]
        return ([i for i in impls if i.tryfirst]
                + [i for i in impls if not (i.tryfirst or i.trylast)]
                + [i for i in impls if i.trylast][::-1])

    def adjust_seed(self, pod: VMPod, documents: Any) -> Any:
        """Apply every ``vmpod_adjust_seed`` implementation in turn."""
        return self._chain("vmpod_adjust_seed", documents, pod=pod)

    def adjust_machine(self, pod: VMPod, machine: Machine) -> Machine:
        """Apply every ``vmpod_adjust_machine`` implementation in turn."""
        result: Machine = self._chain("vmpod_adjust_machine", machine, pod=pod)
        return result

    def emit(self, event: PodEvent) -> None:
        """Tell every ``vmpod_pod_event`` implementation; their exceptions are logged, not raised."""
        for impl in reversed(self.pm.hook.vmpod_pod_event.get_hookimpls()):
            try:
                impl.function(**dict.fromkeys(impl.argnames, event))
            except Exception:  # an observer cannot break the runtime
                log.exception("plugin %s failed in vmpod_pod_event", impl.plugin_name)

    # ---- introspection ------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution, version and the backends it provides."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            impl = getattr(plugin, "vmpod_backends", None)
            backends: tuple[str, ...] = ()
            if impl is not None:
                backends = tuple(sorted(spec.name for spec in impl() or ()))
            dist, version = self._distributions.get(name, ("vmpod", _own_version()))
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            infos.append(PluginInfo(name=name, distribution=dist, version=version, backends=backends,
                                    builtin=name in self._builtins, hooks=hooks))
        return sorted(infos, key=lambda info: (not info.builtin, info.name))


def _own_version() -> str:
    try:
        return metadata.version("vmpod")
    except metadata.PackageNotFoundError:
        return "unknown"


def get_plugin_manager(*, load_entrypoints: bool = True, builtins: Sequence[str] = BUILTIN_PLUGINS,
                       disabled: Iterable[str] | None = None) -> PluginManager:
    """A new plugin manager with the hookspecs, the built-in plugins and (optionally) entry points.

    :param load_entrypoints: load third-party plugins from the ``vmpod`` entry-point group.
    :param builtins: dotted module names of built-in plugins, registered first.
    :param disabled: entry-point names not to load (default: ``VMPOD_DISABLE_PLUGINS``).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm)
    for module_name in builtins:
        manager.register(importlib.import_module(module_name), name=module_name)
        manager._builtins.add(module_name)
    if load_entrypoints:
        if disabled is None:
            disabled = [n.strip() for n in os.environ.get("VMPOD_DISABLE_PLUGINS", "").split(",") if n.strip()]
        manager.load_entrypoints(disabled)
    pm.check_pending()
    if os.environ.get("VMPOD_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda message: log.warning("%s", message.rstrip()))
        pm.enable_tracing()
    return manager
