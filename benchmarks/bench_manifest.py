"""Time the manifest loader: many replicas, a huge annotation, and whether the cost is linear.

Run from anywhere::

    python3 benchmarks/bench_manifest.py [--repeat N]

Rows:

* a StatefulSet of 1000 VM pods (the nested-Kubernetes template of
  ``k8s.yaml``): load time and pods per second, and rendering them all to JSON;
* one pod whose ``VirtletCloudInitUserData`` annotation is 1 MiB of YAML
  (about 1000 ``write_files`` entries), and one whose
  ``VirtletCloudInitUserDataScript`` is a 1 MiB script;
* linearity: the load time of inputs of size N, 2N, 4N and 8N (replicas,
  user-data bytes, and documents in one stream), with the ratio of each time
  to the previous one (2.0 is linear; 4.0 would be quadratic).

Each figure is the median of ``--repeat`` runs.  Nothing here asserts on times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vmpod.convert import to_json  # noqa: E402
from vmpod.manifest import load_manifest_text  # noqa: E402
from vmpod.yamlutil import dump_yaml  # noqa: E402

VIRTLET_K8S = REPO.parent / "shared" / "virtlet-examples" / "k8s.yaml"

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletVCPUCount: "2"
    VirtletRootVolumeSize: 4Gi
spec:
  containers:
  - name: vm
    image: virtlet.cloud/cirros
    resources: {{limits: {{memory: 256Mi}}}}
"""


def _with_annotation(name: str, key: str, block: str) -> str:
    anchor = "    VirtletRootVolumeSize: 4Gi\n"
    return POD.format(name=name).replace(anchor, f"{anchor}    {key}: |\n{block}\n")


def statefulset(replicas: int) -> str:
    """The k8s.yaml example (Service + StatefulSet) with ``replicas`` pods."""
    text = VIRTLET_K8S.read_text()
    assert "replicas: 3" in text
    return text.replace("replicas: 3", f"replicas: {replicas}")


def _user_data(size: int) -> str:
    """About ``size`` bytes of cloud-config YAML: ``write_files`` entries of about 1 KiB each."""
    def entry(index: int) -> dict[str, str]:
        return {"path": f"/etc/vmpod/file-{index}.conf", "permissions": "0644",
                "content": f"# file {index}\n" + "key = value\n" * 80}

    per_entry = len(dump_yaml({"write_files": [entry(0), entry(1)]})) // 2
    return dump_yaml({"write_files": [entry(i) for i in range(max(1, size // per_entry))],
                      "runcmd": [["echo", "done"]]})


def user_data_pod(size: int) -> str:
    """A pod whose VirtletCloudInitUserData annotation is about ``size`` bytes of YAML."""
    block = "\n".join("      " + line for line in _user_data(size).splitlines())
    return _with_annotation("big-user-data", "VirtletCloudInitUserData", block)


def script_pod(size: int) -> str:
    """A pod whose VirtletCloudInitUserDataScript is a ``size``-byte shell script."""
    lines = ["#!/bin/sh"] + [f"echo line {i:08d} >> /var/log/vmpod-bench.log" for i in range(size // 48)]
    block = "\n".join("      " + line for line in lines)
    return _with_annotation("big-script", "VirtletCloudInitUserDataScript", block)


def documents(count: int) -> str:
    """``count`` Pod documents in one stream."""
    return "---\n".join(POD.format(name=f"vm-{i}") for i in range(count))


def median_seconds(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (the median is shown)")
    args = parser.parse_args()
    repeat = max(1, args.repeat)

    print(f"{'case':<52} {'input':>10} {'time':>10} {'rate':>16}")
    # input: the manifest's size, or for the 1 MiB rows the annotation's own size
    print("-" * 91)

    text = statefulset(1000)
    pods = load_manifest_text(text).pods
    assert len(pods) == 1000
    seconds = median_seconds(lambda: load_manifest_text(text), repeat)
    print(f"{'StatefulSet of 1000 VM pods: load':<52} {len(text):>9}B {seconds * 1000:>8.1f}ms "
          f"{1000 / seconds:>10.0f} pods/s")
    seconds = median_seconds(lambda: [to_json(pod) for pod in pods], repeat)
    print(f"{'StatefulSet of 1000 VM pods: render to JSON':<52} {'':>10} {seconds * 1000:>8.1f}ms "
          f"{1000 / seconds:>10.0f} pods/s")

    for label, build in (("1 MiB VirtletCloudInitUserData annotation: load", user_data_pod),
                         ("1 MiB VirtletCloudInitUserDataScript: load", script_pod)):
        text = build(1 << 20)
        (pod,) = load_manifest_text(text).pods
        size = len(pod.annotations["VirtletCloudInitUserData" if "UserData " in label else
                                   "VirtletCloudInitUserDataScript"])
        seconds = median_seconds(lambda text=text: load_manifest_text(text), repeat)  # type: ignore[misc]
        print(f"{label:<52} {size:>9}B {seconds * 1000:>8.1f}ms {size / seconds / 2**20:>10.1f} MiB/s")

    print()
    print("linearity: time for inputs of size N, 2N, 4N, 8N, and the ratio to the previous size (2.0 = linear)")
    series: tuple[tuple[str, Callable[[int], str], int, str], ...] = (
        ("StatefulSet replicas", statefulset, 500, "pods"),
        ("VirtletCloudInitUserData size", user_data_pod, 256 << 10, "bytes"),
        ("Pod documents in one stream", documents, 100, "docs"),
    )
    for label, build, base, unit in series:
        row = []
        previous = None
        for factor in (1, 2, 4, 8):
            text = build(base * factor)
            seconds = median_seconds(lambda text=text: load_manifest_text(text), repeat)  # type: ignore[misc]
            ratio = f"x{seconds / previous:.2f}" if previous else "     "
            row.append(f"{base * factor}{unit[0]}={seconds * 1000:.0f}ms {ratio}")
            previous = seconds
        print(f"  {label:<32} " + "  ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
