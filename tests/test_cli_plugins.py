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
    plugins, backends, default = result.stdout.split("\n\n")
    rows = [line.split() for line in plugins.splitlines()]
    assert rows[0] == ["PLUGIN", "DISTRIBUTION", "VERSION", "BUILTIN", "BACKENDS", "HOOKS"]
    assert [row[0] for row in rows[1:1 + len(BUILTIN_PLUGINS)]] == sorted(BUILTIN_PLUGINS)
    assert ["fake", "vmpod-fake", "0.1.0", "no", "fake", "vmpod_backends"] in rows
    header, *lines = backends.splitlines()
    assert header.split()[:5] == ["BACKEND", "PLUGIN", "PRIORITY", "DEFAULT", "ACCEL"]
    fake = next(line for line in lines if line.startswith("fake "))
    assert fake.split()[:11] == ["fake", "fake", "-100", "no", "none", "scsi(26),virtio(21)", "9p,virtiofs",
                                 "user,tap,cni", "yes", "yes", "yes"]
    assert default.startswith("Default backend for new pods: ")
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
    assert fake["default"] is False
    assert fake["error"] is None
    assert fake["capabilities"] == {
        "accelerator": "none", "disk_buses": ["scsi", "virtio"], "max_disks": {"scsi": 26, "virtio": 21},
        "filesystems": ["9p", "virtiofs"], "network_modes": ["user", "tap", "cni"], "console": True,
        "graceful_stop": True, "survives_restart": True, "port_forward": True, "vnc": False,
        "notes": fake["capabilities"]["notes"]}
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
    assert acme.split()[:4] == ["acme", "acme", "5", "no"]
    assert acme.endswith("unavailable: BackendUnavailable: cannot connect to acmed: no such socket")
    data = json.loads(vmpod("plugins", "-o", "json", env=extra_plugins).stdout)
    backend = next(b for b in data["backends"] if b["name"] == "acme")
    assert backend["capabilities"] is None
    assert backend["error"] == "BackendUnavailable: cannot connect to acmed: no such socket"


def test_listed_in_help() -> None:
    result = vmpod("--help")
    assert "plugins" in result.stdout
    assert "list plugins, backends and their capabilities" in result.stdout


def _default_column(stdout: str) -> dict[str, str]:
    """BACKEND -> DEFAULT cell of the backend table."""
    _, backends, _ = stdout.split("\n\n")
    header, *lines = backends.splitlines()
    assert header.split()[3] == "DEFAULT"
    return {line.split()[0]: line.split()[3] for line in lines}


def _last_line(stdout: str) -> str:
    return stdout.rstrip("\n").splitlines()[-1]


def test_default_backend_is_the_runtimes_choice() -> None:
    """With nothing requested: qemu (priority 10) beats libvirt (5); fake (-100) is never preferred."""
    from vmpod.plugins import get_plugin_manager  # noqa: PLC0415
    from vmpod.runtime import choose_backend  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k != "VMPOD_BACKEND"}
    script = shutil.which("vmpod")
    assert script
    result = subprocess.run([script, "plugins"], capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert _default_column(result.stdout) == {"fake": "no", "libvirt": "no", "qemu": "yes"}
    assert _last_line(result.stdout) == \
        "Default backend for new pods: qemu (highest-priority installed backend (priority 10))"
    saved = os.environ.pop("VMPOD_BACKEND", None)
    try:
        assert choose_backend(get_plugin_manager()) == ("qemu", "highest-priority installed backend (priority 10)")
    finally:
        if saved is not None:
            os.environ["VMPOD_BACKEND"] = saved
    data = json.loads(subprocess.run([script, "plugins", "-o", "json"], capture_output=True, text=True,
                                     timeout=120, check=True, env=env).stdout)
    assert data["default"] == {"backend": "qemu", "reason": "highest-priority installed backend (priority 10)"}
    assert {b["name"]: b["default"] for b in data["backends"]} == {"fake": False, "libvirt": False, "qemu": True}


def test_default_backend_follows_the_priorities_of_what_is_installed() -> None:
    without_qemu = vmpod("plugins", env={"VMPOD_DISABLE_PLUGINS": "qemu", "VMPOD_BACKEND": ""})
    assert without_qemu.returncode == 0, without_qemu.stderr
    assert _default_column(without_qemu.stdout) == {"fake": "no", "libvirt": "yes"}
    assert _last_line(without_qemu.stdout) == \
        "Default backend for new pods: libvirt (highest-priority installed backend (priority 5))"
    only_fake = vmpod("plugins", env={"VMPOD_DISABLE_PLUGINS": "qemu,libvirt", "VMPOD_BACKEND": ""})
    assert only_fake.returncode == 0, only_fake.stderr
    assert _default_column(only_fake.stdout) == {"fake": "yes"}
    assert _last_line(only_fake.stdout) == \
        "Default backend for new pods: fake (the only installed backend (it simulates VMs: no guest runs))"


def test_backend_option_and_environment_choose_the_default() -> None:
    option = vmpod("--backend", "libvirt", "plugins", env={"VMPOD_BACKEND": "fake"})
    assert option.returncode == 0, option.stderr
    assert _default_column(option.stdout) == {"fake": "no", "libvirt": "yes", "qemu": "no"}
    assert _last_line(option.stdout) == "Default backend for new pods: libvirt (chosen with --backend)"
    environment = vmpod("plugins", "-o", "json", env={"VMPOD_BACKEND": "fake"})
    assert environment.returncode == 0, environment.stderr
    data = json.loads(environment.stdout)
    assert data["default"] == {"backend": "fake", "reason": "from $VMPOD_BACKEND"}
    assert [b["name"] for b in data["backends"] if b["default"]] == ["fake"]


def test_unknown_requested_backend_is_an_error_but_still_lists(extra_plugins: dict[str, str]) -> None:
    unknown = vmpod("--backend", "nosuch", "plugins")
    assert unknown.returncode == 1
    assert "yes" not in _default_column(unknown.stdout).values()
    assert _last_line(unknown.stdout) == \
        "Default backend for new pods: none (unknown backend 'nosuch'; available: fake, libvirt, qemu)"
    # A chosen backend that is installed but cannot be opened is the default, with the warning.
    acme = vmpod("plugins", env={**extra_plugins, "VMPOD_BACKEND": "acme"})
    assert acme.returncode == 0, acme.stderr
    assert _default_column(acme.stdout)["acme"] == "yes"
    assert _last_line(acme.stdout) == ("Default backend for new pods: acme (from $VMPOD_BACKEND); but it is "
                                       "unavailable: BackendUnavailable: cannot connect to acmed: no such socket")
