"""Time from create + start to a running domain: vmpod's libvirt backend against ``virsh create``.

Run from anywhere, as root (libvirtd and virtlogd are started when none runs)::

    python3 benchmarks/bench_libvirt.py [--rounds N] [--json]

Every side starts the *same* domain XML (:func:`vmpod_libvirt.domain.domain_xml` of the tiny
test guest's machine: overlay root disk, a seed ISO, serial log through virtlogd), in the same
run, one after the other within each round (the order alternates between rounds), so that all
see the same machine noise:

``vmpod``
    ``LibvirtBackend.create(machine)`` + ``start(name)``: returns once libvirt reports the domain
    running (define, start, run records, the log follower spawned);
``virsh create``
    ``virsh -c URI create domain.xml`` (a transient domain), a new process per round as a user
    would run it; it returns once the domain runs;
``createXML``
    libvirt-python's ``virConnectCreateXML`` on an open connection: the floor, no process start.

After each measurement the domain is destroyed (and undefined) before the next one.  The aim:
vmpod <= 1.10 x ``virsh create``.  The median of each side and the median of the per-round
ratios are printed; nothing asserts on times.

Boot to console-ready (``--ready-rounds N``, default 3; 0 skips it): the whole boot of the tiny
guest, from the first call to its ``VMPOD-READY`` console line, same XML, same run, alternating:

``vmpod``
    ``create`` + ``start``, then the line in the pod log (the CRI log ``vmpod logs`` shows, written by
    the backend's log follower from virtlogd's ``serial.raw``);
``virsh create``
    ``virsh create domain.xml``, then the line in ``serial.raw`` (virtlogd's copy of the serial
    console), as somebody using plain libvirt would watch it.

The aim: vmpod <= ``virsh create`` + 0.5 s (the follower's polling and the CRI log write).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vmpod_libvirt import connection as lv  # noqa: E402
from vmpod_libvirt.backend import LibvirtBackend  # noqa: E402
from vmpod_libvirt.domain import domain_xml  # noqa: E402
from vmpod_libvirt.records import SERIAL_RAW  # noqa: E402
from vmpod_libvirt.testing import ensure_daemons, shared_dir  # noqa: E402

from tests.support.qemu import make_tiny_pod  # noqa: E402
from vmpod.backend import BackendConfig, MachineState  # noqa: E402
from vmpod.guests.tiny import build_tiny_guest  # noqa: E402

NAME = "vmpod-bench-libvirt"
READY = b"VMPOD-READY"
POLL = 0.005
READY_TIMEOUT = 300.0


def wait_for_text(path: Path, text: bytes, timeout: float = READY_TIMEOUT) -> float:
    """Poll ``path`` until it contains ``text``; ``time.perf_counter()`` at that moment."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        with contextlib.suppress(FileNotFoundError):
            if text in path.read_bytes():
                return now
        if now >= deadline:
            raise RuntimeError(f"no {text!r} in {path} after {timeout:.0f} s")
        time.sleep(POLL)


def remove(conn: lv.Connect, name: str) -> None:
    """Destroy and undefine ``name`` if it exists (either kind of domain)."""
    try:
        domain = conn.lookupByName(name)
    except lv.LibvirtError:
        return
    if domain.isActive():
        domain.destroy()
    with contextlib.suppress(lv.LibvirtError):  # a transient domain is gone once destroyed
        domain.undefineFlags(lv.UNDEFINE_ALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--ready-rounds", type=int, default=3,
                        help="rounds of boot to VMPOD-READY on the console (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    daemons = ensure_daemons()
    base = shared_dir("vmpod-bench-libvirt-")
    try:
        image = base / "tiny.qcow2"
        shutil.copyfile(build_tiny_guest(), image)
        image.chmod(0o444)
        pod = make_tiny_pod(base / "pod", image, name=NAME, vnc=False)
        backend = LibvirtBackend(BackendConfig(state_dir=str(base / "state"), options={"uri": daemons.uri}))
        xml_file = base / "domain.xml"
        xml_file.write_text(domain_xml(pod.machine, backend.accelerator()))
        conn = lv.open_connection(daemons.uri)
        remove(conn, NAME)

        def vmpod_side() -> float:
            started = time.perf_counter()
            backend.create(pod.machine)
            status = backend.start(NAME)
            elapsed = time.perf_counter() - started
            assert status.state is MachineState.RUNNING
            backend.destroy(NAME)
            return elapsed

        def virsh_side() -> float:
            started = time.perf_counter()
            subprocess.run(["virsh", "-q", "-c", daemons.uri, "create", str(xml_file)], check=True,
                           stdout=subprocess.DEVNULL)
            elapsed = time.perf_counter() - started
            assert conn.lookupByName(NAME).isActive()
            remove(conn, NAME)
            return elapsed

        def api_side() -> float:
            started = time.perf_counter()
            conn.createXML(xml_file.read_text(), 0)
            elapsed = time.perf_counter() - started
            remove(conn, NAME)
            return elapsed

        sides: dict[str, Callable[[], float]] = {"vmpod": vmpod_side, "virsh create": virsh_side,
                                                 "createXML": api_side}
        times: dict[str, list[float]] = {side: [] for side in sides}
        vmpod_side()  # warm-up: libvirt's first start of a domain loads what it caches
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for side in order:
                times[side].append(sides[side]())

        serial_raw = Path(pod.machine.runtime_dir) / SERIAL_RAW

        def clear_logs() -> None:
            for path in (serial_raw, pod.log):
                path.unlink(missing_ok=True)

        vmpod_serial_raw: list[float] = []  # vmpod's boots, the line in serial.raw (not yet in the pod log)

        def vmpod_ready() -> float:
            clear_logs()
            started = time.perf_counter()
            backend.create(pod.machine)
            backend.start(NAME)
            in_serial_raw = wait_for_text(serial_raw, READY) - started
            elapsed = wait_for_text(pod.log, READY) - started
            backend.destroy(NAME)
            vmpod_serial_raw.append(in_serial_raw)
            return elapsed

        def virsh_ready() -> float:
            clear_logs()
            started = time.perf_counter()
            subprocess.run(["virsh", "-q", "-c", daemons.uri, "create", str(xml_file)], check=True,
                           stdout=subprocess.DEVNULL)
            elapsed = wait_for_text(serial_raw, READY) - started
            remove(conn, NAME)
            return elapsed

        ready_sides: dict[str, Callable[[], float]] = {"vmpod": vmpod_ready, "virsh create": virsh_ready}
        ready: dict[str, list[float]] = {side: [] for side in ready_sides}
        for round_index in range(args.ready_rounds):
            order = list(ready_sides) if round_index % 2 == 0 else list(reversed(ready_sides))
            for side in order:
                ready[side].append(ready_sides[side]())
        backend.close()
        lv.close_quietly(conn)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    ratios = [v / r for v, r in zip(times["vmpod"], times["virsh create"], strict=True)]
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "median_s": {side: round(statistics.median(values), 4) for side, values in times.items()},
        "median_ratio_vmpod_to_virsh_create": round(statistics.median(ratios), 3),
        "ratio_of_medians_vmpod_to_virsh_create": round(statistics.median(times["vmpod"])
                                                        / statistics.median(times["virsh create"]), 3),
        "ratio_of_medians_vmpod_to_createXML": round(statistics.median(times["vmpod"])
                                                     / statistics.median(times["createXML"]), 3),
    }
    if args.ready_rounds:
        differences = [v - r for v, r in zip(ready["vmpod"], ready["virsh create"], strict=True)]
        result["ready"] = {
            "rounds": args.ready_rounds,
            "median_s": {side: round(statistics.median(values), 3) for side, values in ready.items()},
            "min_s": {side: round(min(values), 3) for side, values in ready.items()},
            "max_s": {side: round(max(values), 3) for side, values in ready.items()},
            "median_difference_s_vmpod_minus_virsh_create": round(statistics.median(differences), 3),
            "vmpod_median_s_in_serial_raw": round(statistics.median(vmpod_serial_raw), 3),
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for side, values in times.items():
            print(f"{side:13s} median {statistics.median(values) * 1000:7.1f} ms  "
                  f"min {min(values) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms")
        print(f"vmpod / virsh create: median of per-round ratios {result['median_ratio_vmpod_to_virsh_create']}, "
              f"ratio of medians {result['ratio_of_medians_vmpod_to_virsh_create']} (aim <= 1.10)")
        print(f"vmpod / createXML (no process start): ratio of medians {result['ratio_of_medians_vmpod_to_createXML']}")
        if args.ready_rounds:
            print(f"boot to {READY.decode()} on the console, {args.ready_rounds} rounds:")
            for side, values in ready.items():
                print(f"  {side:13s} median {statistics.median(values):7.3f} s  min {min(values):7.3f} s  "
                      f"max {max(values):7.3f} s")
            in_raw = result["ready"]["vmpod_median_s_in_serial_raw"]
            print(f"  (vmpod: the line in serial.raw after a median {in_raw:.3f} s)")
            print(f"  vmpod - virsh create: median of per-round differences "
                  f"{result['ready']['median_difference_s_vmpod_minus_virsh_create']:+.3f} s (aim <= +0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
