"""One probe run by vmpod versus the raw tool doing the same check, against the same local servers.

Side by side in the same run, alternating each round:

* ``httpGet``: :func:`vmpod.probing.checks.run_check` (in-process, as the prober runs it) versus
  ``curl -s -o /dev/null -w %{http_code}`` (what a shell-script health check would fork);
* ``tcpSocket``: ``run_check`` versus ``nc -z``; and ``run_check`` through a forward (the slirp
  variant) on the same server: against a service that does not speak first it spends half the
  timeout watching for an early close, then half-closes and waits for the server's close.

The servers are a ``python3 -m http.server`` process and that process's port for TCP.  Also
printed: the resident memory of one idle prober process (a pod with a probe on the fake backend).

Usage::

    python3 benchmarks/bench_probes.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vmpod.model import HTTPGetAction, TCPSocketAction  # noqa: E402
from vmpod.probing.checks import Result, run_check  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ms(samples: list[float]) -> str:
    p90 = sorted(samples)[int(len(samples) * 0.9)]
    return f"median {statistics.median(samples) * 1000:.3f} ms, p90 {p90 * 1000:.3f} ms"


def _timed(action: object) -> float:
    started = time.perf_counter()
    assert callable(action)
    action()
    return time.perf_counter() - started


def _prober_rss() -> str:
    import attrs  # noqa: PLC0415

    from vmpod.manifest import load_manifest_text  # noqa: PLC0415
    from vmpod.probing.process import PROBER_FILE  # noqa: PLC0415
    from vmpod.procutil import read_json  # noqa: PLC0415
    from vmpod.runtime import Runtime  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        text = f"""apiVersion: v1
kind: Pod
metadata: {{name: bench, annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}}}
spec:
  containers:
  - name: vm
    image: file://{image}
    readinessProbe: {{tcpSocket: {{port: 22}}, periodSeconds: 1}}
"""
        pod = attrs.evolve(load_manifest_text(text).pods[0], uid="0000000b-0000-4000-8000-00000000000b")
        with Runtime.open(Path(tmp) / "state", backend="fake") as runtime:
            runtime.run_pod(pod)
        record = read_json(Path(tmp) / "state" / "pods" / pod.uid / "probes" / PROBER_FILE)
        assert record is not None
        time.sleep(3)  # a few probe rounds
        status = Path(f"/proc/{record['pid']}/status").read_text()
        rss = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("VmRSS"))
        with Runtime.open(Path(tmp) / "state", backend="fake") as runtime:
            runtime.delete_pod(runtime.get("bench"), timeout=0)
        return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as root:
        server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=root,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while run_check(TCPSocketAction(port=port), "127.0.0.1", port, 1.0).result is not Result.SUCCESS:
                assert time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.05)
            http = HTTPGetAction(port=port, path="/")
            tcp = TCPSocketAction(port=port)
            samples: dict[str, list[float]] = {k: [] for k in ("http", "curl", "tcp", "nc", "tcp-forward")}
            curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/"]
            nc = ["nc", "-z", "127.0.0.1", str(port)]
            for _ in range(args.rounds):
                samples["http"].append(_timed(lambda: run_check(http, "127.0.0.1", port, 2.0)))
                samples["curl"].append(_timed(lambda: subprocess.run(curl, check=True, capture_output=True)))
                samples["tcp"].append(_timed(lambda: run_check(tcp, "127.0.0.1", port, 2.0)))
                samples["nc"].append(_timed(lambda: subprocess.run(nc, check=True)))
                samples["tcp-forward"].append(_timed(lambda: run_check(tcp, "127.0.0.1", port, 2.0,
                                                                       via_forward=True)))
        finally:
            server.terminate()
            server.wait()
    ratio_http = statistics.median(samples["http"]) / statistics.median(samples["curl"])
    ratio_tcp = statistics.median(samples["tcp"]) / statistics.median(samples["nc"])
    print(f"httpGet, vmpod in-process:   {_ms(samples['http'])}")
    print(f"httpGet, curl:               {_ms(samples['curl'])}   ratio {ratio_http:.3f}")
    print(f"tcpSocket, vmpod:            {_ms(samples['tcp'])}")
    print(f"tcpSocket, nc -z:            {_ms(samples['nc'])}   ratio {ratio_tcp:.3f}")
    print(f"tcpSocket through a forward: {_ms(samples['tcp-forward'])} (half-close, waits for the server's close)")
    print(f"idle prober process RSS:     {_prober_rss()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
