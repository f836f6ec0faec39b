"""Time vmpod's in-process seed ISO writer against Debian's ``cloud-localds``.

Run from anywhere::

    python3 benchmarks/bench_seed_iso.py [--repeat N]

Both tools write a NoCloud seed (label ``cidata``) from the same meta-data,
user-data and network-config documents, in the same run, in alternating
blocks of a few runs each, so that both see the same machine noise; the table shows median and spread in
milliseconds and the ratio of the medians (the aim: vmpod <= 1/10 of
cloud-localds).  ``write_iso`` also fsyncs the image and its directory, which
cloud-localds does not do; ``build_iso`` (in memory) is shown for reference.
Before timing, both images are read back with isoinfo/blkid and must agree.
Nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import json
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

from tests.support.isoread import read_seed  # noqa: E402
from vmpod.cloudinit.iso import NOCLOUD_LABEL, build_iso, write_iso  # noqa: E402

META_DATA = json.dumps(
    {"instance-id": "a4d2c3e6-1b7f-4c1e-9f0a-6c2d7d1e5b90", "local-hostname": "cirros-vm"},
    indent=2,
).encode() + b"\n"
USER_DATA = b"""#cloud-config
users:
  - name: testuser
    gecos: Test User
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys:
      - SSH_KEY
write_files:
  - path: /etc/vmpod/env
    permissions: "0644"
    content: |
      POD_NAME=cirros-vm
      POD_NAMESPACE=default
      MY_VAR=some-value
  - path: /usr/local/bin/vmpod-mount-volumes
    permissions: "0755"
    content: |
      #!/bin/sh
      set -e
      mkdir -p /mnt/data
      mount /dev/vdb1 /mnt/data || true
mounts:
  - [/dev/vdb1, /mnt/data]
runcmd:
  - /usr/local/bin/vmpod-mount-volumes
  - echo "hello from vmpod" > /etc/motd
"""
NETWORK_CONFIG = b"""version: 1
config:
  - type: physical
    name: eth0
    mac_address: "52:54:00:12:34:56"
    subnets:
      - type: static
        address: 10.1.90.5/24
        gateway: 10.1.90.1
  - type: nameserver
    address: [10.96.0.10]
    search: [default.svc.cluster.local, svc.cluster.local, cluster.local]
"""
FILES = {"meta-data": META_DATA, "user-data": USER_DATA, "network-config": NETWORK_CONFIG}


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs of each tool (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each tool first (default 3)")
    parser.add_argument("--block", type=int, default=5,
                        help="runs of one tool in a row before switching to the next (default 5)")
    args = parser.parse_args(argv)
    if shutil.which("cloud-localds") is None:
        print("cloud-localds not found (Debian package cloud-image-utils; scripts/setup.sh installs it)",
              file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-seed-iso-") as tmp:
        work = Path(tmp)
        for name, content in FILES.items():
            (work / name).write_bytes(content)
        ours = work / "vmpod.iso"
        theirs = work / "cloud-localds.iso"

        def run_vmpod() -> None:
            write_iso(FILES, NOCLOUD_LABEL, ours)

        def run_build() -> None:
            build_iso(FILES, NOCLOUD_LABEL)

        def run_cloud_localds() -> None:
            subprocess.run(
                ["cloud-localds", "-N", "network-config", str(theirs), "user-data", "meta-data"],
                cwd=work, check=True, capture_output=True,
            )

        runs = {"vmpod write_iso": run_vmpod, "vmpod build_iso": run_build, "cloud-localds": run_cloud_localds}
        for action in runs.values():
            for _ in range(args.warmup):
                action()
        if read_seed(ours) != read_seed(theirs) or read_seed(ours) != (FILES, NOCLOUD_LABEL):
            print("the two images differ when read back with isoinfo/blkid", file=sys.stderr)
            return 1

        times: dict[str, list[float]] = {name: [] for name in runs}
        while len(times["cloud-localds"]) < args.repeat:
            block = min(args.block, args.repeat - len(times["cloud-localds"]))
            for name, action in runs.items():
                times[name].extend(timed(action) for _ in range(block))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"seed ISO, NoCloud, 3 files ({sum(map(len, FILES.values()))} bytes), "
          f"{args.repeat} runs each (median / min / max, ms)")
    print(f"{'tool':<18} {'median':>9} {'min':>9} {'max':>9}")
    for name, values in times.items():
        print(f"{name:<18} {medians[name] * 1e3:>9.3f} {min(values) * 1e3:>9.3f} {max(values) * 1e3:>9.3f}")
    ratio = medians["vmpod write_iso"] / medians["cloud-localds"]
    print(f"ratio write_iso / cloud-localds = {ratio:.3f} (1/{1 / ratio:.1f}); aim <= 0.100: "
          f"{'met' if ratio <= 0.1 else 'NOT met'}")
    print(f"ratio build_iso / cloud-localds = {medians['vmpod build_iso'] / medians['cloud-localds']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
