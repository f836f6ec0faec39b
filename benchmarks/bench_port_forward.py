"""Throughput and latency through ``vmpod port-forward`` versus the pod's static hostPort forward.

One tiny-guest pod (user-mode networking) declares ``containerPort: 80`` with a
``hostPort``: the hypervisor forwards that loopback port to the guest's busybox httpd
from boot (the "direct" path, no vmpod process involved).  ``vmpod port-forward POD :80``
adds a second, dynamic forward to the same httpd.  In the same run, alternating the two
paths each round:

* throughput: HTTP GET of a file of ``--size`` MiB the guest keeps in RAM (written once
  over ``vmpod ssh``), MiB/s;
* latency: ``--requests`` sequential GETs of the small index page on new connections, median ms;
* set-up: seconds from starting ``vmpod port-forward`` to its ``Forwarding from`` line.

Usage::

    python3 benchmarks/bench_port_forward.py [--backend qemu|libvirt] [--rounds 5] [--size 32] [--requests 50]

The guest runs under TCG on this machine, so absolute figures are the emulated NIC's; the
ratio is what the benchmark is for (both paths end in the same slirp stack).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vmpod.guests.tiny import build_tiny_guest  # noqa: E402

POD = """apiVersion: v1
kind: Pod
metadata:
  name: bench-pf
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletRootVolumeSize: 256Mi
    VirtletSSHKeys: |
      {key}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: tiny
    image: file://{image}
    ports:
    - containerPort: 80
      hostPort: {host_port}
    resources:
      limits: {{memory: 256Mi}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(port: int, path: str) -> int:
    """Bytes of the body of ``GET path`` on 127.0.0.1:port (HTTP/1.0, read to EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        head = b""
        body = -1  # bytes of the body; -1 until the header has ended
        while chunk := sock.recv(1 << 20):
            if body >= 0:
                body += len(chunk)
                continue
            head += chunk
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                if not head.startswith(b"HTTP/1.") or b" 200 " not in head[:16]:
                    raise RuntimeError(f"bad response: {head[:80]!r}")
                body = len(head) - end - 4
        return body


def throughput(port: int, size: int) -> float:
    started = time.perf_counter()
    got = http_get(port, "/big")
    elapsed = time.perf_counter() - started
    if got != size:
        raise RuntimeError(f"got {got} bytes, expected {size}")
    return size / elapsed / 2**20


def latency(port: int, requests: int) -> float:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        http_get(port, "/")
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="qemu", choices=("qemu", "libvirt"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="MiB per throughput GET")
    parser.add_argument("--requests", type=int, default=50, help="small GETs per latency round")
    args = parser.parse_args()
    vmpod = shutil.which("vmpod")
    assert vmpod, "the vmpod command is not installed"
    base = Path(tempfile.mkdtemp(prefix="vmpod-bench-pf-", dir="/var/tmp"))
    os.chmod(base, 0o755)  # libvirt's qemu user must reach the state directory
    state = base / "state"
    command = [vmpod, "--state-dir", str(state), "--backend", args.backend]
    key = base / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    static_port = free_port()
    manifest = base / "pod.yaml"
    manifest.write_text(POD.format(key=key.with_suffix(".pub").read_text().strip(), image=build_tiny_guest(),
                                   host_port=static_port))
    size = args.size * 2**20
    forwarder: subprocess.Popen[str] | None = None
    try:
        created = subprocess.run([*command, "run", str(manifest)], capture_output=True, text=True, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"vmpod run failed: {created.stderr.strip()}")
        deadline = time.monotonic() + 600
        while "VMPOD-READY" not in subprocess.run([*command, "logs", "bench-pf"], capture_output=True, text=True,
                                                  check=False).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the guest did not become ready")
            time.sleep(1)
        subprocess.run([*command, "ssh", "root@bench-pf", "-i", str(key), "--",
                        f"dd if=/dev/urandom of=/www/big bs=1048576 count={args.size} 2>/dev/null"],
                       check=True, timeout=300)
        setups = []
        for _ in range(3):
            started = time.perf_counter()
            forwarder = subprocess.Popen([*command, "port-forward", "bench-pf", ":80"], stdout=subprocess.PIPE,
                                         text=True)
            assert forwarder.stdout is not None
            line = forwarder.stdout.readline()
            setups.append(time.perf_counter() - started)
            match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 80", line)
            if match is None:
                raise RuntimeError(f"vmpod port-forward said {line!r}")
            forward_port = int(match.group(1))
            if len(setups) < 3:
                forwarder.send_signal(signal.SIGTERM)
                forwarder.wait(timeout=60)
                forwarder.stdout.close()
        http_get(static_port, "/big")  # warm both paths (and the guest's page cache)
        http_get(forward_port, "/big")
        rows: dict[str, dict[str, list[float]]] = {"static hostPort": {"tp": [], "lat": []},
                                                   "vmpod port-forward": {"tp": [], "lat": []}}
        for round_number in range(args.rounds):
            order = [("static hostPort", static_port), ("vmpod port-forward", forward_port)]
            if round_number % 2:
                order.reverse()
            for name, port in order:
                rows[name]["tp"].append(throughput(port, size))
                rows[name]["lat"].append(latency(port, args.requests))
        print(f"backend {args.backend}, {args.rounds} rounds, {args.size} MiB per GET, {args.requests} small GETs")
        for name, figures in rows.items():
            print(f"{name:20s} throughput median {statistics.median(figures['tp']):7.1f} MiB/s "
                  f"(min {min(figures['tp']):.1f}, max {max(figures['tp']):.1f}); "
                  f"small GET median {statistics.median(figures['lat']):.2f} ms")
        direct, forwarded = rows["static hostPort"], rows["vmpod port-forward"]
        print(f"ratio port-forward / static: throughput "
              f"{statistics.median(forwarded['tp']) / statistics.median(direct['tp']):.3f}, small-GET latency "
              f"{statistics.median(forwarded['lat']) / statistics.median(direct['lat']):.3f}")
        print(f"vmpod port-forward set-up (start to 'Forwarding from'): median {statistics.median(setups):.3f} s "
              f"of {len(setups)}")
        return 0
    finally:
        if forwarder is not None and forwarder.poll() is None:
            forwarder.send_signal(signal.SIGTERM)
            forwarder.wait(timeout=60)
        subprocess.run([*command, "delete", "bench-pf"], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
