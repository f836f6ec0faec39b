"""Shared pytest configuration: hypothesis profiles, paths, golden files and the fixtures many modules use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.cni import CNINetwork, make_network
from tests.support.runtime_pods import make_image
from vmpod.plugins import get_plugin_manager
from vmpod.runtime import Runtime

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fast", deadline=None, max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
VIRTLET_EXAMPLES = SHARED / "virtlet-examples"


GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden files under tests/golden/ instead of comparing (never in CI)",
    )


class Golden:
    """Compares rendered text with ``tests/golden/<name>``; ``--update-golden`` rewrites it."""

    def __init__(self, update: bool) -> None:
        self.update = update

    def check(self, name: str, actual: str | bytes) -> None:
        path = GOLDEN_DIR / name
        data = actual.encode() if isinstance(actual, str) else actual
        if self.update:
            if os.environ.get("CI"):
                raise RuntimeError("--update-golden is refused in CI")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        if not path.exists():
            raise AssertionError(f"golden file {path} is missing: run pytest --update-golden and review it")
        expected = path.read_bytes()
        if isinstance(actual, str):
            assert actual == expected.decode(), f"output differs from golden file {path}"
        else:
            assert data == expected, f"output differs from golden file {path}"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """Golden-file comparison (see :class:`Golden`)."""
    return Golden(bool(request.config.getoption("--update-golden")))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small qcow2 disk image (no guest in it): enough for pods on the fake backend."""
    return make_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """A :class:`Runtime` on the fake backend with its state under ``tmp_path``."""
    with Runtime.open(tmp_path / "state", backend="fake", plugin_manager=get_plugin_manager()) as rt:
        yield rt


@pytest.fixture
def network(tmp_path: Path) -> Iterator[CNINetwork]:
    """A test-made CNI network (conflist, bridge, subnet) under ``tmp_path``, removed afterwards."""
    made = make_network(tmp_path)
    yield made
    made.cleanup()
