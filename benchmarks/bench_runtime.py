"""Runtime overhead with many pods on the fake backend.

Runs N pods (default 1000) through ``run_pod`` and ``delete_pod`` and reports,
per pod operation, the total time, the time spent inside the backend (the
fake's own work, measured by a timing wrapper around it) and the runtime's
own overhead = total - backend.  Also: listing N pods (what ``vmpod get``
does after start-up), reconcile on open with N pods, the store's size, and
the cost of the pieces of a create measured alone.

Usage::

    python3 benchmarks/bench_runtime.py [--pods 1000] [--dir DIR]...

Each ``--dir`` is a parent directory for a fresh state directory (default:
``/tmp`` and ``/dev/shm``): on a disk, fsync and unlink costs of the
filesystem are part of the runtime's overhead; on tmpfs they vanish, which
separates the runtime's CPU cost from the disk's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vmpod_fake import FakeBackend  # noqa: E402

from vmpod import hookimpl, qcow2  # noqa: E402
from vmpod.backend import BackendConfig  # noqa: E402
from vmpod.cloudinit import build_seed, default_disk_map, generate_seed  # noqa: E402
from vmpod.hookspecs import BackendSpec  # noqa: E402
from vmpod.manifest import load_manifest_text  # noqa: E402
from vmpod.model import VMPod  # noqa: E402
from vmpod.plugins import get_plugin_manager  # noqa: E402
from vmpod.runtime import Runtime  # noqa: E402
from vmpod.runtime.files import sync_filesystem  # noqa: E402

T = TypeVar("T")

POD = """apiVersion: v1
kind: Pod
metadata:
  name: bench
  labels: {{app: bench}}
  annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: vm
    image: {image}
    resources: {{limits: {{memory: 128Mi}}}}
"""


class Timed:
    """Wraps a backend and adds up the seconds (wall clock and CPU) spent in its calls."""

    seconds = 0.0
    cpu = 0.0

    def __init__(self, backend: FakeBackend) -> None:
        self._backend = backend
        self.name = "fake"

    def __getattr__(self, attribute: str) -> Any:
        target = getattr(self._backend, attribute)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return target(*args, **kwargs)
            finally:
                Timed.seconds += time.perf_counter() - start
                Timed.cpu += time.thread_time() - cpu

        return call


def _timed_fake(config: BackendConfig) -> Any:
    return Timed(FakeBackend(config))


class TimedPlugin:
    """Registers ``fake`` as the fake backend behind :class:`Timed` (the real entry point is disabled)."""

    @hookimpl
    def vmpod_backends(self) -> Iterator[BackendSpec]:
        yield BackendSpec(name="fake", factory=_timed_fake)


def _plugins() -> Any:
    plugins = get_plugin_manager(disabled=["fake"])
    plugins.register(TimedPlugin(), name="timed-fake")
    return plugins


CPU: list[float] = []


def _measure(action: Callable[[], T]) -> tuple[T, float, float]:
    """(result, total seconds, backend seconds); the runtime's own CPU seconds are appended to ``CPU``."""
    before, before_cpu = Timed.seconds, Timed.cpu
    start, cpu = time.perf_counter(), time.thread_time()
    result = action()
    CPU.append((time.thread_time() - cpu) - (Timed.cpu - before_cpu))
    return result, time.perf_counter() - start, Timed.seconds - before


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _pieces(image: Path, work: Path, pod: VMPod) -> None:
    """Each piece of a create, alone, 200 times."""
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        build_seed(generate_seed(pod, None, default_disk_map(pod)))
    seed = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in range(n):
        qcow2.write_overlay(work / f"o{i}.qcow2", image, "qcow2", 1 << 30, sync=False)
    overlay = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(20):
        sync_filesystem(work)
    syncfs = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    for i in range(5):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image),
                        str(work / f"q{i}.qcow2"), "1G"], check=True)
    qemu_img = (time.perf_counter() - start) / 5
    print(f"  pieces: seed documents + ISO {_ms(seed)}, qcow2 overlay in-process {_ms(overlay)} "
          f"(qemu-img create {_ms(qemu_img)}), syncfs {_ms(syncfs)}")


def bench(parent: Path, pods: int, image: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="vmpod-bench-", dir=parent))
    print(f"\n== {pods} pods, state directory on {parent} ({_fs_type(parent)})")
    template = load_manifest_text(POD.format(image=image)).pods[0]
    specs = [attrs.evolve(template, name=f"bench-{i:04d}", uid=f"{i:08x}-0000-4000-8000-{i:012x}")
             for i in range(pods)]
    try:
        (state / "pieces").mkdir(parents=True)
        _pieces(image, state / "pieces", template)
        shutil.rmtree(state / "pieces")
        runtime = Runtime.open(state, backend="fake", plugin_manager=_plugins())
        runtime.run_pod(attrs.evolve(template, name="warm-up", uid="ffffffff-0000-4000-8000-000000000000"))
        runtime.delete_pod(runtime.get("warm-up"))
        totals, backends = [], []
        CPU.clear()
        for pod in specs:
            _, total, backend = _measure(lambda pod=pod: runtime.run_pod(pod))
            totals.append(total)
            backends.append(backend)
        _report("run_pod", totals, backends)

        _, listing, _ = _measure(runtime.list)
        lists = [_measure(runtime.list)[1] for _ in range(20)]
        selected = [_measure(lambda: runtime.list({"app": "bench"}))[1] for _ in range(20)]
        print(f"  list {pods} pods: median {_ms(statistics.median(lists))} (first {_ms(listing)}), "
              f"with a label selector {_ms(statistics.median(selected))}")
        size = runtime.store.size_bytes()
        runtime.close()
        store_size = (state / "vmpod.db").stat().st_size
        print(f"  store: {store_size / 1024:.0f} KiB after checkpoint ({store_size / pods:.0f} B per pod; "
              f"{size / 1024:.0f} KiB with the WAL before it)")

        CPU.clear()
        opened, total, backend = _measure(lambda: Runtime.open(state, backend="fake", plugin_manager=_plugins()))
        report = opened.last_reconcile
        print(f"  open + reconcile {pods} pods: {_ms(total)} total, {_ms(backend)} in the backend, "
              f"runtime CPU {_ms(CPU[0])} "
              f"(adopted {len(getattr(report, 'adopted', ()))} running machines)")
        env = {**os.environ, "VMPOD_STATE_DIR": str(state), "VMPOD_BACKEND": "fake"}
        opened.close()
        cli = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(["vmpod", "get"], env=env, check=True, capture_output=True)
            cli.append(time.perf_counter() - start)
        print(f"  `vmpod get` with {pods} pods, whole command (interpreter start, imports, reconcile, table): "
              f"median {_ms(statistics.median(cli))}")

        runtime = Runtime.open(state, backend="fake", plugin_manager=_plugins())
        totals, backends = [], []
        CPU.clear()
        for pod in specs:
            record = runtime.get(pod.name)
            _, total, backend = _measure(lambda record=record: runtime.delete_pod(record))
            totals.append(total)
            backends.append(backend)
        _report("delete_pod", totals, backends)
        runtime.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _report(what: str, totals: list[float], backends: list[float]) -> None:
    overhead = [t - b for t, b in zip(totals, backends, strict=True)]
    print(f"  {what}: total median {_ms(statistics.median(totals))}, backend (fake) median "
          f"{_ms(statistics.median(backends))}, runtime overhead median {_ms(statistics.median(overhead))}, "
          f"p90 {_ms(sorted(overhead)[len(overhead) * 9 // 10])}, mean {_ms(statistics.fmean(overhead))}; "
          f"runtime CPU median {_ms(statistics.median(CPU))}")


def _fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--dir", action="append", type=Path, default=[])
    args = parser.parse_args()
    dirs = args.dir or [Path(tempfile.gettempdir())] + ([Path("/dev/shm")] if Path("/dev/shm").is_dir() else [])
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(wall-clock figures grow with load; CPU figures much less)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
        for parent in dirs:
            bench(parent, args.pods, image)


if __name__ == "__main__":
    main()
