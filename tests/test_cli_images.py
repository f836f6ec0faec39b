"""``vmpod pull``, ``vmpod images`` and ``vmpod rmi`` as a user types them, against a real HTTP server."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.imageserver import ImageServer
from vmpod.cli.images import ProgressPrinter, human_size

VMPOD = shutil.which("vmpod")

MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: web-vm
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
spec:
  containers:
  - name: web-vm
    image: {image}
    resources:
      limits: {{memory: 160Mi}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ImageServer]:
    root = tmp_path / "served"
    root.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "cirros.qcow2"), "64M"], check=True)
    with ImageServer(root) as srv:
        yield srv


@pytest.fixture
def env(tmp_path: Path, server: ImageServer) -> dict[str, str]:
    conf = tmp_path / "translations"
    conf.mkdir()
    url = server.url("/files/cirros.qcow2")
    (conf / "cirros.yaml").write_text(f"translations:\n  - name: cirros\n    url: {url}\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VMPOD_")}
    environment["VMPOD_STATE_DIR"] = str(tmp_path / "state")
    environment["VMPOD_BACKEND"] = "fake"
    environment["VMPOD_IMAGE_TRANSLATIONS"] = str(conf)
    return environment


def vmpod(env: dict[str, str], *args: str, ok: bool = True,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert VMPOD is not None, "the vmpod console script is not installed"
    result = subprocess.run([VMPOD, *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd,
                            check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.returncode == 0) == ok, (result.stdout, result.stderr)
    return result


def test_pull_images_run_rmi_prune(env: dict[str, str], server: ImageServer, tmp_path: Path) -> None:
    pulled = vmpod(env, "pull", "virtlet.cloud/cirros:latest")
    assert pulled.stdout.startswith(f"pulled {server.url('/files/cirros.qcow2')} (rule ")
    assert "cirros@sha256:" in pulled.stdout
    assert "virtlet.cloud/cirros:latest: 100% (" in pulled.stderr  # plain progress lines: not a terminal
    digest = vmpod(env, "images", "-q").stdout.strip()
    assert digest.startswith("sha256:")
    assert len(digest) == 71

    (tmp_path / "pod.yaml").write_text(MANIFEST.format(image="virtlet.cloud/cirros"))
    vmpod(env, "run", "pod.yaml", cwd=tmp_path)
    assert server.hits["/files/cirros.qcow2"] == 1  # the pod re-used the pulled image
    listing = vmpod(env, "images").stdout.splitlines()
    assert listing[0].split()[:4] == ["DIGEST", "FORMAT", "VIRTUAL", "SIZE"]
    assert listing[1].split()[1:4] == ["qcow2", "64.0MiB", "192.0KiB"]
    assert listing[1].split()[4] == "1"  # one pod uses it
    assert listing[1].endswith(server.url("/files/cirros.qcow2"))

    refused = vmpod(env, "rmi", "cirros", ok=False)
    assert "is used by pod(s) default/web-vm" in refused.stderr
    assert vmpod(env, "images", "--prune").stdout == ""
    vmpod(env, "delete", "web-vm", "--now")
    assert vmpod(env, "rmi", digest[7:19]).stdout == f"deleted: {digest}\n"
    assert vmpod(env, "images", "-q").stdout == ""

    vmpod(env, "pull", "cirros")
    assert vmpod(env, "images", "--prune").stdout == f"deleted: {digest}\n"
    assert not list((tmp_path / "state" / "images" / "sha256").iterdir())
    assert "no image cirros in the store" in vmpod(env, "rmi", "cirros", ok=False).stderr


def test_pull_errors_are_one_line(env: dict[str, str], server: ImageServer) -> None:
    missing = vmpod(env, "pull", server.url("/files/nope.qcow2"), ok=False)
    assert missing.stderr.strip() == (f"vmpod: error: image {server.url('/files/nope.qcow2')} not found "
                                      f"(HTTP 404 from {server.url('/files/nope.qcow2')})")
    loop = vmpod(env, "pull", server.url("/loop/a"), ok=False)
    assert "redirect loop" in loop.stderr


def test_file_images_restricted_to_configured_dirs(env: dict[str, str], tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    for d in (allowed, other):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "disk.qcow2"), "32M"], check=True)
    (allowed / "escape.qcow2").symlink_to(other / "disk.qcow2")
    env = {**env, "VMPOD_IMAGE_FILE_DIRS": f"{tmp_path / 'nowhere'}:{allowed}"}
    vmpod(env, "pull", f"file://{allowed}/disk.qcow2")
    refused = vmpod(env, "pull", str(other / "disk.qcow2"), ok=False)
    assert "local images must be under the allowed directories" in refused.stderr
    assert "local images must be under" in vmpod(env, "pull", str(allowed / "escape.qcow2"), ok=False).stderr
    assert "local images must be under" in vmpod(env, "pull", f"{allowed}/../other/disk.qcow2", ok=False).stderr


def test_progress_bar_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressPrinter("cirros", tty=True)
    bar(512 << 20, 1 << 30)
    bar(1 << 30, 1 << 30)
    bar.finish()
    err = capsys.readouterr().err
    assert "\rcirros [###############---------------]  50% 512.0MiB/1.0GiB" in err
    assert "\rcirros [##############################] 100% 1.0GiB/1.0GiB" in err
    assert err.endswith("\n")
    plain = ProgressPrinter("x", tty=False)
    for done in range(0, 101):
        plain(done, 100)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "x: 0% (0B/100B)"
    assert lines[-1] == "x: 100% (100B/100B)"
    assert len(lines) == 11
    assert human_size(1536) == "1.5KiB"
