"""The plugin manager: built-ins, entry points, conflicts, chaining, events, knobs; and self-policing tests."""

from __future__ import annotations

import ast
import logging
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from vmpod_fake import FakeBackend

import vmpod
from vmpod import docgen_hooks
from vmpod.backend import Backend, BackendConfig
from vmpod.errors import NotFoundError, PluginConflictError
from vmpod.hookspecs import (
    BackendSpec,
    ImageSourceSpec,
    PodEvent,
    VolumeAttachment,
    VolumeContext,
    VolumeHandlerSpec,
)
from vmpod.machine import Machine
from vmpod.manifest import load_manifest_files
from vmpod.model import EmptyDirVolume, HostPathVolume, VMPod
from vmpod.plugins import BUILTIN_PLUGINS, PluginManager, get_plugin_manager
from vmpod.testing.conformance import default_machine

from .conftest import REPO, VIRTLET_EXAMPLES

HOOKS_DOC = REPO / "docs" / "reference" / "hooks.md"


# --------------------------------------------------------------------------- helpers


MakeDistribution = Callable[[str, str, dict[str, str]], dict[str, str]]


@pytest.fixture
def make_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeDistribution]:
    """Install a throw-away distribution on ``sys.path``: ``make(dist, version, {entry: code})``.

    Each entry point name maps to the source of its module; returns the module names.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist: str, version: str, plugins: dict[str, str]) -> dict[str, str]:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        modules = {}
        lines = ["[vmpod]"]
        for entry, code in plugins.items():
            module = f"vmpod_test_plugin_{uuid.uuid4().hex[:12]}"
            (site / f"{module}.py").write_text(textwrap.dedent(code))
            lines.append(f"{entry} = {module}")
            modules[entry] = module
            created.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return modules

    yield make
    for module in created:
        sys.modules.pop(module, None)


BACKEND_PLUGIN = """
    import vmpod
    from vmpod.hookspecs import BackendSpec

    class Backend:
        name = "{name}"
        def __init__(self, config):
            self.config = config

    @vmpod.hookimpl
    def vmpod_backends():
        yield BackendSpec(name="{name}", factory=Backend, description="test backend")
"""


def builtin_module(monkeypatch: pytest.MonkeyPatch, name: str, **functions: object) -> str:
    """A module ``name`` in ``sys.modules`` holding ``functions`` (to register as a built-in plugin)."""
    module = types.ModuleType(name)
    for key, value in functions.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return name


def pod() -> VMPod:
    return load_manifest_files([VIRTLET_EXAMPLES / "cirros-vm.yaml"]).pods[0]


class Recorder:
    """A plugin appending its tag to what it adjusts, so the order of a chain is visible."""

    def __init__(self, tag: str, keep: bool = False) -> None:
        self.tag = tag
        self.keep = keep

    @vmpod.hookimpl
    def vmpod_adjust_seed(self, documents: tuple[str, ...]) -> tuple[str, ...] | None:
        return None if self.keep else (*documents, self.tag)

    @vmpod.hookimpl
    def vmpod_adjust_machine(self, pod: VMPod, machine: Machine) -> Machine | None:
        if self.keep:
            return None
        return attrs.evolve(machine, labels={**machine.labels, "chain": machine.labels.get("chain", "") + self.tag})


# --------------------------------------------------------------------------- loading


def test_builtins_are_registered_first_and_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    first = builtin_module(monkeypatch, "vmpod_test_builtin_one")
    second = builtin_module(monkeypatch, "vmpod_test_builtin_two")
    manager = get_plugin_manager(builtins=(first, second))
    names = [name for name, _ in manager.pm.list_name_plugin()]
    assert names[:2] == [first, second]
    infos = manager.plugin_infos()
    assert [(i.name, i.builtin, i.distribution) for i in infos[:2]] == [(first, True, "vmpod"),
                                                                       (second, True, "vmpod")]
    assert not any(i.builtin for i in infos[2:])


def test_default_builtins_are_vmpods_own_modules() -> None:
    infos = {info.name: info for info in get_plugin_manager(load_entrypoints=False).plugin_infos()}
    assert set(infos) == set(BUILTIN_PLUGINS)
    assert all(info.builtin and info.distribution == "vmpod" for info in infos.values())


def test_entry_points_are_loaded_with_their_distribution(make_distribution: MakeDistribution) -> None:
    make_distribution("acme-vmpod", "1.2.3", {"acme": BACKEND_PLUGIN.format(name="acme")})
    manager = get_plugin_manager(disabled=())
    assert {"acme", "fake"} <= set(manager.backend_specs())
    names = [name for name, _ in manager.pm.list_name_plugin()]
    assert names.index("acme") > max(names.index(b) for b in BUILTIN_PLUGINS)
    info = next(i for i in manager.plugin_infos() if i.name == "acme")
    assert (info.distribution, info.version, info.backends, info.builtin, info.hooks) == (
        "acme-vmpod", "1.2.3", ("acme",), False, ("vmpod_backends",))
    fake = next(i for i in manager.plugin_infos() if i.name == "fake")
    assert (fake.distribution, fake.backends) == ("vmpod-fake", ("fake",))


def test_plugin_that_fails_to_import_is_skipped_with_a_warning(
        make_distribution: MakeDistribution, caplog: pytest.LogCaptureFixture) -> None:
    make_distribution("broken-vmpod", "0.1", {
        "broken": "raise ImportError('libfoo.so.1: cannot open shared object file')\n",
        "good": BACKEND_PLUGIN.format(name="good"),
    })
    with caplog.at_level(logging.WARNING, logger="vmpod.plugins"):
        manager = get_plugin_manager(disabled=())
    assert "good" in manager.backend_specs()
    assert manager.pm.get_plugin("broken") is None
    [record] = [r for r in caplog.records if "broken" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "failed to load and is skipped: libfoo.so.1" in record.getMessage()


def test_plugin_with_invalid_hook_arguments_is_skipped_with_a_warning(
        make_distribution: MakeDistribution, caplog: pytest.LogCaptureFixture) -> None:
    make_distribution("sloppy-vmpod", "0.1", {"sloppy": """
        import vmpod

        @vmpod.hookimpl
        def vmpod_pod_event(evnt):
            pass
    """})
    with caplog.at_level(logging.WARNING, logger="vmpod.plugins"):
        manager = get_plugin_manager(disabled=())
    assert manager.pm.get_plugin("sloppy") is None
    assert any("sloppy" in r.getMessage() and "is invalid and is skipped" in r.getMessage() for r in caplog.records)


def test_disable_plugins_environment_variable(make_distribution: MakeDistribution,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution("acme-vmpod", "1.0", {"acme": BACKEND_PLUGIN.format(name="acme")})
    monkeypatch.setenv("VMPOD_DISABLE_PLUGINS", " fake , acme ")
    assert not {"acme", "fake"} & set(get_plugin_manager().backend_specs())
    monkeypatch.setenv("VMPOD_DISABLE_PLUGINS", "acme")
    assert set(get_plugin_manager().backend_specs()) >= {"fake"}
    assert "acme" not in get_plugin_manager().backend_specs()


def test_trace_plugins_environment_variable(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("VMPOD_TRACE_PLUGINS", "1")
    manager = get_plugin_manager(disabled=())
    with caplog.at_level(logging.WARNING, logger="vmpod.plugins"):
        manager.backend_specs()
    assert any("vmpod_backends" in r.getMessage() for r in caplog.records)


def test_plugin_manager_fixture_has_no_entry_points(plugin_manager: PluginManager) -> None:
    assert "fake" not in plugin_manager.backend_specs()


@pytest.mark.vmpod_entrypoints
def test_plugin_manager_fixture_loads_entry_points_when_marked(plugin_manager: PluginManager) -> None:
    assert "fake" in plugin_manager.backend_specs()


# --------------------------------------------------------------------------- registration hooks


class Backends:
    def __init__(self, *names: str) -> None:
        self.names = names

    @vmpod.hookimpl
    def vmpod_backends(self) -> Iterator[BackendSpec]:
        for name in self.names:
            yield BackendSpec(name=name, factory=lambda config: config)  # type: ignore[arg-type,return-value]


def test_hook_vmpod_backends(plugin_manager: PluginManager, tmp_path: Path) -> None:
    class Plugin:
        @vmpod.hookimpl
        def vmpod_backends(self) -> Iterator[BackendSpec]:
            yield BackendSpec(name="sim", factory=FakeBackend, description="a simulator", priority=3)

    plugin_manager.register(Plugin(), name="sim-plugin")
    spec = plugin_manager.backend_spec("sim")
    assert (spec.description, spec.priority) == ("a simulator", 3)
    backend = plugin_manager.create_backend("sim", BackendConfig(state_dir=str(tmp_path)))
    assert isinstance(backend, Backend)
    assert backend.list() == ()


def test_duplicate_backend_names_raise(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Backends("dup", "one"), name="first")
    plugin_manager.register(Backends("dup"), name="second")
    with pytest.raises(PluginConflictError, match="two register the name 'dup'"):
        plugin_manager.backend_specs()


@pytest.mark.parametrize("name", ["Libvirt", "my_backend", "", "-qemu", "qemu-", "a" * 64, "qemu kvm"])
def test_invalid_backend_names_raise(plugin_manager: PluginManager, name: str) -> None:
    plugin_manager.register(Backends(name), name="bad")
    with pytest.raises(PluginConflictError, match="invalid backend name"):
        plugin_manager.backend_specs()


def test_unknown_backend_lists_the_available_ones(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Backends("beta", "alpha"), name="two")
    with pytest.raises(NotFoundError, match=r"unknown backend 'gamma'; available: alpha, beta"):
        plugin_manager.backend_spec("gamma")


class Handler:
    def attach(self, context: VolumeContext) -> VolumeAttachment:
        return VolumeAttachment()

    def detach(self, context: VolumeContext) -> None:
        return None


def handlers_plugin(*specs: tuple[str, type]) -> Any:
    class Plugin:
        @vmpod.hookimpl
        def vmpod_volume_handlers(self) -> Iterator[VolumeHandlerSpec]:
            for name, volume_type in specs:
                yield VolumeHandlerSpec(name=name, volume_type=volume_type, handler=Handler())

    return Plugin()


def test_hook_vmpod_volume_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """By volume type; a plugin's handler replaces a built-in one; two plugins' handlers conflict."""
    builtin = handlers_plugin(("empty-dir", EmptyDirVolume), ("host-path", HostPathVolume))
    name = builtin_module(monkeypatch, "vmpod_test_builtin_volumes",
                          vmpod_volume_handlers=builtin.vmpod_volume_handlers)
    manager = get_plugin_manager(load_entrypoints=False, builtins=(name,))
    assert {t: s.name for t, s in manager.volume_handlers().items()} == {EmptyDirVolume: "empty-dir",
                                                                          HostPathVolume: "host-path"}
    manager.register(handlers_plugin(("tmpfs-empty-dir", EmptyDirVolume)), name="tmpfs")
    assert {t: s.name for t, s in manager.volume_handlers().items()} == {EmptyDirVolume: "tmpfs-empty-dir",
                                                                          HostPathVolume: "host-path"}
    manager.register(handlers_plugin(("other-empty-dir", EmptyDirVolume)), name="other")
    with pytest.raises(PluginConflictError, match="conflicting volume handlers for EmptyDirVolume"):
        manager.volume_handlers()


def test_hook_vmpod_image_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """By URL scheme; a plugin's source replaces a built-in one for its schemes; two plugins' conflict."""
    def fetch(url: str, dest: Path) -> None:
        dest.write_text(url)

    def sources(name: str, *schemes: str) -> Any:
        class Plugin:
            @vmpod.hookimpl
            def vmpod_image_sources(self) -> Iterator[ImageSourceSpec]:
                yield ImageSourceSpec(name=name, schemes=schemes, fetch=fetch)

        return Plugin()

    builtin = builtin_module(monkeypatch, "vmpod_test_builtin_images",
                             vmpod_image_sources=sources("web", "http", "https").vmpod_image_sources)
    manager = get_plugin_manager(load_entrypoints=False, builtins=(builtin,))
    manager.register(sources("fast-https", "https"), name="fast")
    assert {scheme: spec.name for scheme, spec in manager.image_sources().items()} == {
        "http": "web", "https": "fast-https"}
    manager.register(sources("s3", "s3", "https"), name="s3")
    with pytest.raises(PluginConflictError, match="conflicting image sources for 'https'"):
        manager.image_sources()


# --------------------------------------------------------------------------- adjustment hooks


def test_hook_vmpod_adjust_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chained in registration order (built-ins first); None keeps the value."""
    builtin = builtin_module(monkeypatch, "vmpod_test_builtin_seed",
                             vmpod_adjust_seed=Recorder("builtin").vmpod_adjust_seed)
    manager = get_plugin_manager(load_entrypoints=False, builtins=(builtin,))
    manager.register(Recorder("a"), name="a")
    manager.register(Recorder("keep", keep=True), name="keep")
    manager.register(Recorder("b"), name="b")
    assert manager.adjust_seed(pod(), ("vmpod",)) == ("vmpod", "builtin", "a", "b")


def test_hook_vmpod_adjust_machine(plugin_manager: PluginManager, tmp_path: Path) -> None:
    machine = default_machine("vm", tmp_path / "vm")
    assert plugin_manager.adjust_machine(pod(), machine) == machine  # nothing registered: unchanged
    plugin_manager.register(Recorder("1"), name="one")
    plugin_manager.register(Recorder("2"), name="two")
    adjusted = plugin_manager.adjust_machine(pod(), machine)
    assert adjusted.labels["chain"] == "12"
    assert attrs.evolve(adjusted, labels=machine.labels) == machine


def test_tryfirst_and_trylast_move_an_implementation_in_the_chain(plugin_manager: PluginManager) -> None:
    class Last(Recorder):
        @vmpod.hookimpl(trylast=True)
        def vmpod_adjust_seed(self, documents: tuple[str, ...]) -> tuple[str, ...] | None:
            return (*documents, self.tag)

    class First(Recorder):
        @vmpod.hookimpl(tryfirst=True)
        def vmpod_adjust_seed(self, documents: tuple[str, ...]) -> tuple[str, ...] | None:
            return (*documents, self.tag)

    plugin_manager.register(Last("last1"), name="last1")
    plugin_manager.register(Recorder("a"), name="a")
    plugin_manager.register(First("first1"), name="first1")
    plugin_manager.register(Last("last2"), name="last2")
    plugin_manager.register(First("first2"), name="first2")
    plugin_manager.register(Recorder("b"), name="b")
    assert plugin_manager.adjust_seed(pod(), ()) == ("first1", "first2", "a", "b", "last1", "last2")


# --------------------------------------------------------------------------- events


def test_hook_vmpod_pod_event(plugin_manager: PluginManager, caplog: pytest.LogCaptureFixture) -> None:
    """Every observer sees the event; one that raises is logged, not raised, and does not stop the others."""
    seen: list[tuple[str, PodEvent]] = []

    class Observer:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @vmpod.hookimpl
        def vmpod_pod_event(self, event: PodEvent) -> None:
            seen.append((self.tag, event))

    class Broken:
        @vmpod.hookimpl
        def vmpod_pod_event(self, event: PodEvent) -> None:
            raise RuntimeError("observer bug")

    plugin_manager.register(Observer("one"), name="one")
    plugin_manager.register(Broken(), name="broken")
    plugin_manager.register(Observer("two"), name="two")
    event = PodEvent(namespace="default", pod="cirros-vm", uid="u1", reason="Started", message="started",
                     timestamp=1)
    with caplog.at_level(logging.ERROR, logger="vmpod.plugins"):
        plugin_manager.emit(event)
    assert sorted(tag for tag, _ in seen) == ["one", "two"]
    assert all(got is event for _, got in seen)
    [record] = caplog.records
    assert record.getMessage() == "plugin broken failed in vmpod_pod_event"
    assert record.exc_info is not None
    assert "observer bug" in str(record.exc_info[1])


# --------------------------------------------------------------------------- self-policing


def hook_names() -> dict[str, list[str]]:
    """Every hookspec (from a real manager) with its argument names."""
    hook = get_plugin_manager(load_entrypoints=False).pm.hook
    return {name: list(getattr(hook, name).spec.argnames) for name in dir(hook) if name.startswith("vmpod_")}


def test_the_hook_list_is_the_hookspecs_module() -> None:
    assert sorted(hook_names()) == sorted(f.__name__ for f in docgen_hooks.hook_functions())
    assert len(hook_names()) == 6


def test_every_hook_has_a_test() -> None:
    """Every hookspec has a ``test_hook_<name>`` test function somewhere in tests/ (datasette's rule)."""
    tests = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tests |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    missing = [name for name in hook_names() if f"test_hook_{name}" not in tests]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    """docs/reference/hooks.md has a heading ``### name(arg1, arg2)`` for every hookspec."""
    page = HOOKS_DOC.read_text(encoding="utf-8")
    headings = {line.removeprefix("### ") for line in page.splitlines() if line.startswith("### vmpod_")}
    expected = {f"{name}({', '.join(args)})" for name, args in hook_names().items()}
    assert expected - headings == set(), "undocumented (or wrong signature)"
    assert headings - expected == set(), "documented but not a hook (or wrong signature)"


def test_hooks_reference_is_generated_from_the_docstrings() -> None:
    assert HOOKS_DOC.read_text(encoding="utf-8") == docgen_hooks.render(), (
        "docs/reference/hooks.md is stale: python -m vmpod.docgen_hooks --write docs/reference/hooks.md")


def test_docgen_check_detects_a_stale_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "hooks.md"
    assert docgen_hooks.main(["--write", str(page)]) == 0
    assert docgen_hooks.main(["--check", str(page)]) == 0
    page.write_text(page.read_text().replace("vmpod_pod_event(event)", "vmpod_pod_event(evt)"))
    assert docgen_hooks.main(["--check", str(page)]) == 1
    assert "is stale" in capsys.readouterr().err


def test_rst_to_markdown() -> None:
    text = docgen_hooks.rst_to_markdown("""Do it.

    See :class:`~vmpod.errors.NotFoundError` and ``x``.

    :param a: first
        continued.
    :raises ValueError: when bad.
    :return: the thing.

    Example::

        f(1)

    .. versionadded:: 0.2
    """)
    assert text == textwrap.dedent("""\
        Do it.

        See `NotFoundError` and `x`.

        **Parameters:**

        - `a`: first continued.

        **Raises** `ValueError`: when bad.

        **Returns:** the thing.

        Example:

        ```python
        f(1)
        ```

        *Added in version 0.2.*
        """)
