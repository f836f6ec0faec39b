"""``vmpod seed``, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import VIRTLET_EXAMPLES
from tests.support.cloudinit_cases import CNI_BRIDGE, config_map, manifest, secret
from tests.support.isoread import read_iso
from vmpod.cloudinit import MAX_SEED_BYTES, from_cni_result, generate_seed
from vmpod.manifest import load_manifest_files
from vmpod.model import CloudInitImageType

VMPOD = [sys.executable, "-m", "vmpod"]


def _vmpod(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "VMPOD_DISABLE_PLUGINS": "", **(env or {})}
    return subprocess.run([*VMPOD, "seed", *map(str, args)], capture_output=True, text=True, check=False,
                          env=environment, timeout=300)


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    # (other lines may be warnings about third-party plugins that fail to load)
    assert [line for line in result.stderr.splitlines() if line.startswith("vmpod: error")], result.stderr
    return result.stderr


def test_console_script_is_installed() -> None:
    result = subprocess.run(["vmpod", "seed", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "--print" in result.stdout
    assert "--type {nocloud,configdrive}" in result.stdout


def test_writes_a_nocloud_iso_with_the_documents(tmp_path: Path) -> None:
    example = VIRTLET_EXAMPLES / "cirros-vm.yaml"
    out = tmp_path / "seed.iso"
    result = _vmpod(example, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out} (nocloud, label cidata)\n"
    (pod,) = load_manifest_files([example]).pods
    seen = read_iso(out)
    assert seen.label == "cidata"
    assert seen.files == generate_seed(pod).files()
    assert set(seen.files) == {"meta-data", "user-data"}
    assert out.stat().st_mode & 0o777 == 0o644


def test_configdrive_with_a_cni_result(tmp_path: Path) -> None:
    example = VIRTLET_EXAMPLES / "fedora-vm.yaml"
    cni = tmp_path / "result.json"
    cni.write_text(json.dumps(CNI_BRIDGE))
    out = tmp_path / "seed.iso"
    result = _vmpod(example, "--type", "configdrive", "--cni-result", cni, "-o", out)
    assert result.returncode == 0, result.stderr
    (pod,) = load_manifest_files([example]).pods
    seen = read_iso(out)
    assert seen.label == "config-2"
    expected = generate_seed(pod, from_cni_result(CNI_BRIDGE), image_type=CloudInitImageType.CONFIGDRIVE).files()
    assert seen.files == expected
    assert json.loads(seen.files["openstack/latest/network_data.json"])["links"][0]["id"] == "eth0"


def test_print_shows_every_document(tmp_path: Path) -> None:
    example = VIRTLET_EXAMPLES / "k8s.yaml"
    cni = tmp_path / "result.json"
    cni.write_text(json.dumps(CNI_BRIDGE))
    result = _vmpod(example, "--pod", "k8s-2", "--print", "--cni-result", cni)
    assert result.returncode == 0, result.stderr
    pod = next(p for p in load_manifest_files([example]).pods if p.name == "k8s-2")
    assert result.stdout == generate_seed(pod, from_cni_result(CNI_BRIDGE)).text()
    assert result.stdout.startswith('==> meta-data <==\n{"instance-id":"k8s-2.default","local-hostname":"k8s-2"}\n')
    assert "\n==> network-config <==\nversion: 1\n" in result.stdout
    assert not list(tmp_path.glob("*.iso"))


def test_several_pods_need_pod_and_a_wrong_name_lists_them() -> None:
    example = VIRTLET_EXAMPLES / "k8s.yaml"
    assert "has 3 VM pods: say which one (accepted: k8s-0, k8s-1, k8s-2)" in _refused(_vmpod(example, "--print"))
    assert "no pod named 'k8s-9'" in _refused(_vmpod(example, "--pod", "k8s-9", "--print"))


def test_output_and_print_are_exclusive_and_one_is_required() -> None:
    example = VIRTLET_EXAMPLES / "cirros-vm.yaml"
    assert _vmpod(example).returncode == 2
    assert _vmpod(example, "--print", "-o", "x.iso").returncode == 2


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pod.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "annotation"), [
    (manifest(annotations={"VirtletCloudInitUserData": "- not\n- a mapping\n"}), "VirtletCloudInitUserData"),
    (manifest(annotations={"VirtletCloudInitMetaData": "just text"}), "VirtletCloudInitMetaData"),
    (manifest(annotations={"VirtletCloudInitUserDataSource": "configmap/ud",
                           "VirtletCloudInitUserDataSourceKey": "script",
                           "VirtletCloudInitUserDataSourceEncoding": "base64"},
              objects=[config_map("ud", {"script": "%%% not base64 %%%"})]),
     "VirtletCloudInitUserDataSourceEncoding"),
    (manifest(annotations={"VirtletCloudInitUserDataSource": "secret/ud",
                           "VirtletCloudInitUserDataSourceKey": "missing"},
              objects=[secret("ud", {"runcmd": b"[ls]"})]),
     "VirtletCloudInitUserDataSourceKey"),
])
def test_bad_cloud_init_input_names_the_annotation_and_writes_nothing(tmp_path: Path, text: str,
                                                                       annotation: str) -> None:
    out = tmp_path / "seed.iso"
    out.write_bytes(b"the previous seed")
    stderr = _refused(_vmpod(_write(tmp_path, text), "-o", out))
    assert f"metadata.annotations.{annotation}" in stderr
    assert out.read_bytes() == b"the previous seed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod.yaml", "seed.iso"]


def test_a_seed_over_64_mib_is_refused_naming_the_annotation(tmp_path: Path) -> None:
    body = "A" * MAX_SEED_BYTES
    text = textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: big
          annotations:
            kubernetes.io/target-runtime: virtlet.cloud
            VirtletCloudInitUserData: |
              write_files:
              - path: /big
                encoding: b64
                content: {body}
        spec:
          containers:
          - name: vm
            image: virtlet.cloud/cirros
        """)
    out = tmp_path / "seed.iso"
    stderr = _refused(_vmpod(_write(tmp_path, text), "-o", out))
    assert "metadata.annotations.VirtletCloudInitUserData: the cloud-init seed would be" in stderr
    assert "over the 64 MiB limit" in stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod.yaml"]


def test_bad_cni_result_and_unwritable_output(tmp_path: Path) -> None:
    example = VIRTLET_EXAMPLES / "cirros-vm.yaml"
    cni = tmp_path / "result.json"
    cni.write_text(json.dumps({**CNI_BRIDGE, "ips": [{"address": "nonsense"}]}))
    assert f"{cni}.ips[0].address: not an address with prefix" in _refused(_vmpod(example, "--cni-result", cni,
                                                                                 "--print"))
    cni.write_text("{not json")
    assert "is not JSON" in _refused(_vmpod(example, "--cni-result", cni, "--print"))
    missing = tmp_path / "no" / "such" / "dir" / "seed.iso"
    assert f"--output: cannot write {missing}: No such file or directory" in _refused(_vmpod(example, "-o", missing))


PLUGIN = '''\
import attrs
import vmpod


@vmpod.hookimpl
def vmpod_adjust_seed(pod, documents):
    return attrs.evolve(documents, meta_data={**documents.meta_data, "adjusted-by": "seedplugin:" + pod.name})
'''


def test_plugins_adjust_the_seed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "vmpod_seedplugin-1.0.dist-info").mkdir(parents=True)
    (site / "vmpod_seedplugin.py").write_text(PLUGIN)
    (site / "vmpod_seedplugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vmpod-seedplugin\nVersion: 1.0\n")
    (site / "vmpod_seedplugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[vmpod]\nseedplugin = vmpod_seedplugin\n")
    example = VIRTLET_EXAMPLES / "cirros-vm.yaml"
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "seed.iso"
    result = _vmpod(example, "-o", out, env=env)
    assert result.returncode == 0, result.stderr
    meta = json.loads(read_iso(out).files["meta-data"])
    assert meta["adjusted-by"] == "seedplugin:cirros-vm"
    disabled = _vmpod(example, "--print", env={**env, "VMPOD_DISABLE_PLUGINS": "seedplugin"})
    assert "adjusted-by" not in disabled.stdout
