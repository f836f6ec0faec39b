"""The out-of-tree example backend, installed as a third party would, passes its own conformance test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

EXAMPLE = REPO / "examples" / "vmpod-example-backend"


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv python, project copy): a copy of the example, pip-installed (editable) into a new venv."""
    root = tmp_path_factory.mktemp("example")
    project = root / "vmpod-example-backend"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", ".hypothesis"))
    venv = root / "venv"
    made = run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # pip itself comes from the system site-packages; it installs into the venv (its sys.prefix)
    pip = run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", project, cwd=root)
    assert pip.returncode == 0, (
        f"{pip.stdout}\n{pip.stderr}\n(an editable install without build isolation needs `wheel` or "
        "setuptools>=70.1 in the test environment)")
    return python, project


def test_example_passes_its_conformance_test(installed: tuple[Path, Path]) -> None:
    python, project = installed
    result = run(python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_vmpod_sees_the_example_only_where_it_is_installed(installed: tuple[Path, Path]) -> None:
    python, project = installed
    inside = run(python, "-m", "vmpod", "plugins", "-o", "json", cwd=project)
    assert inside.returncode == 0, inside.stderr
    data = json.loads(inside.stdout)
    plugin = next(p for p in data["plugins"] if p["name"] == "sleep")
    assert (plugin["distribution"], plugin["version"], plugin["backends"]) == ("vmpod-example-backend", "0.1.0",
                                                                               ["sleep"])
    backend = next(b for b in data["backends"] if b["name"] == "sleep")
    assert backend["capabilities"]["survives_restart"] is True
    outside = run(sys.executable, "-m", "vmpod", "plugins", "-o", "json", cwd=project)
    assert "sleep" not in {p["name"] for p in json.loads(outside.stdout)["plugins"]}
