"""The seed's nested-Kubernetes example: a headless Service and a StatefulSet of three VM pods."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import VIRTLET_EXAMPLES, Golden
from vmpod import convert, datasources
from vmpod.manifest import load_manifest_files
from vmpod.model import VMPod

K8S = VIRTLET_EXAMPLES / "k8s.yaml"
VMKEY = (VIRTLET_EXAMPLES / "vmkey.pub").read_text().strip()


def _check(pods: list[VMPod]) -> None:
    assert [p.name for p in pods] == ["k8s-0", "k8s-1", "k8s-2"]
    for index, pod in enumerate(pods):
        assert pod.hostname == pod.name
        assert pod.subdomain == "k8s"
        assert pod.labels == {"app": "inner-k8s", "statefulset.kubernetes.io/pod-name": pod.name,
                              "apps.kubernetes.io/pod-index": str(index)}
        assert pod.vm.root_volume_size == 4294967296
        assert pod.vm.vcpu_count == 2
        user_data = datasources.merged_user_data(pod)
        assert sorted(user_data) == ["runcmd", "users", "write_files"]
        assert [f["path"] for f in user_data["write_files"]] == [
            "/etc/systemd/system/docker.service.d/env.conf",
            "/etc/apt/sources.list.d/kubernetes.list",
            "/usr/local/bin/provision.sh",
        ]
        assert user_data["write_files"][2]["permissions"] == "0755"
        assert user_data["write_files"][2]["content"].startswith("#!/bin/bash\nset -u -e\n")
        assert "kubeadm join --token adcb82.4eae29627dc4c5a6" in user_data["write_files"][2]["content"]
        assert user_data["runcmd"] == ["/usr/local/bin/provision.sh"]
        assert user_data["users"] == [{"name": "root", "ssh-authorized-keys": [VMKEY]}]
        assert pod.container.readiness_probe is not None
        assert pod.container.readiness_probe.initial_delay_seconds == 5
    assert len({p.uid for p in pods}) == 3


def test_loads_to_three_pods() -> None:
    result = load_manifest_files([K8S])
    _check(list(result.pods))
    assert result.notes == (f"{K8S} (document 1): skipped Service k8s: not a pod or pod workload",)


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_render_parses_back_to_the_same_pods(output: str) -> None:
    run = subprocess.run([sys.executable, "-m", "vmpod", "render", str(K8S), "-o", output],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "skipped Service k8s" in run.stderr
    data = json.loads(run.stdout) if output == "json" else list(yaml.safe_load_all(run.stdout))
    pods = [convert.structure(item, VMPod) for item in data]
    _check(pods)
    assert pods == list(load_manifest_files([K8S]).pods)


def test_render_output_is_stable(golden: Golden) -> None:
    run = subprocess.run([sys.executable, "-m", "vmpod", "render", str(K8S)], capture_output=True, text=True,
                         check=True)
    golden.check("render/k8s.yaml", run.stdout)
