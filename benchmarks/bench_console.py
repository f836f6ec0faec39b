"""Console round trip through the console monitor against qemu's own console socket, and log latency.

Run from anywhere (as root: the tiny guest is built on first use)::

    python3 benchmarks/bench_console.py [--rounds 200] [--batches 3]

One tiny test guest (:mod:`vmpod.guests.tiny`: an interactive busybox shell on its serial
console) on the qemu backend.  In each batch, back to back, so that both sides see the same
machine noise:

``attach.sock``
    what ``vmpod attach`` uses: the console monitor in the machine's supervisor
    (:mod:`vmpod.consolemux`), which holds qemu's ``console.sock`` and relays both ways;
``console.sock``
    qemu's console socket directly: the supervisor is killed first (qemu's socket takes one
    client, and the monitor is it), then restarted by the backend's next ``status`` as after any
    crash; the guest never notices.

Round trip: one keystroke (``x``) written to the socket until its echo (by the guest's shell
line editor) is read back; ``--rounds`` of them per side and batch, the line cleared (Ctrl-U)
every 30 keystrokes.  Log latency (``attach.sock`` phase): the guest's answer to ``echo`` seen
by the attach client, until its CRI line is in the pod log on disk (what the supervisor writes
from qemu's ``serial.raw``), and, for comparison, until it is in ``serial.raw`` (qemu's own
write).  Nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vmpod_qemu.argv import CONSOLE_SOCKET  # noqa: E402
from vmpod_qemu.backend import QemuBackend  # noqa: E402

from tests.support.qemu import make_tiny_pod  # noqa: E402
from vmpod.backend import BackendConfig  # noqa: E402
from vmpod.consolelog import SERIAL_RAW  # noqa: E402
from vmpod.consolemux import connect_unix  # noqa: E402
from vmpod.guests.tiny import build_tiny_guest  # noqa: E402
from vmpod.procutil import ProcessIdentity, read_json  # noqa: E402

_CLEAR_EVERY = 30


def _wait_file(path: Path, text: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_bytes()):
        if time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} in {path} after {timeout:.0f} s")
        time.sleep(0.2)


def _read_until(sock: socket.socket, wanted: bytes, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while wanted not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"the console closed before {wanted!r}")
        data += chunk
    return data


def _drain(sock: socket.socket, quiet: float = 0.3) -> None:
    sock.settimeout(quiet)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pass


def keystrokes(sock: socket.socket, rounds: int) -> list[float]:
    """Seconds from writing ``x`` to reading its echo, ``rounds`` times."""
    _drain(sock)
    times = []
    for index in range(rounds):
        if index and index % _CLEAR_EVERY == 0:
            sock.sendall(b"\x15")  # Ctrl-U: clear the line (not measured)
            _drain(sock)
        start = time.perf_counter()
        sock.sendall(b"x")
        _read_until(sock, b"x")
        times.append(time.perf_counter() - start)
    sock.sendall(b"\x15")
    _drain(sock)
    return times


class _Tail:
    """New bytes of a growing file, read by offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size
        self.data = b""

    def wait_for(self, text: bytes, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while text not in self.data:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
            self.offset += len(chunk)
            self.data += chunk
            if text in self.data:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"no {text!r} in {self.path}")
            time.sleep(0.0005)
        return time.perf_counter()


def log_latency(sock: socket.socket, log: Path, raw: Path, lines: int) -> tuple[list[float], list[float]]:
    """Per line: seconds from the attach client seeing it to (its CRI line in the log, it in ``serial.raw``)."""
    to_log, to_raw = [], []
    for index in range(lines):
        _drain(sock, 0.2)
        log_tail, raw_tail = _Tail(log), _Tail(raw)
        answer = f"lat-{index}-{index * 7}".encode()
        sock.sendall(f"echo lat-{index}-$(({index}*7))\n".encode())
        _read_until(sock, answer + b"\r\n")
        seen = time.perf_counter()
        in_raw = raw_tail.wait_for(answer + b"\r\n")
        in_log = log_tail.wait_for(b" stdout F " + answer + b"\n")
        to_log.append(in_log - seen)
        to_raw.append(in_raw - seen)
    return to_log, to_raw


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(values) * 1000:.3f} ms, p90 {p90 * 1000:.3f} ms (n={len(values)})"


def _kill_supervisor(directory: Path) -> None:
    keeper = ProcessIdentity.from_run(read_json(directory / "run.json") or {}, prefix="supervisor_")
    if keeper is None or not keeper.send(signal.SIGKILL) or not keeper.wait(10):
        raise SystemExit("could not kill the supervisor")


def _with_retry(connect: Callable[[], socket.socket]) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return connect()
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="keystrokes per side and batch")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--lines", type=int, default=20, help="log-latency lines per batch")
    args = parser.parse_args()
    image = build_tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="vmpod-bench-console-"))
    backend = QemuBackend(BackendConfig(state_dir=str(work / "state")))
    pod = make_tiny_pod(work / "pod", image, name="bench-console", vnc=False)
    name = pod.machine.name
    directory = backend.root / name
    via_mux: list[float] = []
    direct: list[float] = []
    to_log: list[float] = []
    to_raw: list[float] = []
    try:
        backend.create(pod.machine)
        backend.start(name)
        _wait_file(pod.log, b"VMPOD-READY", 600)
        _wait_file(directory / SERIAL_RAW, b"/ # ", 120)
        for batch in range(args.batches):
            backend.status(name)  # restarts the supervisor killed by the previous batch
            with _with_retry(lambda: connect_unix(backend.console(name).path)) as sock:
                via_mux += keystrokes(sock, args.rounds)
                logged, raw = log_latency(sock, pod.log, directory / SERIAL_RAW, args.lines)
                to_log += logged
                to_raw += raw
            _kill_supervisor(directory)
            with _with_retry(lambda: connect_unix(directory / CONSOLE_SOCKET)) as sock:
                direct += keystrokes(sock, args.rounds)
            print(f"batch {batch + 1}: attach.sock {_ms(via_mux[-args.rounds:])}; "
                  f"console.sock {_ms(direct[-args.rounds:])}", flush=True)
        backend.status(name)
    finally:
        backend.destroy(name)
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(via_mux) / statistics.median(direct)
    extra_ms = 1000 * (statistics.median(via_mux) - statistics.median(direct))
    print(f"keystroke round trip via attach.sock (console monitor): {_ms(via_mux)}")
    print(f"keystroke round trip via console.sock (qemu directly):  {_ms(direct)}")
    print(f"ratio of medians: {ratio:.3f}, difference {extra_ms:+.3f} ms")
    print(f"guest line seen by the attach client -> CRI line in the pod log: {_ms(to_log)}")
    print(f"guest line seen by the attach client -> in serial.raw (qemu's write): {_ms(to_raw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
