"""Every generated ``#cloud-config`` passes Debian's real ``cloud-init schema --config-file``.

Checked for every Virtlet example, every hand-written case, and a Hypothesis
sample of generated pods (``vmpod.testing.strategies.vm_pods`` with
cloud-config fragments as user-data, from the annotation and from a
ConfigMap source).
"""

from __future__ import annotations

import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VIRTLET_EXAMPLES
from tests.support.cloudinit_cases import CASES, CNI_BRIDGE
from vmpod.cloudinit import from_cni_result, generate_seed
from vmpod.cloudinit.disks import is_directory_volume
from vmpod.manifest import load_manifest_files
from vmpod.model import (
    CloudInitImageType,
    ConfigMapVolume,
    DataKind,
    DataObject,
    DataSourceRef,
    FlexVolume,
    SecretVolume,
    VMPod,
)
from vmpod.testing import strategies as vst


def _schema_check(user_data: str, directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = directory / f"{name}.yaml"
    path.write_text(user_data)
    return subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                          check=False)


def _generated_documents() -> dict[str, str]:
    """name -> user-data of every example and case, for both layouts (the #cloud-config ones)."""
    network = from_cni_result(CNI_BRIDGE)
    documents: dict[str, str] = {}
    for path in sorted(VIRTLET_EXAMPLES.glob("*.yaml")):
        for pod in load_manifest_files([path]).pods:
            for kind in CloudInitImageType:
                documents[f"example-{path.stem}-{pod.name}-{kind.value}"] = \
                    generate_seed(pod, network, image_type=kind).user_data
    for name, case in CASES.items():
        for kind in case.types:
            documents[f"case-{name}-{kind.value}"] = \
                generate_seed(case.pod(), case.network(), image_type=kind).user_data
    unique: dict[str, str] = {}  # the user-data of both layouts is the same text: check it once
    for name, text in documents.items():
        if text.startswith("#cloud-config\n") and text not in unique.values():
            unique[name] = text
    return unique


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    bad = _schema_check("#cloud-config\nruncmd: 5\n", tmp_path, "bad")
    assert bad.returncode != 0
    assert "runcmd" in bad.stderr + bad.stdout
    # The Virtlet examples' own spelling (before vmpod normalises it) is refused by cloud-init 22.4's schema.
    raw = _schema_check("#cloud-config\nusers:\n- name: u\n  ssh-authorized-keys: ssh-rsa AAAA k\n", tmp_path, "raw")
    assert raw.returncode != 0


def test_every_example_and_case_passes_the_schema(tmp_path: Path) -> None:
    documents = _generated_documents()
    assert len(documents) >= 15
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(documents, pool.map(lambda item: _schema_check(item[1], tmp_path, item[0]),
                                               documents.items()), strict=True))
    failures = {name: r.stderr + r.stdout for name, r in results.items() if r.returncode != 0}
    assert not failures, failures
    assert all("Valid cloud-config" in r.stdout for r in results.values())


# --------------------------------------------------------------------------- hypothesis

_words = st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True)
_lines = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
_commands = st.one_of(_lines, st.lists(_words, min_size=1, max_size=4))
_write_file = st.fixed_dictionaries(
    {"path": vst.absolute_paths()},
    optional={"content": _lines, "permissions": st.sampled_from(["0644", "0600", "0755", "0400"]),
              "owner": st.sampled_from(["root:root", "nobody:nogroup"]), "append": st.booleans(),
              "defer": st.booleans()})
_user = st.one_of(
    st.just("default"),
    st.fixed_dictionaries(
        {"name": vst.dns_labels(20)},
        optional={"ssh-authorized-keys": vst.ssh_keys() | st.lists(vst.ssh_keys(), min_size=1, max_size=2),
                  "ssh_authorized_keys": st.lists(vst.ssh_keys(), min_size=1, max_size=2),
                  "primary-group": vst.dns_labels(10), "lock_passwd": st.booleans(), "lock-passwd": st.booleans(),
                  "sudo": st.just("ALL=(ALL) NOPASSWD:ALL"), "shell": st.just("/bin/bash"),
                  "groups": st.sampled_from(["users", "adm,users"]), "gecos": _lines}),
)
cloud_config_fragments = st.fixed_dictionaries({}, optional={
    "runcmd": st.lists(_commands, min_size=1, max_size=3),
    "bootcmd": st.lists(_commands, min_size=1, max_size=2),
    "packages": st.lists(_words, min_size=1, max_size=3),
    "write_files": st.lists(_write_file, min_size=1, max_size=3),
    "users": st.lists(_user, min_size=1, max_size=3),
    "mounts": st.lists(st.lists(_words.map(lambda w: "/dev/" + w) | vst.absolute_paths(), min_size=1, max_size=2),
                       min_size=1, max_size=2),
    "ssh_pwauth": st.booleans(),
    "hostname": vst.dns_labels(20),
    "timezone": st.sampled_from(["UTC", "Europe/Paris"]),
    "package_update": st.booleans(),
})


def _usable(pod: VMPod) -> VMPod:
    """``pod`` with only the volume uses a VM can have (what the manifest reader lets through)."""
    mounts = []
    for mount in pod.container.volume_mounts:
        volume = pod.volume(mount.name)
        if isinstance(volume, FlexVolume | ConfigMapVolume | SecretVolume):
            mounts.append(attrs.evolve(mount, sub_path=""))
        elif is_directory_volume(volume):
            mounts.append(mount)
    return attrs.evolve(pod, container=attrs.evolve(pod.container, volume_mounts=tuple(mounts)))


@st.composite
def cloud_config_pods(draw: st.DrawFn) -> VMPod:
    """Generated pods whose user-data is cloud-config, from the annotation and/or a ConfigMap."""
    pod = _usable(draw(vst.vm_pods()))
    annotation = draw(st.none() | cloud_config_fragments)
    source = draw(st.none() | cloud_config_fragments)
    objects = [o for o in pod.data_objects if not (o.kind is DataKind.CONFIGMAP and o.name == "vmpod-user-data")]
    ref = None
    if source is not None:
        ref = DataSourceRef(DataKind.CONFIGMAP, "vmpod-user-data")
        objects.append(DataObject(kind=DataKind.CONFIGMAP, name="vmpod-user-data", namespace=pod.namespace,
                                  data={k: yaml.safe_dump(v) for k, v in source.items()}))
    vm = attrs.evolve(pod.vm, cloud_init_user_data=annotation, cloud_init_user_data_script=None,
                      cloud_init_user_data_source=ref, cloud_init_user_data_source_key=None)
    return attrs.evolve(pod, vm=vm, data_objects=tuple(objects))


@settings(max_examples=30, deadline=None)
@given(pod=cloud_config_pods(), kind=st.sampled_from(CloudInitImageType))
def test_generated_pods_pass_the_schema(pod: VMPod, kind: CloudInitImageType) -> None:
    documents = generate_seed(pod, image_type=kind)
    assert documents.is_cloud_config
    with tempfile.TemporaryDirectory() as directory:
        result = _schema_check(documents.user_data, Path(directory), "pod")
    assert result.returncode == 0, result.stderr + result.stdout + documents.user_data


@pytest.mark.parametrize("fragment", [
    {"users": [{"name": "u", "ssh-authorized-keys": "ssh-rsa AAAA k", "primary-group": "g"}]},
    {"mounts": [["/dev/vdb", "/mnt", "auto", "defaults,nofail,ro"]], "runcmd": [["ls", "-l"], "echo"]},
])
def test_fragments_the_strategy_draws_are_valid_on_their_own(fragment: dict[str, Any], tmp_path: Path) -> None:
    pod = attrs.evolve(CASES["plain"].pod(), vm=attrs.evolve(CASES["plain"].pod().vm, cloud_init_user_data=fragment))
    assert _schema_check(generate_seed(pod).user_data, tmp_path, "fragment").returncode == 0
