"""Time from start to the guest's first console line: vmpod's qemu backend against qemu started by hand.

Run from anywhere (as root: the tiny guest is built on first use)::

    python3 benchmarks/bench_qemu_boot.py [--rounds N] [--ready]

Both sides boot the tiny test guest (:mod:`vmpod.guests.tiny`) with the *same* qemu command
line (:func:`vmpod_qemu.argv.build_argv`), in the same run, alternating, so that both see the
same machine noise:

``vmpod``
    ``QemuBackend.start()`` (the machine already created: a state directory, its record), then
    the first line in the pod log, i.e. after the supervisor started qemu, read the serial
    output and appended the CRI log line;
``by hand``
    ``subprocess.run(argv)`` (qemu daemonizes and returns once the machine is set up), then the
    first line in ``serial.raw``, qemu's own copy of the serial output.

The first line is the guest's first non-empty console line (the boot loader's banner).  With
``--ready`` the time to the guest's ``VMPOD-READY`` line (a whole boot) is measured as well.
The aim: vmpod <= 1.05 x by hand + 100 ms.  On a busy host the spread of either side is larger
than vmpod's overhead; the median of the per-round differences (the two boots of a round run
back to back) is the steadiest figure.  Nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vmpod_qemu.argv import QemuPaths, build_argv  # noqa: E402
from vmpod_qemu.backend import QemuBackend  # noqa: E402
from vmpod_qemu.qmp import qmp_call  # noqa: E402

from tests.support.qemu import make_tiny_pod  # noqa: E402
from vmpod.backend import BackendConfig  # noqa: E402
from vmpod.guests.tiny import build_tiny_guest  # noqa: E402

POLL = 0.002


def wait_for(path: Path, predicate: Callable[[bytes], bool], timeout: float) -> float:
    """Poll ``path`` until ``predicate(content)``; returns ``time.perf_counter()`` at that moment."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        try:
            if predicate(path.read_bytes()):
                return now
        except FileNotFoundError:
            pass
        if now > deadline:
            raise TimeoutError(f"{path}: nothing after {timeout} s")
        time.sleep(POLL)


def first_line(data: bytes) -> bool:
    """A complete, non-empty console line (in a raw serial stream or a CRI log)."""
    for line in data.split(b"\n")[:-1]:
        text = line.rstrip(b"\r")
        if b" stdout " in text:
            text = text.split(b" ", 3)[3] if text.count(b" ") >= 3 else b""
        if text.strip():
            return True
    return False


def ready_line(data: bytes) -> bool:
    return b"VMPOD-READY" in data


def run_vmpod(work: Path, image: Path, index: int, ready: bool) -> tuple[float, float | None]:
    state = work / f"state-{index}"
    pod = make_tiny_pod(work / f"vmpod-pod-{index}", image, name=f"bench-{index}")
    backend = QemuBackend(BackendConfig(state_dir=str(state)))
    backend.create(pod.machine)
    try:
        start = time.perf_counter()
        backend.start(pod.machine.name)
        first = wait_for(pod.log, first_line, 120) - start
        whole = wait_for(pod.log, ready_line, 600) - start if ready else None
    finally:
        backend.destroy(pod.machine.name)
    return first, whole


def run_by_hand(work: Path, image: Path, index: int, accel: str, ready: bool) -> tuple[float, float | None]:
    pod = make_tiny_pod(work / f"hand-pod-{index}", image, name=f"hand-{index}")
    directory = work / f"hand-{index}"
    directory.mkdir()
    argv = build_argv(pod.machine, accel=accel, paths=QemuPaths(str(directory)))
    raw = directory / "serial.raw"
    start = time.perf_counter()
    subprocess.run(argv, cwd=directory, check=True, stdout=subprocess.DEVNULL)
    try:
        first = wait_for(raw, first_line, 120) - start
        whole = wait_for(raw, ready_line, 600) - start if ready else None
    finally:
        qmp_call(directory / "qmp.sock", ("quit", None))
        pid = int((directory / "qemu.pid").read_text()) if (directory / "qemu.pid").exists() else 0
        deadline = time.monotonic() + 10
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return first, whole


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    spread = f"{min(ms):7.0f} .. {max(ms):7.0f}"
    return f"{name:<34} {statistics.median(ms):8.0f} ms   ({spread} ms, n={len(ms)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="boots per side (default 5)")
    parser.add_argument("--ready", action="store_true", help="also time the whole boot (VMPOD-READY)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    image = build_tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="vmpod-bench-qemu-"))
    try:
        probe = QemuBackend(BackendConfig(state_dir=str(work / "probe")))
        accel = probe.accelerator()
        results: dict[str, list[float]] = {"vmpod": [], "hand": [], "vmpod_ready": [], "hand_ready": []}
        for index in range(args.rounds):
            order = ("vmpod", "hand") if index % 2 == 0 else ("hand", "vmpod")
            for side in order:
                if side == "vmpod":
                    first, whole = run_vmpod(work, image, index, args.ready)
                else:
                    first, whole = run_by_hand(work, image, index, accel, args.ready)
                results[side].append(first)
                if whole is not None:
                    results[f"{side}_ready"].append(whole)
        vmpod, hand = statistics.median(results["vmpod"]), statistics.median(results["hand"])
        print(f"tiny guest, qemu with {accel}, {args.rounds} boots per side, alternating")
        print(summary("vmpod start -> first console line", results["vmpod"]))
        print(summary("by hand     -> first console line", results["hand"]))
        paired = statistics.median(v - h for v, h in zip(results["vmpod"], results["hand"], strict=True))
        print(f"ratio of medians: {vmpod / hand:.3f}; difference of medians {1000 * (vmpod - hand):+.0f} ms, "
              f"median of per-round differences {1000 * paired:+.0f} ms, of minimums "
              f"{1000 * (min(results['vmpod']) - min(results['hand'])):+.0f} ms")
        print(f"aim: vmpod <= 1.05 x hand + 100 ms = {1000 * (1.05 * hand + 0.1):.0f} ms: "
              f"{'met' if vmpod <= 1.05 * hand + 0.1 else 'NOT met'}")
        if args.ready:
            print(summary("vmpod start -> VMPOD-READY", results["vmpod_ready"]))
            print(summary("by hand     -> VMPOD-READY", results["hand_ready"]))
        if args.json:
            print(json.dumps({"accel": accel, **results}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
