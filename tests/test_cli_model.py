"""``vmpod validate`` and ``vmpod render``, run as a user runs them: the installed console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, VIRTLET_EXAMPLES
from vmpod import convert
from vmpod.manifest import load_manifest_files
from vmpod.model import VMPod

#: A line of ``vmpod validate`` on stderr: FILE: PATH: message
ERROR_LINE = re.compile(r"^(?P<file>[^:]+?): (?P<path>[A-Za-z0-9_.\[\]'/-]+): (?P<message>.+)$")

GOOD = """\
kind: Pod
metadata:
  name: good
  annotations: {kubernetes.io/target-runtime: virtlet.cloud, VirtletVCPUCount: "2"}
spec:
  containers: [{name: vm, image: virtlet.cloud/cirros}]
"""
BAD = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: bad}
spec:
  replicas: 2
  template:
    metadata:
      annotations:
        kubernetes.io/target-runtime: virtlet.cloud
        VirtletRootVolumeSize: lots
        VirtletDiskDriver: ide
    spec:
      containers: [{name: vm, image: virtlet.cloud/cirros}, {name: sidecar, image: busybox}]
"""


def _script() -> str:
    beside = Path(sys.executable).parent / "vmpod"
    script = str(beside) if beside.exists() else shutil.which("vmpod")
    assert script, "the vmpod console script is not installed (pip install -e '.[test]')"
    return script


def vmpod(*args: str | Path, stdin: bytes | None = None, encoding: str = "utf-8") -> subprocess.CompletedProcess[str]:
    run = subprocess.run([_script(), *map(str, args)], input=stdin, capture_output=True, timeout=120, check=False,
                         env={**os.environ, "PYTHONIOENCODING": encoding})
    result = subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(), run.stderr.decode())
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"good": tmp_path / "good.yaml", "bad": tmp_path / "bad.yaml"}
    paths["good"].write_text(GOOD)
    paths["bad"].write_text(BAD)
    return paths


def test_validate_every_virtlet_example() -> None:
    examples = sorted(VIRTLET_EXAMPLES.glob("*.yaml"))
    result = vmpod("validate", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: ok, {len(load_manifest_files([path]).pods)} VM pod{'s' if path.name == 'k8s.yaml' else ''}: "
        + ", ".join(p.name for p in load_manifest_files([path]).pods)
        for path in examples
    ]
    # The same pod name in two example files is a note for validate, not an error.
    assert "is also defined in" in result.stderr
    assert f"note: {VIRTLET_EXAMPLES / 'k8s.yaml'} (document 1): skipped Service k8s" in result.stderr


def test_validate_our_examples() -> None:
    result = vmpod("validate", "--quiet", *sorted((REPO / "examples").glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_validate_reports_every_error_as_file_path_message(files: dict[str, Path]) -> None:
    result = vmpod("validate", files["good"], files["bad"])
    assert result.returncode == 1
    assert result.stdout == f"{files['good']}: ok, 1 VM pod: good\n"
    lines = result.stderr.splitlines()
    parsed = [ERROR_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert {(m["file"], m["path"]) for m in parsed if m} == {
        (str(files["bad"]), "spec.template.metadata.annotations.VirtletRootVolumeSize"),
        (str(files["bad"]), "spec.template.metadata.annotations.VirtletDiskDriver"),
        (str(files["bad"]), "spec.template.spec.containers"),
    }
    disk = next(line for line in lines if "VirtletDiskDriver" in line)
    assert disk.endswith("""unsupported value: 'ide' (accepted: "scsi" or "virtio")""")
    assert any("VM pods have exactly one container" in line for line in lines)


def test_validate_reads_stdin() -> None:
    ok = vmpod("validate", "-", stdin=GOOD.encode())
    assert (ok.returncode, ok.stdout) == (0, "<stdin>: ok, 1 VM pod: good\n")
    bad = vmpod("validate", "-", stdin=BAD.encode())
    assert bad.returncode == 1
    assert all(line.startswith("<stdin>: spec.template.") for line in bad.stderr.splitlines())


def test_non_vm_pod_is_refused_unless_accepted(tmp_path: Path) -> None:
    path = tmp_path / "nginx.yaml"
    path.write_text("kind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: nginx, image: nginx}]}\n")
    refused = vmpod("validate", path)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"{path}: metadata.annotations.kubernetes.io/target-runtime: not a VM pod")
    accepted = vmpod("validate", "--accept-non-vm", path)
    assert (accepted.returncode, accepted.stdout) == (0, f"{path}: ok, 1 VM pod: web\n")
    rendered = vmpod("render", "--accept-non-vm", "-o", "json", path)
    assert json.loads(rendered.stdout)[0]["container"]["image"] == "nginx"


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_render_parses_back_to_the_same_pods(output: str) -> None:
    paths = [VIRTLET_EXAMPLES / "k8s.yaml", VIRTLET_EXAMPLES / "ubuntu-vm-local-block-pv.yaml",
             REPO / "examples" / "configmap-user-data.yaml", REPO / "examples" / "volumes.yaml"]
    result = vmpod("render", "-o", output, *paths)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout) if output == "json" else list(yaml.safe_load_all(result.stdout))
    assert [convert.structure(item, VMPod) for item in data] == list(load_manifest_files(paths).pods)


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_render_to_an_ascii_terminal(tmp_path: Path, output: str) -> None:
    path = tmp_path / "unicode.yaml"
    path.write_text("kind: Pod\nmetadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud, "
                    "note: \"h\u00e9llo \u2603 \U0001f600\"}}\nspec: {containers: [{name: vm, image: i}]}\n",
                    encoding="utf-8")
    result = vmpod("render", "-o", output, path, encoding="ascii")
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    data = json.loads(result.stdout) if output == "json" else list(yaml.safe_load_all(result.stdout))
    assert [convert.structure(item, VMPod) for item in data] == list(load_manifest_files([path]).pods)
    assert vmpod("validate", path, encoding="ascii").returncode == 0


def test_render_into_a_closed_pipe_is_quiet() -> None:
    render = subprocess.Popen([_script(), "render", str(VIRTLET_EXAMPLES / "k8s.yaml")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert render.stdout is not None
    render.stdout.close()  # the reader is gone before vmpod writes
    _, stderr = render.communicate(timeout=120)
    assert render.returncode == 0
    assert b"Traceback" not in stderr
    assert b"BrokenPipeError" not in stderr


def test_render_refuses_errors_and_prints_nothing(files: dict[str, Path]) -> None:
    result = vmpod("render", files["good"], files["bad"])
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 3


def test_render_refuses_duplicate_pods_across_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(GOOD)
    second.write_text(GOOD)
    result = vmpod("render", first, second)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{second}: metadata.name: duplicate pod name across the input files (also in "
                                    f"{first})")


def test_render_of_only_services_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text("kind: Service\nmetadata: {name: s}\n")
    assert vmpod("render", path).stdout == ""
    assert vmpod("render", "-o", "json", path).stdout == "[]\n"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.yaml", "cannot read the file: No such file or directory"),
        (lambda tmp: tmp, "cannot read the file: Is a directory"),
        (lambda tmp: _write(tmp / "binary.bin", bytes(range(256)) * 4), "cannot read the file: 'utf-8' codec"),
        (lambda tmp: _write(tmp / "ctrl.yaml", b"kind: Pod\x07\n"), "invalid YAML"),
        (lambda tmp: _write(tmp / "broken.yaml", b"kind: Pod\nmetadata: {name: [\n"), "invalid YAML at line"),
        (lambda tmp: _write(tmp / "deep.yaml", b"[" * 50_000 + b"]" * 50_000), "nested too deeply"),
        (lambda tmp: _write(tmp / "list.yaml", b"- a\n- b\n"), "a Kubernetes object must be a mapping"),
    ],
    ids=["missing", "directory", "binary", "control-character", "broken-yaml", "deep", "not-a-mapping"],
)
@pytest.mark.parametrize("command", ["validate", "render"])
def test_bad_input_is_a_message_not_a_traceback(tmp_path: Path, command: str, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = vmpod(command, path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}: ")
    assert message in result.stderr


def test_usage_errors_exit_2() -> None:
    assert vmpod("validate").returncode == 2
    assert vmpod("render", "-o", "xml", "x.yaml").returncode == 2


@pytest.mark.parametrize("command", ["validate", "render"])
def test_help_documents_the_output(command: str) -> None:
    result = vmpod(command, "--help")
    assert result.returncode == 0
    for words in ("stdout", "stderr", "FILE: PATH: message", "--accept-non-vm", "Exit status"):
        assert words in result.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
