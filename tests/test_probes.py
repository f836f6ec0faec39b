"""Probes without a VM: kubelet's state machine with an injected clock, and each check against real servers."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from vmpod.errors import SpecError
from vmpod.machine import Machine, Nic
from vmpod.manifest import load_manifest_text
from vmpod.model import DiskDriver, ExecAction, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction, VMPod
from vmpod.probing.checks import EXEC_UNSUPPORTED, Outcome, Result, run_check
from vmpod.probing.status import (
    ProbeStatus,
    ProbeView,
    initial_status,
    is_ready,
    probe_summary,
    read_status,
    write_status,
)
from vmpod.probing.tracker import ProbeKind, due, initial_state, observe
from vmpod.runtime.endpoints import forwarded_ports, loopback_forwards, pod_endpoint, probe_ports, resolve_port
from vmpod.runtime.records import PodRecord
from vmpod.runtime.states import SandboxState

S = 1_000_000_000
OK = Outcome(Result.SUCCESS)
BAD = Outcome(Result.FAILURE, "connection refused")
TCP = TCPSocketAction(port=22)


# ------------------------------------------------------------------------------------------ the tracker


def _drive(kind: ProbeKind, probe: Probe, outcomes: list[Outcome], start: int = 1000 * S) -> list[Result]:
    """Run the tracker like the prober does, probing whenever due; the tracked result after each probe."""
    state = initial_state(kind, probe, start)
    now = start
    results = []
    for outcome in outcomes:
        while not due(state, now):
            now += S // 10
        state = observe(state, probe, outcome, now)
        results.append(state.result)
    return results


def test_readiness_starts_not_ready_and_waits_the_initial_delay() -> None:
    probe = Probe(handler=TCP, initial_delay_seconds=5, period_seconds=10)
    state = initial_state(ProbeKind.READINESS, probe, 100 * S)
    assert state.result is Result.FAILURE
    assert not due(state, 100 * S)
    assert not due(state, 105 * S - 1)
    assert due(state, 105 * S)
    state = observe(state, probe, OK, 105 * S)
    assert state.result is Result.SUCCESS
    assert state.last_transition_at == 105 * S
    assert not due(state, 114 * S)
    assert due(state, 115 * S)


def test_liveness_starts_alive() -> None:
    state = initial_state(ProbeKind.LIVENESS, Probe(handler=TCP), 0)
    assert state.result is Result.SUCCESS
    assert due(state, 0)


def test_success_threshold_needs_consecutive_successes() -> None:
    probe = Probe(handler=TCP, success_threshold=3, period_seconds=1)
    results = _drive(ProbeKind.READINESS, probe, [OK, OK, BAD, OK, OK, OK, OK])
    assert results == [Result.FAILURE] * 5 + [Result.SUCCESS] * 2


def test_failure_threshold_needs_consecutive_failures() -> None:
    probe = Probe(handler=TCP, failure_threshold=3, period_seconds=1)
    results = _drive(ProbeKind.READINESS, probe, [OK, BAD, BAD, OK, BAD, BAD, BAD, OK])
    assert results == [Result.SUCCESS] * 6 + [Result.FAILURE, Result.SUCCESS]


def test_liveness_failure_holds_until_the_next_run() -> None:
    probe = Probe(handler=TCP, failure_threshold=2, period_seconds=1)
    state = initial_state(ProbeKind.LIVENESS, probe, 0)
    state = observe(state, probe, BAD, 0)
    assert state.result is Result.SUCCESS
    assert not state.on_hold
    state = observe(state, probe, BAD, S)
    assert state.result is Result.FAILURE
    assert state.on_hold
    assert state.run == 0
    assert not due(state, 100 * S)
    fresh = initial_state(ProbeKind.LIVENESS, probe, 200 * S)
    assert fresh.result is Result.SUCCESS
    assert due(fresh, 200 * S)


def test_periods_keep_their_rhythm_and_skip_missed_ones() -> None:
    probe = Probe(handler=TCP, period_seconds=10)
    state = initial_state(ProbeKind.READINESS, probe, 0)
    state = observe(state, probe, OK, S)  # the probe took a second
    assert state.next_at == 10 * S
    state = observe(state, probe, OK, 95 * S)  # the prober was away: no burst of overdue probes
    assert state.next_at == 105 * S


def test_unsupported_never_changes_the_result() -> None:
    probe = Probe(handler=ExecAction(command=("true",)), period_seconds=1)
    unsupported = Outcome(Result.UNSUPPORTED, EXEC_UNSUPPORTED)
    assert _drive(ProbeKind.READINESS, probe, [unsupported] * 5) == [Result.FAILURE] * 5
    assert _drive(ProbeKind.LIVENESS, probe, [unsupported] * 5) == [Result.SUCCESS] * 5


# ------------------------------------------------------------------------------------------ status


def test_ready_only_for_the_current_run(tmp_path: Path) -> None:
    probe = Probe(handler=TCP)
    state = observe(initial_state(ProbeKind.READINESS, probe, 7), probe, OK, 8)
    status = ProbeStatus(uid="u", started_at=7, readiness=ProbeView(summary="s", supported=True, state=state))
    path = tmp_path / "status.json"
    write_status(path, status)
    assert read_status(path) == status
    assert is_ready(read_status(path), running=True, started_at=7)
    assert not is_ready(status, running=True, started_at=9)  # a restart: earlier results do not count
    assert not is_ready(status, running=False, started_at=7)
    assert is_ready(None, running=True, started_at=7)  # no probes: ready when running
    assert not is_ready(ProbeStatus(uid="u", readiness=ProbeView(summary="s", supported=False)), running=True,
                        started_at=0)
    assert read_status(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"uid": ')
    assert read_status(tmp_path / "torn.json") is None


def test_events_aggregate() -> None:
    status = ProbeStatus(uid="u").with_event("Warning", "Unhealthy", "m", 1).with_event("Warning", "Unhealthy", "m", 5)
    status = status.with_event("Warning", "Unhealthy", "other", 6).with_event("Warning", "Unhealthy", "m", 7)
    assert [(e.message, e.count, e.first, e.last) for e in status.events] == [("other", 1, 6, 6), ("m", 3, 1, 7)]


def test_summary_is_kubectls() -> None:
    assert probe_summary(Probe(handler=TCP)) == "tcp-socket :22 delay=0s timeout=1s period=10s #success=1 #failure=3"
    http = Probe(handler=HTTPGetAction(port="web", path="/healthz"), initial_delay_seconds=5, timeout_seconds=2,
                 period_seconds=3, success_threshold=2, failure_threshold=4)
    assert probe_summary(http) == "http-get http://:web/healthz delay=5s timeout=2s period=3s #success=2 #failure=4"


# ------------------------------------------------------------------------------------------ checks, real servers


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(listener: socket.socket, behaviour: str, done: threading.Event | None = None) -> threading.Thread:
    """Accept one connection and ``close`` it at once, send a ``banner``, stay ``silent`` (reading until the
    client closes its side), or be ``deaf``: never read nor answer until ``done`` (slirp while the guest
    has not answered)."""
    def run() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):  # the client may reset the connection
            if behaviour == "banner":
                conn.sendall(b"SSH-2.0-test\r\n")
            if behaviour == "deaf" and done is not None:
                done.wait(10)
            while behaviour in ("banner", "silent") and conn.recv(4096):
                pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_tcp_connects(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert run_check(TCP, "127.0.0.1", port, 1.0) == OK


def test_tcp_refused() -> None:
    port = _free_port()
    outcome = run_check(TCP, "127.0.0.1", port, 1.0)
    assert outcome.result is Result.FAILURE
    assert f"dial tcp 127.0.0.1:{port}" in outcome.message
    assert "refused" in outcome.message


@pytest.mark.parametrize(("behaviour", "expected", "message"), [
    ("close", Result.FAILURE, "was closed at once (nothing listens on the guest port)"),
    ("banner", Result.SUCCESS, ""),
    ("silent", Result.SUCCESS, ""),
    ("deaf", Result.FAILURE, "the guest did not answer the forwarded connection within 0.5s"),
])
def test_tcp_through_a_forward(listener: socket.socket, behaviour: str, expected: Result, message: str) -> None:
    # slirp accepts every forwarded connection: a closed guest port closes it at once, a guest that
    # does not answer leaves it unread.
    done = threading.Event()
    thread = _serve(listener, behaviour, done)
    outcome = run_check(TCP, "127.0.0.1", listener.getsockname()[1], 0.5, via_forward=True)
    done.set()
    assert outcome.result is expected, outcome
    assert message in outcome.message
    thread.join(5)


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        _Handler.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        routes = {"/ok": (200, {}), "/fail": (500, {}), "/moved": (302, {"Location": "/ok"}),
                  "/moved-bad": (301, {"Location": "/fail"}), "/elsewhere": (302, {"Location": "http://example.test/"}),
                  "/loop": (302, {"Location": "/loop"}), "/notfound": (404, {}), "/nocontent": (204, {})}
        code, headers = routes.get(self.path.split("?")[0], (404, {}))
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "result", "message"), [
    ("/ok", Result.SUCCESS, ""),
    ("/nocontent", Result.SUCCESS, ""),
    ("/fail", Result.FAILURE, "HTTP probe failed with statuscode: 500"),
    ("/notfound", Result.FAILURE, "HTTP probe failed with statuscode: 404"),
    ("/moved", Result.SUCCESS, ""),
    ("/moved-bad", Result.FAILURE, "HTTP probe failed with statuscode: 500"),
    ("/elsewhere", Result.SUCCESS, "Probe terminated redirects"),
    ("/loop", Result.FAILURE, "stopped after 10 redirects"),
])
def test_http_status_codes_and_redirects(web: int, path: str, result: Result, message: str) -> None:
    outcome = run_check(HTTPGetAction(port=80, path=path), "127.0.0.1", web, 2.0)
    assert outcome.result is result
    assert message in outcome.message
    if not message:
        assert outcome.message == ""


def test_http_sends_the_probes_headers(web: int) -> None:
    handler = HTTPGetAction(port=80, path="/ok?x=1", http_headers=(HTTPHeader("X-Probe", "yes"),
                                                                    HTTPHeader("Host", "vm.example")))
    assert run_check(handler, "127.0.0.1", web, 2.0) == OK
    request = _Handler.seen[-1]
    assert request["path"] == "/ok?x=1"
    assert request["x-probe"] == "yes"
    assert request["host"] == "vm.example"
    assert request["user-agent"].startswith("vmpod-probe/")
    assert run_check(HTTPGetAction(port=80, path="ok"), "127.0.0.1", web, 2.0) == OK
    assert _Handler.seen[-1]["host"] == f"127.0.0.1:{web}"
    assert _Handler.seen[-1]["path"] == "/ok"


def test_http_server_that_never_answers_times_out(listener: socket.socket) -> None:
    thread = _serve(listener, "silent")
    outcome = run_check(HTTPGetAction(port=80), "127.0.0.1", listener.getsockname()[1], 1.0)
    assert outcome.result is Result.FAILURE
    assert "deadline exceeded" in outcome.message
    thread.join(5)


def test_http_refused_and_closed(listener: socket.socket) -> None:
    port = _free_port()
    refused = run_check(HTTPGetAction(port=80), "127.0.0.1", port, 1.0)
    assert refused.result is Result.FAILURE
    assert f'Get "http://127.0.0.1:{port}/"' in refused.message
    thread = _serve(listener, "close")
    closed = run_check(HTTPGetAction(port=80), "127.0.0.1", listener.getsockname()[1], 1.0)
    assert closed.result is Result.FAILURE
    thread.join(5)


def test_exec_is_unsupported_never_a_pass() -> None:
    outcome = run_check(ExecAction(command=("cat", "/ok")), "127.0.0.1", 1, 1.0)
    assert outcome == Outcome(Result.UNSUPPORTED, EXEC_UNSUPPORTED)


# ------------------------------------------------------------------------------------------ ports and forwards


def _pod(container_extra: str) -> VMPod:
    text = f"""
apiVersion: v1
kind: Pod
metadata: {{name: p, annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}}}
spec:
  containers:
  - name: vm
    image: file:///x.qcow2
{container_extra}
"""
    return attrs.evolve(load_manifest_text(text).pods[0], uid="00000001-0000-4000-8000-000000000001")


PORTS = """    ports:
    - {name: ssh, containerPort: 22}
    - {name: web, containerPort: 80, hostPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
    readinessProbe: {tcpSocket: {port: ssh}}
    livenessProbe: {httpGet: {port: 8000, path: /healthz}}"""


def test_probe_ports_and_forwards() -> None:
    pod = _pod(PORTS)
    assert probe_ports(pod) == (22, 8000)
    assert forwarded_ports(pod) == (("tcp", 22), ("tcp", 8000), ("udp", 53))  # 80 has its hostPort forward
    forwards = loopback_forwards(pod)
    assert [(f.protocol, f.guest_port) for f in forwards] == [("tcp", 22), ("tcp", 8000), ("udp", 53)]
    assert len({f.host_port for f in forwards}) == 3
    assert all(f.host_address == "127.0.0.1" and f.host_port > 0 for f in forwards)


def test_named_port_resolution() -> None:
    pod = _pod(PORTS)
    assert resolve_port(pod, "web", "f") == 80
    assert resolve_port(pod, 9, "f") == 9
    with pytest.raises(SpecError) as info:
        resolve_port(pod, "nope", "spec.containers[0].readinessProbe.tcpSocket.port")
    assert str(info.value).startswith("spec.containers[0].readinessProbe.tcpSocket.port")
    assert "ssh, web, dns" in str(info.value)


def test_a_bad_probe_port_name_is_a_spec_error() -> None:
    pod = _pod("    readinessProbe: {httpGet: {port: metrics}}")
    with pytest.raises(SpecError, match=r"livenessProbe|readinessProbe\.httpGet\.port"):
        probe_ports(pod)


def test_initial_status_of_exec_probes() -> None:
    pod = _pod("    readinessProbe: {exec: {command: [cat, /ok]}}\n    livenessProbe: {tcpSocket: {port: 22}}")
    status = initial_status(pod)
    assert status.readiness is not None
    assert not status.readiness.supported
    assert status.liveness is not None
    assert status.liveness.supported
    assert probe_ports(pod) == (22,)
    assert not is_ready(status, running=True, started_at=0)


def test_pod_endpoint_user_mode_and_cni() -> None:
    pod = _pod(PORTS)
    forwards = loopback_forwards(pod)
    machine = Machine(name="m", uuid=uuid.uuid4(), memory_bytes=1, vcpus=1, disk_bus=DiskDriver.SCSI, disks=(),
                      serial_log="/l", runtime_dir="/r", nics=(Nic(mac="52:54:00:00:00:01", forwards=forwards),))
    record = PodRecord(uid=pod.uid, namespace="default", name="p", labels={}, annotations_json="{}", backend="fake",
                       machine_name="m", state=SandboxState.READY, created_at=1, log_path="/l")
    ssh = next(f for f in forwards if f.guest_port == 22)
    assert pod_endpoint(record, machine, 22) == ("127.0.0.1", ssh.host_port)
    with pytest.raises(SpecError, match="guest port 23 of pod default/p has no port forward"):
        pod_endpoint(record, machine, 23)
    cni = attrs.evolve(record, pod_ip="10.1.2.3")
    assert pod_endpoint(cni, machine, 22) == ("10.1.2.3", 22)
    assert pod_endpoint(cni, None, 23) == ("10.1.2.3", 23)
