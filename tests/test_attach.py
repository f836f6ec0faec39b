"""``vmpod attach`` on the real tiny guest (an interactive busybox shell on its serial console), on qemu and libvirt.

Through the installed ``vmpod`` command, for one pod per backend:

* ``vmpod attach POD`` over a pipe sends ``echo attach-<random>-$((6*7))`` and receives the line
  *evaluated* by the guest's shell (``attach-<random>-42``), then exits 0 after ``--linger``;
* two ``vmpod attach`` at once: each sees what the other typed, and the answers to both;
* the console monitor (the qemu supervisor, the libvirt log follower) killed with SIGKILL: the VM
  keeps running, the next ``vmpod`` command starts a new monitor, attach works again, and the pod
  log holds every line of the raw serial file exactly once, in order (nothing lost or doubled
  across the restart);
* an unknown pod is a one-line error, and so is a pod whose VM is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cli import backend_cli, tiny_manifest, wait_for_log
from vmpod.consolelog import SERIAL_RAW, parse_record
from vmpod.procutil import ProcessIdentity, read_json
from vmpod.runtime import Runtime

pytestmark = pytest.mark.guest

Runner = Callable[..., subprocess.CompletedProcess[str]]


class Client:
    """A background ``vmpod attach`` whose stdin stays open; its output collected as it comes."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            self.output += chunk

    def type(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no {text!r} from vmpod attach (exit {self.process.poll()}): "
                                     f"{bytes(self.output[-2000:])!r}")
            time.sleep(0.05)

    def finish(self) -> tuple[int, bytes]:
        """Close stdin (end of input); wait for the linger to end; ``(exit code, stderr)``."""
        assert self.process.stdin is not None
        assert self.process.stderr is not None
        self.process.stdin.close()
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        with self.process.stdout or contextlib.nullcontext(), self.process.stderr:
            return code, self.process.stderr.read()


def attach_once(argv: list[str], name: str, text: str, linger: float = 3) -> str:
    """``vmpod attach NAME`` over a pipe: sends ``text``, returns what came back (asserts exit 0)."""
    result = subprocess.run([*argv, "attach", name, "--linger", str(linger)], input=text, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def evaluated(argv: list[str], name: str, tries: int = 5) -> str:
    """Type ``echo <token>-$((6*7))`` and return ``<token>`` once the shell's answer (``<token>-42``) came back."""
    token = f"attach-{secrets.token_hex(4)}"
    output = ""
    for _ in range(tries):  # the shell may still be starting: a first line can go to nobody
        output = attach_once(argv, name, f"echo {token}-$((6*7))\n")
        if f"{token}-42" in output:
            return token
    raise AssertionError(f"the guest's shell never answered {token}: {output[-2000:]!r}")


def log_lines(log: Path) -> list[bytes]:
    """The complete lines of a CRI log, partial records joined."""
    lines, pending = [], b""
    for record in log.read_bytes().splitlines():
        line = parse_record(record)
        if line.partial:
            pending += line.content
        else:
            lines.append(pending + line.content.rstrip(b"\n"))
            pending = b""
    return lines


def raw_lines(raw: Path) -> list[bytes]:
    """The complete lines the guest wrote to its serial port, as the log writer ends them."""
    return [line.rstrip(b"\r") for line in raw.read_bytes().split(b"\n")[:-1]]


def assert_log_matches_raw(log: Path, raw: Path, timeout: float = 30) -> None:
    """Every complete line of ``raw`` is in ``log`` exactly once and in order (the writer may lag a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        expected, got = raw_lines(raw), log_lines(log)
        if got == expected:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(got) == len(expected), f"{len(got)} log lines for {len(expected)} serial lines"
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"line {index}: log {mine!r} != serial {theirs!r}"


def _new_monitor(monitor: Callable[[], ProcessIdentity | None], old: ProcessIdentity,
                 timeout: float = 60) -> ProcessIdentity:
    """The monitor that replaced ``old`` (a detached process: it may take a moment to record itself)."""
    deadline = time.monotonic() + timeout
    while True:
        found = monitor()
        if found is not None and found.pid != old.pid and found.alive():
            return found
        assert time.monotonic() < deadline, f"no new console monitor replaced pid {old.pid}"
        time.sleep(0.1)


def _scenario(run: Runner, argv: list[str], state: Path, tmp_path: Path, name: str, *,
              monitor: Callable[[], ProcessIdentity | None], raw: Callable[[], Path]) -> None:
    from vmpod.guests.tiny import build_tiny_guest  # noqa: PLC0415

    manifest = tiny_manifest(tmp_path / "pod.yaml", build_tiny_guest(), [name])
    created = run("run", str(manifest))
    assert created.returncode == 0, created.stderr
    try:
        wait_for_log(state, name, "VMPOD-READY", timeout=600)
        with Runtime.open(state, readonly=True) as runtime:
            log = Path(runtime.get(name).log_path)

        # One client over a pipe: the line goes in, the shell's evaluated answer comes back.
        evaluated(argv, name)

        # Two clients at once: both see both.
        first, second = Client([*argv, "attach", name, "--linger", "2"]), Client([*argv, "attach", name])
        try:
            one, two = f"one-{secrets.token_hex(3)}", f"two-{secrets.token_hex(3)}"
            first.type(f"echo {one}-$((1+1))\n")
            first.wait_for(f"{one}-2")
            second.type(f"echo {two}-$((2+2))\n")
            second.wait_for(f"{two}-4")
            first.wait_for(f"{two}-4")  # the other client's answer
            both = f"both-{secrets.token_hex(3)}"
            first.type(f"echo {both}-$((3+3))\n")
            first.wait_for(f"{both}-6")
            second.wait_for(f"{both}-6")
        finally:
            results = [first.finish(), second.finish()]
        assert [code for code, _ in results] == [0, 0], results

        # Kill the console monitor: the VM runs on; the next command brings a new monitor.
        old = monitor()
        assert old is not None
        assert old.alive()
        assert old.send(signal.SIGKILL)
        assert old.wait(10)
        table = run("get", name)
        assert table.returncode == 0, table.stderr
        assert "Running" in table.stdout, table.stdout
        new = _new_monitor(monitor, old)
        evaluated(argv, name)
        assert new.alive(), "attach must not start yet another monitor"
        assert monitor() == new
        assert_log_matches_raw(log, raw())
    finally:
        deleted = run("delete", name)
    assert deleted.returncode == 0, deleted.stderr
    gone = run("attach", name)
    assert gone.returncode == 1
    assert gone.stderr.strip().splitlines() == [f'vmpod: error: pod "{name}" not found in namespace "default"'], \
        gone.stderr


def _qemu_machine_dir(state: Path) -> Path:
    (directory,) = (state / "backends" / "qemu" / "machines").iterdir()
    return directory


def test_attach_on_qemu(tmp_path: Path) -> None:
    from tests.support.cli import leftovers  # noqa: PLC0415

    state = tmp_path / "state"
    run, argv = backend_cli(state, "qemu")

    def monitor() -> ProcessIdentity | None:
        return ProcessIdentity.from_run(read_json(_qemu_machine_dir(state) / "run.json") or {}, prefix="supervisor_")

    _scenario(run, argv, state, tmp_path, "attach-q",
              monitor=monitor, raw=lambda: _qemu_machine_dir(state) / SERIAL_RAW)
    assert leftovers(state) == []


@pytest.fixture
def libvirt_state() -> Iterator[Path]:
    from tests.support.libvirtstate import libvirt_state_dir  # noqa: PLC0415

    with libvirt_state_dir("vmpod-attach-") as state:
        yield state


def test_attach_on_libvirt(libvirt_state: Path, tmp_path: Path) -> None:
    from vmpod_libvirt.records import FOLLOWER_FILE  # noqa: PLC0415
    from vmpod_libvirt.testing import ensure_daemons  # noqa: PLC0415

    from tests.support.libvirtstate import domains  # noqa: PLC0415

    state = libvirt_state
    daemons = ensure_daemons()
    run, argv = backend_cli(state, "libvirt")

    def runtime_dir() -> Path:
        with Runtime.open(state, readonly=True) as runtime:
            machine = runtime.machine(runtime.get("attach-l"))
        assert machine is not None
        return Path(machine.runtime_dir)

    def monitor() -> ProcessIdentity | None:
        return ProcessIdentity.from_run(read_json(runtime_dir() / FOLLOWER_FILE) or {})

    _scenario(run, argv, state, tmp_path, "attach-l",
              monitor=monitor, raw=lambda: runtime_dir() / SERIAL_RAW)
    assert domains(state.parent.name, daemons) == []
