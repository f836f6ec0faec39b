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

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vmpod_libvirt import connection as lv  # noqa: E402
from vmpod_libvirt.backend import LibvirtBackend  # noqa: E402
from vmpod_libvirt.domain import domain_xml  # noqa: E402
from vmpod_libvirt.testing import ensure_daemons, shared_dir  # noqa: E402

from tests.support.qemu import make_tiny_pod  # noqa: E402
from vmpod.backend import BackendConfig, MachineState  # noqa: E402
from vmpod.guests.tiny import build_tiny_guest  # noqa: E402

NAME = "vmpod-bench-libvirt"


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
        backend.close()
        lv.close_quietly(conn)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    ratios = [v / r for v, r in zip(times["vmpod"], times["virsh create"], strict=True)]
    result = {
        "rounds": args.rounds,
        "median_s": {side: round(statistics.median(values), 4) for side, values in times.items()},
        "median_ratio_vmpod_to_virsh_create": round(statistics.median(ratios), 3),
        "ratio_of_medians_vmpod_to_virsh_create": round(statistics.median(times["vmpod"])
                                                        / statistics.median(times["virsh create"]), 3),
        "ratio_of_medians_vmpod_to_createXML": round(statistics.median(times["vmpod"])
                                                     / statistics.median(times["createXML"]), 3),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
