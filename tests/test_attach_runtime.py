"""Attaching to a pod's console on the fake backend (an echoing console): the runtime API, the console
monitor's fan-out and back-pressure rules, and the ``vmpod attach`` command's errors and pipe mode."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.support.runtime_pods import make_pod
from vmpod.consolemux import ConsoleMux, bind_attach_socket, connect_unix
from vmpod.errors import InvalidTransition, NotFoundError
from vmpod.plugins import get_plugin_manager
from vmpod.runtime import Runtime


def receive(sock: socket.socket, until: bytes, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {until!r}: {data!r}"
        data += chunk
    return data


def test_attach_endpoint_of_a_running_pod_echoes_to_every_client(runtime: Runtime, image: Path) -> None:
    record = runtime.run_pod(make_pod(image, 1))
    endpoint = runtime.attach_endpoint(record.uid)
    assert endpoint.kind == "unix"
    assert os.stat(endpoint.path).st_mode & 0o777 == 0o600
    with connect_unix(endpoint.path) as first, connect_unix(endpoint.path) as second:
        first.sendall(b"from-first\n")
        second.sendall(b"from-second\n")
        for client in (first, second):
            seen = receive(client, b"from-second\n")
            assert b"from-first\n" in seen
    runtime.stop_container(record.uid, timeout=1)
    with pytest.raises(InvalidTransition, match="not running"):
        runtime.attach_endpoint(record.uid)
    with pytest.raises(NotFoundError):
        runtime.attach_endpoint("no-such-uid")


def test_a_client_that_stops_reading_is_dropped_and_never_stalls_the_others(tmp_path: Path) -> None:
    """The console writes 8 MiB; one client never reads: it is dropped, the other one gets every byte."""
    console, guest = socket.socketpair()
    mux = ConsoleMux(bind_attach_socket(tmp_path / "attach.sock"), console.detach, reopen=False,
                     client_buffer=256 << 10).start()
    try:
        with connect_unix(tmp_path / "attach.sock") as stuck, connect_unix(tmp_path / "attach.sock") as reader:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            while len(mux.clients) < 2:
                time.sleep(0.01)
            block = bytes(range(256)) * 256
            reader.settimeout(30)
            for _ in range((8 << 20) // len(block)):
                guest.sendall(block)
                received = 0
                while received < len(block):
                    chunk = reader.recv(len(block) - received)
                    assert chunk, "the reading client was disconnected"
                    received += len(chunk)
            assert len(mux.clients) == 1, "the client that did not read is still attached"
            stuck.settimeout(10)
            while stuck.recv(65536):
                pass  # what was queued for it, then the end: it was disconnected
    finally:
        mux.close()
        guest.close()


def test_a_closed_console_is_reopened(tmp_path: Path) -> None:
    """qemu's console socket dropped (or qemu restarted it): the monitor connects again, clients stay."""
    server_path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(server_path))
    server.listen(1)
    from vmpod.consolemux import open_unix  # noqa: PLC0415

    mux = ConsoleMux(bind_attach_socket(tmp_path / "attach.sock"), open_unix(server_path)).start()
    try:
        with connect_unix(tmp_path / "attach.sock") as client:
            first, _ = server.accept()
            first.sendall(b"before\n")
            receive(client, b"before\n")
            first.close()
            second, _ = server.accept()  # the monitor came back by itself
            with second:
                client.sendall(b"typed\n")
                second.settimeout(10)
                assert second.recv(100) == b"typed\n"
                second.sendall(b"after\n")
                receive(client, b"after\n")
    finally:
        mux.close()
        server.close()


def vmpod_fake(state: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["vmpod", "--state-dir", str(state), "--backend", "fake", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def test_vmpod_attach_over_a_pipe_and_its_errors(tmp_path: Path, image: Path) -> None:
    state = tmp_path / "state"
    missing = vmpod_fake(state, "attach", "nothing")
    assert (missing.returncode, missing.stderr) == (1, 'vmpod: error: pod "nothing" not found in namespace "default"\n')
    with Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager()) as runtime:
        record = runtime.run_pod(make_pod(image, 2))
    echoed = vmpod_fake(state, "attach", "vm2", "--linger", "1", stdin="echo hello\n")
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout == "echo hello\n"
    bad = vmpod_fake(state, "attach", "vm2", "--linger", "-1")
    assert bad.returncode == 1
    assert "--linger" in bad.stderr
    assert "Traceback" not in bad.stderr
    with Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager()) as runtime:
        runtime.stop_container(record.uid, timeout=1)
    stopped = vmpod_fake(state, "attach", "vm2")
    assert stopped.returncode == 1
    assert stopped.stderr == 'vmpod: error: the VM of pod "default/vm2" is stopped, not running\n', stopped.stderr


def test_vmpod_attach_on_a_terminal_is_raw_and_ctrl_bracket_detaches(tmp_path: Path, image: Path) -> None:
    state = tmp_path / "state"
    with Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager()) as runtime:
        runtime.run_pod(make_pod(image, 3))
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(["vmpod", "--state-dir", str(state), "--backend", "fake", "attach", "vm3"],
                                   stdin=slave, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        deadline = time.monotonic() + 60
        while termios.tcgetattr(master)[3] & termios.ICANON:  # until it put the terminal in raw mode
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the terminal never went raw"
            time.sleep(0.05)
        os.write(master, b"typed^C\x03")
        seen = b""
        while b"typed^C\x03" not in seen:  # the console's echo (a raw terminal echoes nothing itself)
            assert select.select([master], [], [], 30)[0], f"no echo: {seen!r}"
            seen += os.read(master, 1024)
        os.write(master, b"\x1d")
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        with process.stderr:
            assert "Ctrl-] detaches" in process.stderr.read().decode()
        assert termios.tcgetattr(master)[3] & termios.ICANON, "the terminal was not restored"
    finally:
        os.close(master)
