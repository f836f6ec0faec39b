"""Memory of vmpod itself while 20 VM pods run on the qemu backend, next to qemu's.

Run from anywhere (as root: the tiny guest is built on first use)::

    python3 benchmarks/bench_qemu_memory.py [--pods 20] [--memory 96Mi] [--json]

One manifest, a StatefulSet of ``--pods`` replicas of the tiny test guest (:mod:`vmpod.guests.tiny`)
with a small memory limit, is run with the real ``vmpod run --wait`` on a private state directory;
once every guest printed ``VMPOD-READY`` (so each qemu holds a booted guest), the RSS and PSS
(``/proc/<pid>/smaps_rollup``) of every process of the state directory are read and split into

``qemu``
    the ``qemu-system-x86_64`` processes (guest RAM included, as far as the guest touched it);
``vmpod per-VM``
    everything else whose command line names a machine directory: the per-machine supervisor,
    which also writes the pod's console log;

and a ``vmpod get -o wide`` process is measured while it lists the pods (its peak RSS from
``wait4``, its largest PSS sampled every millisecond).  PSS splits shared pages (the Python
interpreter, libraries) between the processes that map them, so the PSS total is what the
processes cost together; RSS counts shared pages in every process.  Every pod is deleted at the
end, also on failure.  Nothing here asserts on figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.qemu import destroy_all, pids_mentioning  # noqa: E402
from vmpod.guests.tiny import build_tiny_guest  # noqa: E402

MANIFEST = """\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: mem
spec:
  serviceName: mem
  replicas: {replicas}
  selector:
    matchLabels:
      app: mem
  template:
    metadata:
      labels:
        app: mem
      annotations:
        kubernetes.io/target-runtime: virtlet.cloud
        VirtletRootVolumeSize: 256Mi
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: tiny
        image: file://{image}
        resources:
          limits:
            memory: {memory}
"""


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in KiB from ``smaps_rollup``, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0])
    return values.get("Rss", 0), values.get("Pss", 0)


def argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def vmpod(state: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    script = shutil.which("vmpod")
    if script is None:
        raise SystemExit("the vmpod console script is not installed (bash scripts/setup.sh)")
    env = {k: v for k, v in os.environ.items() if k not in ("VMPOD_BACKEND", "VMPOD_FAULT_POINT")}
    return subprocess.run([script, "--state-dir", str(state), "--backend", "qemu", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)


def wait_ready(state: Path, names: list[str], timeout: float) -> float:
    """Wait until every pod's console log has ``VMPOD-READY``; returns the seconds it took."""
    started = time.monotonic()
    pending = set(names)
    logs = state / "logs"
    while pending:
        for log in logs.iterdir() if logs.is_dir() else ():
            name = log.name.split("_")[1] if log.name.count("_") >= 3 else ""
            if name in pending and b"VMPOD-READY" in log.read_bytes():
                pending.discard(name)
        if not pending:
            break
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not ready after {timeout} s: {sorted(pending)}")
        time.sleep(1)
    return time.monotonic() - started


def measure_get(state: Path) -> dict[str, Any]:
    """Run ``vmpod get -o wide``; its peak RSS (wait4) and the largest PSS sampled while it ran."""
    script = shutil.which("vmpod")
    assert script is not None
    started = time.monotonic()
    process = subprocess.Popen([script, "--state-dir", str(state), "--backend", "qemu", "get", "-o", "wide"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak_pss = peak_rss = 0
    maxrss = 0
    while True:
        sample = memory_kib(process.pid)
        if sample is not None:
            peak_rss, peak_pss = max(peak_rss, sample[0]), max(peak_pss, sample[1])
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            maxrss = usage.ru_maxrss
            break
        time.sleep(0.001)
    output = process.stdout.read().decode() if process.stdout else ""
    return {"seconds": round(time.monotonic() - started, 3), "rows": len(output.splitlines()) - 1,
            "sampled_peak_rss_kib": peak_rss, "sampled_peak_pss_kib": peak_pss,
            "children_maxrss_kib": maxrss}


def snapshot(state: Path) -> dict[str, dict[str, int]]:
    """Per-class totals and counts of the processes of ``state``'s machines."""
    machines = state / "backends" / "qemu" / "machines"
    classes: dict[str, dict[str, int]] = {
        "qemu": {"processes": 0, "rss_kib": 0, "pss_kib": 0},
        "vmpod per-VM": {"processes": 0, "rss_kib": 0, "pss_kib": 0},
    }
    for pid in sorted(set(pids_mentioning(str(machines)))):
        sample = memory_kib(pid)
        if sample is None:
            continue
        kind = "qemu" if argv0(pid).endswith("qemu-system-x86_64") else "vmpod per-VM"
        classes[kind]["processes"] += 1
        classes[kind]["rss_kib"] += sample[0]
        classes[kind]["pss_kib"] += sample[1]
    return classes


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--memory", default="96Mi", help="each pod's memory limit (the guest's RAM)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for every guest to be ready")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    image = build_tiny_guest()
    work = Path(tempfile.mkdtemp(prefix="vmpod-bench-memory-"))
    state = work / "state"
    manifest = work / "pods.yaml"
    manifest.write_text(MANIFEST.format(replicas=args.pods, image=image, memory=args.memory))
    names = [f"mem-{i}" for i in range(args.pods)]
    try:
        started = time.monotonic()
        result = vmpod(state, "run", "--wait", str(manifest))
        if result.returncode != 0:
            raise SystemExit(f"vmpod run failed:\n{result.stderr}")
        run_seconds = time.monotonic() - started
        ready_seconds = wait_ready(state, names, args.timeout)
        classes = snapshot(state)
        get = measure_get(state)
        classes_after = snapshot(state)
    finally:
        deleted = vmpod(state, "delete", "--now", *names)
        destroy_all(state)
        left = pids_mentioning(str(state))
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {
        "pods": args.pods, "memory_limit": args.memory, "run_wait_seconds": round(run_seconds, 1),
        "all_ready_seconds": round(ready_seconds, 1), "processes": classes, "processes_after_get": classes_after,
        "vmpod_get": get, "delete_exit_code": deleted.returncode, "processes_left": len(left),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0 if deleted.returncode == 0 and not left else 1
    print(f"{args.pods} tiny-guest pods, memory limit {args.memory} each; vmpod run --wait took "
          f"{run_seconds:.1f} s, every guest ready {ready_seconds:.1f} s later")
    print(f"{'':14} {'processes':>9} {'RSS total':>12} {'PSS total':>12} {'RSS/pod':>11} {'PSS/pod':>11}")
    for kind, row in classes.items():
        print(f"{kind:14} {row['processes']:>9} {mib(row['rss_kib']):>12} {mib(row['pss_kib']):>12} "
              f"{mib(row['rss_kib'] / args.pods):>11} {mib(row['pss_kib'] / args.pods):>11}")
    vm = classes["vmpod per-VM"]["pss_kib"]
    qemu = classes["qemu"]["pss_kib"]
    print(f"vmpod's per-VM processes: {100 * vm / max(1, vm + qemu):.1f} % of the PSS of vmpod + qemu")
    print(f"vmpod get -o wide ({get['rows']} pods, {get['seconds']} s): peak RSS {mib(get['children_maxrss_kib'])} "
          f"(wait4), sampled peak PSS {mib(get['sampled_peak_pss_kib'])}")
    print(f"cleanup: vmpod delete exit {deleted.returncode}, processes left {len(left)}")
    return 0 if deleted.returncode == 0 and not left else 1


if __name__ == "__main__":
    sys.exit(main())
