"""The README's commands and ``examples/`` run as written, with the real ``vmpod`` command.

* every manifest in ``examples/*.yaml`` validates, renders, and gives every pod a seed (printed,
  NoCloud and ConfigDrive ISOs read back with ``isoinfo``);
* the README's main job, ``bash scripts/demo.sh``, boots the tiny guest as a VM pod on the
  default backend (qemu), shows it Running with its seed in the console log, deletes it and
  leaves no process behind: the one boot of this file;
* every command of the README's "A session with the CLI" block runs as written: the manifest and
  seed commands here, in a scratch directory next to ``examples/``; the pod commands (tiny-guest
  image, run, get, logs, describe, delete, plugins) are exactly the ones ``scripts/demo.sh``
  shows and runs, which the demo test checks line by line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.support.isoread import read_iso
from tests.support.qemu import pids_mentioning

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The subcommands of the README session that need no pod (run here); the rest run in the demo.
OFFLINE = ("validate", "render", "seed")


def run(argv: list[str] | str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("VMPOD_BACKEND", "VMPOD_FAULT_POINT",
                                                              "VMPOD_STATE_DIR")}
    return subprocess.run(argv, shell=isinstance(argv, str), executable="/bin/bash" if isinstance(argv, str) else None,
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd,
                          env={**base, **(env or {})})


def vmpod(*args: str | Path) -> subprocess.CompletedProcess[str]:
    script = shutil.which("vmpod")
    assert script, "the vmpod console script is not installed (pip install -e .)"
    return run([script, *map(str, args)])


def readme_session() -> list[str]:
    """The commands of the README's ``## A session with the CLI`` block, comments removed."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A session with the CLI", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    commands = [re.sub(r"\s+#\s.*$", "", line.removeprefix("$ ")).strip()
                for line in block.splitlines() if line.startswith("$ ")]
    assert len(commands) >= 10, block
    return commands


def subcommand(command: str) -> str:
    words = command.split()
    return words[1] if words[0] == "vmpod" and len(words) > 1 else words[0]


def pod_names(manifest: Path) -> list[str]:
    result = vmpod("render", manifest, "-o", "json")
    assert result.returncode == 0, result.stderr
    return [pod["name"] for pod in json.loads(result.stdout)]


@pytest.mark.parametrize("manifest", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_and_renders(manifest: Path) -> None:
    names = pod_names(manifest)
    assert names
    validated = vmpod("validate", manifest)
    assert validated.returncode == 0, validated.stderr
    plural = "pod" if len(names) == 1 else "pods"
    assert validated.stdout.strip() == f"{manifest}: ok, {len(names)} VM {plural}: {', '.join(names)}"
    rendered = vmpod("render", manifest, "-o", "yaml")
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d is not None]
    assert [d["name"] for d in documents] == names


@pytest.mark.parametrize("manifest", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_seeds(manifest: Path, tmp_path: Path) -> None:
    for name in pod_names(manifest):
        printed = vmpod("seed", manifest, "--pod", name, "--print")
        assert printed.returncode == 0, printed.stderr
        assert "==> meta-data <==" in printed.stdout
        assert "==> user-data <==" in printed.stdout
        assert f'"local-hostname":"{name}"' in printed.stdout, printed.stdout
        nocloud, configdrive = tmp_path / f"{name}.nocloud.iso", tmp_path / f"{name}.configdrive.iso"
        for iso, kind in ((nocloud, "nocloud"), (configdrive, "configdrive")):
            written = vmpod("seed", manifest, "--pod", name, "-o", iso, "--type", kind)
            assert written.returncode == 0, written.stderr
        files = read_iso(nocloud)
        assert files.label == "cidata"
        assert json.loads(files.files["meta-data"])["local-hostname"] == name
        files = read_iso(configdrive)
        assert files.label == "config-2"
        assert json.loads(files.files["openstack/latest/meta_data.json"])["hostname"] == name


def test_readme_manifest_and_seed_commands_run_as_written(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    offline = [c for c in readme_session() if subcommand(c) in OFFLINE]
    assert [subcommand(c) for c in offline] == ["validate", "render", "seed", "seed"], offline
    outputs = []
    for command in offline:
        result = run(command, cwd=tmp_path, env={"VMPOD_STATE_DIR": str(tmp_path / "state")})
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
        outputs.append(result.stdout)
    assert outputs[0].startswith("examples/statefulset.yaml: ok, 3 VM pods: web-0, web-1, web-2")
    assert "name: web-2" in outputs[1]
    assert '"instance-id":"minimal-vm.default"' in outputs[2]
    iso = read_iso(tmp_path / "seed.iso")
    assert iso.label == "config-2"
    assert json.loads(iso.files["openstack/latest/meta_data.json"])["hostname"] == "minimal-vm"


@pytest.mark.guest
def test_demo_runs_the_main_job_and_the_readme_pod_commands() -> None:
    """``bash scripts/demo.sh`` as the README says (the guest image cache is the default one: no rebuild)."""
    result = run(["bash", str(REPO / "scripts" / "demo.sh")], timeout=900)
    output = ANSI.sub("", result.stdout)
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{output[-5000:]}\n{result.stderr[-5000:]}"
    lines = output.splitlines()
    assert lines[-1] == "demo: OK"
    state = next(line.split(": ", 1)[1] for line in lines if line.startswith("== state directory: "))
    assert pids_mentioning(state) == [], "a process of the demo's state directory is still running"
    assert not Path(state).exists()

    # The pod commands of the README, each shown and run by the demo (set -e: each exited 0).
    steps = [line.removeprefix("$ ") for line in lines if line.startswith("$ ")]
    pod_commands = [c for c in readme_session() if subcommand(c) not in OFFLINE]
    assert [subcommand(c) for c in pod_commands] == ["sed", "run", "get", "logs", "echo", "describe", "delete",
                                                          "plugins"]
    assert [c for c in pod_commands if c not in steps] == [], steps

    def after(step: str) -> str:
        """The output of a demo step: from its ``$ `` line to the next step or ``==`` comment."""
        return re.split(r"\n(?:\$|==) ", output.split(f"\n$ {step}\n", 1)[1], maxsplit=1)[0]

    assert "Default backend for new pods: qemu (highest-priority installed backend (priority 10))" in \
        after("vmpod plugins")
    rows = [line.split() for line in after("vmpod get -o wide").splitlines()]
    assert rows[0][:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], rows
    assert [row[:3] for row in rows[1:] if row] == [["tiny-vm", "1/1", "Running"]], rows
    log = after("vmpod logs tiny-vm")
    assert "VMPOD-SEED instance-id=tiny-vm.default hostname=tiny-vm" in log
    assert "VMPOD-READY" in log
    attached = after("echo uname -s | vmpod attach tiny-vm --linger 3")
    assert "Linux" in attached.split(), attached  # the guest's shell ran the typed command
    assert "<h1>tiny-vm</h1>" in output  # the guest's web page through vmpod port-forward
    described = after("vmpod describe tiny-vm")
    assert "tiny-vm" in described, described
    assert "Running" in described, described
    assert "No resources found in default namespace." in result.stderr  # the last `vmpod get`
