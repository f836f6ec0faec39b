"""``vmpod plugins``, driven through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from vmpod.plugins import BUILTIN_PLUGINS


def vmpod(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = shutil.which("vmpod")
    assert script, "the vmpod console script is not installed (pip install -e .)"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def extra_plugins(tmp_path: Path) -> dict[str, str]:
    """A PYTHONPATH with a distribution holding a plugin that cannot import and an unavailable backend."""
    site = tmp_path / "site"
    info = site / "acme_vmpod-2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vmpod\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[vmpod]\nbroken = acme_broken\nacme = acme_backend\n")
    (site / "acme_broken.py").write_text("import libvirt_that_is_not_installed\n")
    (site / "acme_backend.py").write_text(textwrap.dedent("""
        import vmpod
        from vmpod.errors import BackendUnavailable
        from vmpod.hookspecs import BackendSpec

        def open_backend(config):
            raise BackendUnavailable("cannot connect to acmed: no such socket")

        @vmpod.hookimpl
        def vmpod_backends():
            yield BackendSpec(name="acme", factory=open_backend, description="ACME hypervisor", priority=5)
    """))
    return {"PYTHONPATH": str(site)}


def test_table_lists_plugins_and_backend_capabilities() -> None:
    result = vmpod("plugins")
    assert result.returncode == 0, result.stderr
    plugins, backends = result.stdout.split("\n\n")
    rows = [line.split() for line in plugins.splitlines()]
    assert rows[0] == ["PLUGIN", "DISTRIBUTION", "VERSION", "BUILTIN", "BACKENDS", "HOOKS"]
    assert [row[0] for row in rows[1:1 + len(BUILTIN_PLUGINS)]] == sorted(BUILTIN_PLUGINS)
    assert ["fake", "vmpod-fake", "0.1.0", "no", "fake", "vmpod_backends"] in rows
    header, *lines = backends.splitlines()
    assert header.split()[:4] == ["BACKEND", "PLUGIN", "PRIORITY", "ACCEL"]
    fake = next(line for line in lines if line.startswith("fake "))
    assert fake.split()[:10] == ["fake", "fake", "-100", "none", "scsi(26),virtio(21)", "9p,virtiofs", "user,tap",
                                 "no", "yes", "yes"]
    assert fake.endswith("simulated hypervisor for tests: no guest runs, machines live in a JSON file")


def test_json_output() -> None:
    result = vmpod("plugins", "-o", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert [p["builtin"] for p in data["plugins"]][:len(BUILTIN_PLUGINS)] == [True] * len(BUILTIN_PLUGINS)
    assert plugins["fake"] == {"name": "fake", "distribution": "vmpod-fake", "version": "0.1.0", "builtin": False,
                               "backends": ["fake"], "hooks": ["vmpod_backends"]}
    fake = next(b for b in data["backends"] if b["name"] == "fake")
    assert fake["plugin"] == "fake"
    assert fake["priority"] == -100
    assert fake["error"] is None
    assert fake["capabilities"] == {
        "accelerator": "none", "disk_buses": ["scsi", "virtio"], "max_disks": {"scsi": 26, "virtio": 21},
        "filesystems": ["9p", "virtiofs"], "network_modes": ["user", "tap"], "console": False,
        "graceful_stop": True, "survives_restart": True, "notes": fake["capabilities"]["notes"]}
    assert fake["capabilities"]["notes"].startswith("simulated: no guest runs")


def test_disabled_plugins_are_not_listed() -> None:
    result = vmpod("plugins", "-o", "json", env={"VMPOD_DISABLE_PLUGINS": "fake"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "fake" not in {p["name"] for p in data["plugins"]}
    assert "fake" not in {b["name"] for b in data["backends"]}


def test_broken_plugin_warns_and_unavailable_backend_is_shown(extra_plugins: dict[str, str]) -> None:
    result = vmpod("plugins", env=extra_plugins)
    assert result.returncode == 0, result.stderr
    assert "vmpod: plugin broken (acme_broken) failed to load and is skipped: No module named " \
           "'libvirt_that_is_not_installed'" in result.stderr
    assert "Traceback" not in result.stderr
    assert any(line.split()[:3] == ["acme", "acme-vmpod", "2.0"] for line in result.stdout.splitlines())
    acme = next(line for line in result.stdout.splitlines() if line.startswith("acme ") and "unavailable" in line)
    assert acme.split()[:3] == ["acme", "acme", "5"]
    assert acme.endswith("unavailable: BackendUnavailable: cannot connect to acmed: no such socket")
    data = json.loads(vmpod("plugins", "-o", "json", env=extra_plugins).stdout)
    backend = next(b for b in data["backends"] if b["name"] == "acme")
    assert backend["capabilities"] is None
    assert backend["error"] == "BackendUnavailable: cannot connect to acmed: no such socket"


def test_listed_in_help() -> None:
    result = vmpod("--help")
    assert "plugins" in result.stdout
    assert "list plugins, backends and their capabilities" in result.stdout
