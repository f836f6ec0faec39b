"""The ``vmpod`` command as a user types it: run, get, describe, logs, delete on the fake backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

VMPOD = shutil.which("vmpod")

MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: cirros-vm
  labels: {{app: demo}}
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletRootVolumeSize: 1Gi
spec:
  containers:
  - name: cirros-vm
    image: {image}
    resources:
      limits: {{memory: 160Mi}}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    image = tmp_path / "cirros.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    (tmp_path / "pod.yaml").write_text(MANIFEST.format(image=image))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VMPOD_")}
    environment["VMPOD_STATE_DIR"] = str(tmp_path / "state")
    environment["VMPOD_BACKEND"] = "fake"  # never boot a real VM here, whatever else is installed
    return environment


def vmpod(env: dict[str, str], *args: str, ok: bool = True,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert VMPOD is not None, "the vmpod console script is not installed"
    result = subprocess.run([VMPOD, *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd,
                            check=False)
    assert "Traceback" not in result.stderr, result.stderr
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0, result.stdout
    return result


def test_run_get_logs_delete(env: dict[str, str], tmp_path: Path) -> None:
    assert vmpod(env, "run", "pod.yaml", cwd=tmp_path).stdout == "pod/cirros-vm created\n"
    assert vmpod(env, "run", "pod.yaml", cwd=tmp_path).stdout == "pod/cirros-vm unchanged\n"

    table = vmpod(env, "get").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table[1].split()[:4] == ["cirros-vm", "1/1", "Running", "0"]

    wide = vmpod(env, "get", "-o", "wide")
    assert wide.stdout.splitlines()[0].split()[-3:] == ["IP", "BACKEND", "MACHINE"]
    assert wide.stdout.splitlines()[1].split()[-2] == "fake"
    assert "new pods go to backend fake" in wide.stderr

    obj = json.loads(vmpod(env, "get", "cirros-vm", "-o", "json").stdout)
    assert obj["kind"] == "Pod"
    assert obj["metadata"]["labels"] == {"app": "demo"}
    assert obj["status"]["phase"] == "Running"
    assert obj["status"]["containerStatuses"][0]["imageID"].startswith("sha256:")
    assert yaml.safe_load(vmpod(env, "get", "-o", "yaml", "-l", "app=demo").stdout)["items"][0] == obj
    assert "No resources found" in vmpod(env, "get", "-l", "app=other").stderr

    described = vmpod(env, "describe", "cirros-vm").stdout
    assert "Status:               Running" in described
    assert "Memory:             160 MiB" in described
    for reason in ("SandboxReady", "Created", "Started"):
        assert reason in described

    logs = vmpod(env, "logs", "cirros-vm").stdout.splitlines()
    assert logs[0].startswith("[fake] booting vmpod-")
    assert logs[-1].endswith("login: ")
    assert vmpod(env, "logs", "--tail", "1", "cirros-vm").stdout.splitlines() == logs[-1:]
    stamped = vmpod(env, "logs", "--timestamps", "--tail", "1", "cirros-vm").stdout
    assert stamped.split(" ", 1)[0].endswith("Z")

    assert VMPOD is not None
    follower = subprocess.Popen([VMPOD, "logs", "-f", "cirros-vm"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert follower.poll() is None  # still following a running VM
    assert vmpod(env, "delete", "cirros-vm").stdout == 'pod "cirros-vm" deleted\n'
    out, err = follower.communicate(timeout=30)
    assert "Traceback" not in err
    assert out.splitlines()[: len(logs)] == logs

    assert "No resources found in default namespace.\n" in vmpod(env, "get").stderr
    state = Path(env["VMPOD_STATE_DIR"])
    assert list((state / "pods").iterdir()) == []
    assert list((state / "logs").iterdir()) == []


def test_apply_wait_and_delete_by_file(env: dict[str, str], tmp_path: Path) -> None:
    result = vmpod(env, "apply", "-f", "pod.yaml", "--wait", cwd=tmp_path)
    assert result.stdout == "pod/cirros-vm created\npod/cirros-vm running\n"
    assert vmpod(env, "delete", "-f", "pod.yaml", "--now", "--keep-log", cwd=tmp_path).stdout == \
        'pod "cirros-vm" deleted\n'
    kept = list((Path(env["VMPOD_STATE_DIR"]) / "logs").iterdir())
    assert len(kept) == 1
    assert "login" in kept[0].read_text()


def test_user_mistakes_print_one_line_and_no_traceback(env: dict[str, str], tmp_path: Path) -> None:
    assert "not found" in vmpod(env, "get", "nope", ok=False).stderr
    assert "not found" in vmpod(env, "describe", "nope", ok=False).stderr
    assert "not found" in vmpod(env, "logs", "nope", ok=False).stderr
    assert "not found" in vmpod(env, "delete", "nope", ok=False).stderr
    vmpod(env, "delete", "nope", "--ignore-not-found")
    assert "cannot read the file" in vmpod(env, "run", "missing.yaml", ok=False, cwd=tmp_path).stderr
    assert "unknown backend 'qemu-nope'" in vmpod(env, "--backend", "qemu-nope", "run", "pod.yaml", ok=False,
                                                  cwd=tmp_path).stderr
    (tmp_path / "bad.yaml").write_text("kind: Pod\nmetadata: {name: Bad_Name}\n")
    assert "invalid name" in vmpod(env, "run", "bad.yaml", ok=False, cwd=tmp_path).stderr
    (tmp_path / "text.img").write_text("not a disk\n")
    (tmp_path / "badimage.yaml").write_text(MANIFEST.format(image=tmp_path / "text.img"))
    error = vmpod(env, "run", "badimage.yaml", ok=False, cwd=tmp_path).stderr
    assert "spec.containers[0].image" in error
    assert "No resources found" in vmpod(env, "get").stderr  # the failed run left nothing
    (tmp_path / "a-file").write_text("")
    assert "state directory" in vmpod({**env, "VMPOD_STATE_DIR": str(tmp_path / "a-file" / "x")}, "run",
                                      "pod.yaml", ok=False, cwd=tmp_path).stderr
    assert "must be -1" in vmpod(env, "logs", "--tail", "-5", "x", ok=False).stderr


def test_state_dir_option_and_backend_env(env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    environment = {k: v for k, v in env.items() if k != "VMPOD_STATE_DIR"}
    environment["VMPOD_BACKEND"] = "fake"
    vmpod(environment, "--state-dir", str(other), "run", "pod.yaml", cwd=tmp_path)
    assert (other / "vmpod.db").exists()
    assert "cirros-vm" in vmpod(environment, "--state-dir", str(other), "get").stdout
    vmpod(environment, "--state-dir", str(other), "delete", "cirros-vm", "--now")
