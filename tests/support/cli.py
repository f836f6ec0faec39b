"""Driving the installed ``vmpod`` console script against a state directory, and finding what a pod left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.qemu import pids_mentioning
from vmpod.runtime import Runtime
from vmpod.runtime.check import check_consistency

__all__ = ["backend_cli", "get_pods", "leftovers", "store_problems", "tiny_manifest", "vmpod", "wait_for_log"]


def vmpod(state: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``vmpod`` command on ``state`` with the qemu backend (never raises on a non-zero exit)."""
    script = shutil.which("vmpod")
    assert script, "the vmpod console script is not installed (pip install -e .)"
    base = {k: v for k, v in os.environ.items() if k not in ("VMPOD_FAULT_POINT", "VMPOD_BACKEND")}
    return subprocess.run([script, "--state-dir", str(state), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**base, **(env or {})}, cwd=cwd)


def backend_cli(state: Path, backend: str, *, timeout: float = 600
                ) -> tuple[Callable[..., subprocess.CompletedProcess[str]], list[str]]:
    """``run(*args)``: ``vmpod --state-dir STATE --backend BACKEND ARGS...`` (as :func:`vmpod`), and that
    command's argv prefix, for commands a test runs in the background (``logs -f``, ``attach``)."""
    script = shutil.which("vmpod")
    assert script, "the vmpod console script is not installed (pip install -e .)"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return vmpod(state, "--backend", backend, *args, timeout=timeout)

    return run, [script, "--state-dir", str(state), "--backend", backend]


def get_pods(state: Path) -> dict[str, dict[str, Any]]:
    """``vmpod get -o json`` (which reconciles first) as name -> pod; asserts the command succeeded."""
    result = vmpod(state, "get", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout) if result.stdout.strip() else {"items": []}
    items = data["items"] if isinstance(data, dict) and "items" in data else data
    return {item["metadata"]["name"]: item for item in items}


def store_problems(state: Path) -> list[str]:
    """:func:`check_consistency` on a read-only runtime (it neither reconciles nor takes the lock)."""
    with Runtime.open(state, backend="qemu", readonly=True) as runtime:
        return check_consistency(runtime)


def leftovers(state: Path, *, pod_uids: set[str] | None = None) -> list[str]:
    """Everything of pods (all of them, or those of ``pod_uids``) still on the host.

    qemu processes and supervisors (anything whose command line names a machine directory or a pod
    directory of ``state``), machine directories (with their sockets), pod directories (overlay, seed ISO,
    run files) and console logs.
    """
    found: list[str] = []
    machines = state / "backends" / "qemu" / "machines"
    pods = state / "pods"
    logs = state / "logs"
    for parent in (machines, pods):
        for entry in sorted(parent.iterdir()) if parent.is_dir() else ():
            if pod_uids is None or any(uid[:13] in entry.name for uid in pod_uids):
                found.append(f"{entry.relative_to(state)}: " + ", ".join(sorted(
                    str(p.relative_to(entry)) for p in entry.rglob("*"))))
    for entry in sorted(logs.iterdir()) if logs.is_dir() else ():
        if pod_uids is None or any(uid[:13] in entry.name for uid in pod_uids):
            found.append(str(entry.relative_to(state)))
    for text in (str(machines), str(pods)):
        for pid in pids_mentioning(text):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pod_uids is None or any(uid[:13] in cmdline for uid in pod_uids):
                found.append(f"process {pid}: {cmdline[:200]}")
    return found


def _block(text: str) -> str:
    return text.rstrip("\n") + "\n" if text.strip() else ""


def tiny_manifest(path: Path, image: Path, names: Sequence[str], *, memory: str = "128Mi",
                  container: Mapping[str, str] | None = None) -> Path:
    """A manifest of one tiny-guest VM pod per name (file:// image), written to ``path``.

    ``container`` maps a pod name to more YAML for its container (ports, probes), indented by four spaces.
    """
    docs = []
    for name in names:
        docs.append(f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletRootVolumeSize: 256Mi
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: tiny
    image: file://{image}
    resources:
      limits:
        memory: {memory}
""" + _block((container or {}).get(name, "")))
    path.write_text("---\n".join(docs))
    return path


def wait_for_log(state: Path, name: str, text: str, timeout: float = 180) -> str:
    """Poll ``vmpod logs NAME`` until it contains ``text``; returns the log."""
    deadline = time.monotonic() + timeout
    output = ""
    while time.monotonic() < deadline:
        result = vmpod(state, "logs", name)
        output = result.stdout
        if text in output:
            return output
        time.sleep(1)
    raise AssertionError(f"no {text!r} in the log of {name} after {timeout} s:\n{output[-3000:]}")
