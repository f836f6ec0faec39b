"""A pytest plugin for testing vmpod and its plugins (loaded automatically: ``pytest11`` entry point).

Fixtures:

``plugin_manager``
    a fresh :class:`~vmpod.plugins.PluginManager` with vmpod's built-in plugins only; mark the
    test ``@pytest.mark.vmpod_entrypoints`` to also load every installed ``vmpod`` entry point.
``state_dir``
    an empty vmpod state directory (a :class:`~pathlib.Path` under ``tmp_path``).
``fake_backend``
    the ``fake`` backend (distribution ``vmpod-fake``) opened on ``state_dir``, loaded through
    its entry point exactly as vmpod loads it; closed after the test.

A backend package's whole conformance test is one line, see :mod:`vmpod.testing.conformance`::

    test_conformance = make_conformance_test(MyBackend, max_examples=20)

This module imports nothing heavy: it is loaded in every pytest run of an environment where vmpod
is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from vmpod._markers import PROJECT
from vmpod.backend import Backend, BackendConfig
from vmpod.plugins import PluginManager, get_plugin_manager

__all__ = ["fake_backend", "plugin_manager", "state_dir"]

#: The entry-point name (and backend name) of the fake backend.
FAKE = "fake"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``vmpod_entrypoints`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers", "vmpod_entrypoints: the plugin_manager fixture also loads the installed vmpod entry points"
    )


@pytest.fixture
def plugin_manager(request: pytest.FixtureRequest) -> PluginManager:
    """A fresh plugin manager: built-ins only, plus entry points when the test is marked ``vmpod_entrypoints``."""
    return get_plugin_manager(load_entrypoints=request.node.get_closest_marker("vmpod_entrypoints") is not None)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty vmpod state directory."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def fake_backend(state_dir: Path) -> Iterator[Backend]:
    """The ``fake`` backend on ``state_dir``, loaded through its ``vmpod`` entry point; closed afterwards."""
    entry_points = metadata.entry_points(group=PROJECT, name=FAKE)
    if not entry_points:
        pytest.fail("the fake backend is not installed: pip install vmpod-fake (plugins/vmpod-fake)", pytrace=False)
    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(next(iter(entry_points)).load(), name=FAKE)
    backend = manager.create_backend(FAKE, BackendConfig(state_dir=str(state_dir)))
    yield backend
    backend.close()
