"""Probes of the real tiny guest on the qemu backend, through the loopback forwards vmpod chose (user networking).

The tiny guest (:mod:`vmpod.guests.tiny`) gets a DHCP lease from qemu's user network and serves
busybox ``httpd`` on port 80 and dropbear on port 22.  Through the installed ``vmpod`` command:

* a pod with a ``tcpSocket: 22`` readiness probe and an ``httpGet: 80`` liveness probe turns READY
  ``1/1`` in ``vmpod get`` and stays up (no restart);
* a pod whose readiness probe names a port nothing in the guest listens on stays ``0/1`` (also
  before its guest booted): qemu's slirp accepts every forwarded connection, and the probe sees it
  left unread (no guest yet), then closed at once (guest up, port closed);
* a liveness probe on a closed port restarts the VM (``restartCount`` 1, the guest boots again);
* ``vmpod delete`` stops the probers and leaves nothing behind.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import get_pods, leftovers, store_problems, tiny_manifest, vmpod, wait_for_log
from tests.support.cli import vmpod as run_vmpod
from tests.support.qemu import destroy_all
from vmpod.guests.tiny import build_tiny_guest
from vmpod.runtime import Runtime

pytestmark = pytest.mark.guest

#: Boot of the tiny guest under TCG on a busy two-core machine (the test prints how long it took).
BOOT_TIMEOUT = 300.0

#: The tiny guest's web server, named for the httpGet probes.
PORTS = """    ports:
    - {name: http, containerPort: 80}
"""

GOOD = """    readinessProbe:
      tcpSocket: {port: 22}
      periodSeconds: 2
    livenessProbe:
      httpGet: {port: http, path: /index.html}
      initialDelaySeconds: 60
      periodSeconds: 5
      timeoutSeconds: 5
      failureThreshold: 6"""

CLOSED = """    readinessProbe:
      tcpSocket: {port: 2222}
      periodSeconds: 2"""

DYING = """    livenessProbe:
      tcpSocket: {port: 2222}
      initialDelaySeconds: 30
      periodSeconds: 3
      failureThreshold: 2"""


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    return build_tiny_guest()


def _delete_all(directory: Path, backend: str) -> None:
    if (directory / "vmpod.db").exists():  # delete every pod (stops their probers), even after a failure
        with Runtime.open(directory, backend=backend) as runtime:
            for record in runtime.list():
                runtime.delete_pod(record, timeout=0)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    yield directory
    _delete_all(directory, "qemu")
    destroy_all(directory)


@pytest.fixture(params=["qemu", "libvirt"])
def backend_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A state directory for each backend (libvirt's in a directory its qemu user can read)."""
    if request.param == "qemu":
        directory = tmp_path / "state"
        yield "qemu", directory
        _delete_all(directory, "qemu")
        destroy_all(directory)
        return
    from tests.support.libvirtstate import libvirt_state_dir  # noqa: PLC0415

    with libvirt_state_dir("vmpod-probes-") as state:
        yield "libvirt", state
        _delete_all(state, "libvirt")


def _manifest(path: Path, image: Path, pods: dict[str, str]) -> Path:
    return tiny_manifest(path, image, list(pods), container={name: PORTS + probes for name, probes in pods.items()})


def _wait(state: Path, what: str, condition: Any, timeout: float = BOOT_TIMEOUT) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        pods = get_pods(state)
        if condition(pods):
            return pods
        assert time.monotonic() < deadline, f"not {what} after {timeout} s: {pods}"
        time.sleep(2)


def _row(state: Path, name: str) -> list[str]:
    result = vmpod(state, "get", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[1].split()


def test_readiness_through_the_forwards_of_the_real_guest(backend_state: tuple[str, Path], tiny_image: Path,
                                                          tmp_path: Path) -> None:
    backend, state = backend_state

    def vmpod(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_vmpod(state, "--backend", backend, *args, timeout=timeout)

    closed_manifest = _manifest(tmp_path / "closed.yaml", tiny_image, {"closed": CLOSED})
    good_manifest = _manifest(tmp_path / "good.yaml", tiny_image, {"good": GOOD})
    result = vmpod(state, "run", str(closed_manifest))
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    result = vmpod(state, "run", "--wait-ready", "--timeout", str(BOOT_TIMEOUT), str(good_manifest),
                   timeout=BOOT_TIMEOUT + 60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pod/good ready" in result.stdout
    print(f"good ready {time.monotonic() - started:.1f} s after vmpod run")
    assert _row(state, "good")[1:4] == ["1/1", "Running", "0"]
    # The other guest is up too, its probed port closed: it stays unready, and --wait-ready says so.
    wait_for_log(state, "closed", "VMPOD-READY", timeout=BOOT_TIMEOUT)
    first = get_pods(state)["closed"]["vmpod"]["probes"]["readiness"]["probes"]
    pods = _wait(state, "probed after the boot", lambda p: p["closed"]["vmpod"]["probes"]["readiness"]["probes"]
                 >= first + 2)
    assert _row(state, "closed")[1:3] == ["0/1", "Running"]
    closed = pods["closed"]
    assert closed["status"]["containerStatuses"][0]["ready"] is False
    message = closed["vmpod"]["probes"]["readiness"]["lastMessage"]
    assert "was closed at once (nothing listens on the guest port)" in message, message
    waited = vmpod(state, "run", "--wait-ready", "--timeout", "5", str(closed_manifest))
    assert waited.returncode == 1
    assert "pod default/closed is not ready after 5 s" in waited.stderr
    good = pods["good"]
    assert good["status"]["containerStatuses"][0]["ready"] is True
    assert {"type": "Ready", "status": "True"} in good["status"]["conditions"]
    assert good["vmpod"]["probes"]["readiness"]["result"] == "success"
    # The liveness probe (httpGet of busybox httpd) runs after its delay and keeps the VM up.
    pods = _wait(state, "probed by liveness", lambda p: (p["good"]["vmpod"]["probes"]["liveness"].get("probes", 0)
                                                         >= 2))
    liveness = pods["good"]["vmpod"]["probes"]["liveness"]
    assert liveness["lastResult"] == "success", liveness
    assert pods["good"]["status"]["containerStatuses"][0]["restartCount"] == 0
    describe = vmpod(state, "describe", "good").stdout
    assert "Readiness:          tcp-socket :22 delay=0s timeout=1s period=2s #success=1 #failure=3" in describe
    assert "Liveness:           http-get http://:http/index.html delay=60s timeout=5s period=5s" in describe
    assert "Ready:              True" in describe
    uids = {p["metadata"]["uid"] for p in pods.values()}
    deleted = vmpod(state, "delete", "good", "closed", timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    if backend == "qemu":
        assert leftovers(state, pod_uids=uids) == []
        assert store_problems(state) == []
    assert not any((state / "pods").iterdir())


def test_liveness_failure_restarts_the_real_guest(state: Path, tiny_image: Path, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "dying.yaml", tiny_image, {"dying": DYING})
    result = vmpod(state, "run", "--wait", str(manifest), timeout=BOOT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    pods = _wait(state, "restarted", lambda p: p["dying"]["status"]["containerStatuses"][0]["restartCount"] >= 1
                 and "running" in p["dying"]["status"]["containerStatuses"][0]["state"])
    describe = vmpod(state, "describe", "dying").stdout
    assert "Container tiny failed liveness probe, will be restarted" in describe
    deadline = time.monotonic() + BOOT_TIMEOUT
    while vmpod(state, "logs", "dying").stdout.count("VMPOD-READY") < 2:  # the guest booted again
        assert time.monotonic() < deadline, "the restarted guest did not boot"
        time.sleep(2)
    uid = pods["dying"]["metadata"]["uid"]
    deleted = vmpod(state, "delete", "dying", timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    assert leftovers(state, pod_uids={uid}) == []
