"""Probes through the runtime on the fake backend, with the pod's "guest port" a real server on the forward's port.

The fake backend runs no guest, and binds nothing: the loopback port vmpod chose for a probe
port at create time is free, so the test serves there what the guest would.  The prober is the
real detached process; the test opens only read-only runtimes while it waits, so that the
prober can take the writer lock for a liveness restart.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from vmpod.errors import SpecError
from vmpod.manifest import load_manifest_text
from vmpod.model import VMPod
from vmpod.plugins import get_plugin_manager
from vmpod.probing.process import PROBER_FILE, prober_alive
from vmpod.procutil import ProcessIdentity, read_json
from vmpod.runtime import ContainerState, PodRecord, Runtime
from vmpod.runtime.check import check_consistency

UID = "0000000a-0000-4000-8000-00000000000a"
#: Polling deadline: the prober runs beside other helpers' VMs on a busy machine.
DEADLINE = 60.0

MANIFEST = """
apiVersion: v1
kind: Pod
metadata: {{name: web, annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 1
  containers:
  - name: vm
    image: file://{image}
    ports: [{{name: http, containerPort: 80}}, {{containerPort: 9000}}]
{probes}
"""


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    yield directory
    if (directory / "vmpod.db").exists():  # delete every pod: stops their probers
        with _writer(directory) as runtime:
            for record in runtime.list():
                runtime.delete_pod(record, timeout=0)


def _writer(state: Path) -> Runtime:
    return Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager())


def _reader(state: Path) -> Runtime:
    return Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager(), readonly=True)


def _pod(image: Path, probes: str, policy: str = "Always") -> VMPod:
    text = MANIFEST.format(image=image, probes=probes, policy=policy)
    return attrs.evolve(load_manifest_text(text).pods[0], uid=UID)


def _run(state: Path, pod: VMPod) -> dict[int, int]:
    """Run the pod; its forwards as guest port -> loopback host port."""
    with _writer(state) as runtime:
        record = runtime.run_pod(pod)
        machine = runtime.machine(record)
        assert machine is not None
        return {f.guest_port: f.host_port for nic in machine.nics for f in nic.forwards}


def _wait(state: Path, what: str, condition: Callable[[Runtime, PodRecord], bool]) -> PodRecord:
    deadline = time.monotonic() + DEADLINE
    while True:
        with _reader(state) as runtime:
            record = runtime.get("web")
            if condition(runtime, record):
                return record
            status = runtime.probe_status(record)
        assert time.monotonic() < deadline, f"not {what} after {DEADLINE} s: {record.container} {status}"
        time.sleep(0.1)


def _prober(state: Path) -> ProcessIdentity | None:
    record = read_json(state / "pods" / UID / "probes" / PROBER_FILE)
    return ProcessIdentity.from_run(record) if record else None


class _Web:
    """An HTTP server on a given loopback port whose status code the test changes."""

    def __init__(self, port: int) -> None:
        outer = self
        self.code = 200

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(outer.code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Silent(socketserver.BaseRequestHandler):
    """A TCP service that never speaks and closes when the client does (like httpd waiting for a request)."""

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while self.request.recv(4096):
                pass


def _listen(port: int) -> socketserver.ThreadingTCPServer:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_every_probe_port_and_container_port_gets_a_loopback_forward(state: Path, image: Path) -> None:
    forwards = _run(state, _pod(image, "    readinessProbe: {tcpSocket: {port: 22}}"))
    assert sorted(forwards) == [22, 80, 9000]
    assert len(set(forwards.values())) == 3


def test_readiness_flips_with_the_guest_port(state: Path, image: Path) -> None:
    pod = _pod(image, "    readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1, failureThreshold: 2}")
    forwards = _run(state, pod)
    with _reader(state) as runtime:
        record = runtime.get("web")
        assert record.container is not None
        assert record.container.state is ContainerState.RUNNING
        assert not runtime.ready(record)  # readiness starts not ready
    _wait(state, "probed", lambda rt, r: (s := rt.probe_status(r)) is not None and s.readiness is not None
          and s.readiness.state is not None and s.readiness.state.probes >= 1)
    with _reader(state) as runtime:
        record = runtime.get("web")
        assert not runtime.ready(record)  # nothing listens yet
        status = runtime.probe_status(record)
        assert status is not None
        assert any("Readiness probe failed: dial tcp 127.0.0.1" in e.message for e in status.events)
    server = _listen(forwards[80])
    try:
        _wait(state, "ready", lambda rt, r: rt.ready(r))
    finally:
        server.shutdown()
        server.server_close()
    _wait(state, "unready again", lambda rt, r: not rt.ready(r))
    with _reader(state) as runtime:
        record = runtime.get("web")
        assert record.container is not None
        assert record.container.state is ContainerState.RUNNING  # readiness never restarts
        assert record.container.restart_count == 0


def _liveness(image: Path, policy: str) -> VMPod:
    # The initial delay gives the test time to heal the server between a restart and the new run's probes.
    return _pod(image, "    livenessProbe: {httpGet: {port: 80, path: /healthz}, periodSeconds: 1, "
                "failureThreshold: 2, initialDelaySeconds: 3}", policy)


@pytest.mark.parametrize("policy", ["Always", "OnFailure"])
def test_liveness_failure_restarts_the_vm(state: Path, image: Path, policy: str) -> None:
    forwards = _run(state, _liveness(image, policy))
    web = _Web(forwards[80])
    try:
        first = _wait(state, "probed alive", lambda rt, r: (s := rt.probe_status(r)) is not None
                      and s.liveness is not None and s.liveness.state is not None
                      and s.liveness.state.probes >= 2)
        assert first.container is not None
        assert first.container.restart_count == 0
        web.code = 500
        record = _wait(state, "restarted", lambda rt, r: r.container is not None and r.container.restart_count == 1
                       and r.container.state is ContainerState.RUNNING)
        assert record.container is not None
        assert record.container.started_at > first.container.started_at
        with _reader(state) as runtime:
            reasons = [(e.reason, e.message) for e in runtime.events(record)]
            status = runtime.probe_status(record)
        assert ("Killing", "Container vm failed liveness probe, will be restarted (HTTP probe failed with "
                           "statuscode: 500)") in reasons
        assert [r for r, _ in reasons].count("Started") == 2
        assert status is not None
        failures = [e for e in status.events if e.message == "Liveness probe failed: HTTP probe failed with "
                                                              "statuscode: 500"]
        assert len(failures) == 1
        assert failures[0].count == 2  # failureThreshold
        web.code = 200
        # The new run is probed afresh by the same prober, and stays up.
        _wait(state, "probed in the new run", lambda rt, r: (s := rt.probe_status(r)) is not None
              and s.started_at == record.container.started_at and s.liveness is not None
              and s.liveness.state is not None and s.liveness.state.probes >= 2)
        with _reader(state) as runtime:
            again = runtime.get("web")
            assert again.container is not None
            assert again.container.restart_count == 1
    finally:
        web.close()


def test_liveness_failure_with_restart_policy_never_leaves_it_stopped(state: Path, image: Path) -> None:
    forwards = _run(state, _liveness(image, "Never"))
    assert 80 in forwards  # nothing listens there: every probe fails
    record = _wait(state, "stopped", lambda rt, r: r.container is not None
                   and r.container.state is ContainerState.EXITED)
    assert record.container is not None
    assert record.container.restart_count == 0
    with _reader(state) as runtime:
        messages = [e.message for e in runtime.events(record)]
    assert any(m.startswith("Container vm failed liveness probe, restartPolicy is Never: not restarted (Get ")
               for m in messages), messages
    identity = _prober(state)
    assert identity is not None
    assert identity.wait(DEADLINE)  # nothing left to probe: the prober exits
    with _writer(state) as runtime:  # and an open does not start it again
        assert not prober_alive(runtime.probes_dir(UID))


def test_delete_stops_the_prober_and_leaves_nothing(state: Path, image: Path) -> None:
    _run(state, _pod(image, "    readinessProbe: {tcpSocket: {port: 22}, periodSeconds: 1}"))
    identity = _prober(state)
    assert identity is not None
    assert identity.alive()
    with _writer(state) as runtime:
        runtime.delete_pod(runtime.get("web"), timeout=0)
        assert not identity.alive()
        assert check_consistency(runtime) == []
    assert not (state / "pods" / UID).exists()


def test_a_killed_prober_is_started_again_by_the_next_open(state: Path, image: Path) -> None:
    _run(state, _pod(image, "    readinessProbe: {tcpSocket: {port: 22}, periodSeconds: 1}"))
    identity = _prober(state)
    assert identity is not None
    assert identity.send(signal.SIGKILL)
    assert identity.wait(10)
    with _writer(state) as runtime:
        assert prober_alive(runtime.probes_dir(UID))
        assert check_consistency(runtime) == []
    again = _prober(state)
    assert again is not None
    assert again.pid != identity.pid


def test_a_second_prober_of_the_same_pod_exits_at_once(state: Path, image: Path) -> None:
    _run(state, _pod(image, "    readinessProbe: {tcpSocket: {port: 22}, periodSeconds: 1}"))
    first = _prober(state)
    assert first is not None
    result = subprocess.run(["python3", "-m", "vmpod.probing", "--state-dir", str(state), "--uid", UID,
                             "--foreground"], env=os.environ.copy(), timeout=60, check=False)
    assert result.returncode == 0
    assert _prober(state) == first
    assert first.alive()


def test_exec_probes_are_reported_never_passed(state: Path, image: Path) -> None:
    pod = _pod(image, "    readinessProbe: {exec: {command: [cat, /ok]}}\n"
               "    livenessProbe: {exec: {command: [cat, /ok]}}")
    _run(state, pod)
    with _reader(state) as runtime:
        record = runtime.get("web")
        assert record.container is not None
        assert record.container.state is ContainerState.RUNNING
        assert not runtime.ready(record)
        warnings = [e.message for e in runtime.events(record) if e.reason == "ProbeUnsupported"]
    assert len(warnings) == 2
    assert "never becomes ready" in warnings[0]
    assert "ignored" in warnings[1]
    assert _prober(state) is None  # nothing vmpod can probe: no process


def test_a_probe_port_name_no_container_port_has_creates_nothing(state: Path, image: Path) -> None:
    with _writer(state) as runtime:
        with pytest.raises(SpecError, match=r"readinessProbe\.tcpSocket\.port.*metrics"):
            runtime.run_pod(_pod(image, "    readinessProbe: {tcpSocket: {port: metrics}}"))
        assert runtime.list() == []
        assert check_consistency(runtime) == []
