"""cloud-init's own datasource readers (Debian's cloud-init, run by the system Python) read vmpod's seeds.

The seed is written as an ISO, read back with isoinfo into a directory, and
handed to cloud-init's NoCloud and ConfigDrive reading code: what cloud-init
would find on the guest's cdrom.  This also settles Virtlet's "ConfigDrive
SSH keys" question: cloud-init's ConfigDrive reader takes keys only from
OpenStack's ``public_keys`` map, never from a ``public-keys`` list.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.support.cloudinit_cases import CASES, KEY_A, KEY_B, KEY_C
from tests.support.isoread import read_iso
from vmpod.cloudinit import SeedDocuments, generate_seed, write_seed
from vmpod.model import CloudInitImageType

SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter Debian's cloud-init package is installed for

READER = r"""
import json, sys
from cloudinit import sources, util
from cloudinit.sources import DataSourceNoCloud
from cloudinit.sources.DataSourceConfigDrive import read_config_drive
from cloudinit.sources.helpers import openstack

kind, directory, macs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "configdrive":
    results = read_config_drive(directory)

    class Reader(openstack.SourceMixin):
        version = results["version"]
        metadata = results["metadata"]

    network = results.get("networkdata")
    print(json.dumps({
        "version": results["version"],
        "instance-id": results["metadata"]["instance-id"],
        "local-hostname": results["metadata"].get("local-hostname"),
        "keys": Reader().get_public_ssh_keys(),
        "user-data": results["userdata"].decode() if isinstance(results["userdata"], bytes) else results["userdata"],
        "network": openstack.convert_net_json(network, known_macs=macs) if network else None,
    }))
else:
    seeded = util.pathprefix2dict(directory, required=["user-data", "meta-data"],
                                  optional=["vendor-data", "network-config"])
    merged = DataSourceNoCloud._merge_new_seed({"meta-data": {}}, seeded)
    metadata = merged["meta-data"]
    print(json.dumps({
        "instance-id": metadata["instance-id"],
        "local-hostname": metadata.get("local-hostname"),
        "keys": sources.normalize_pubkey_data(metadata.get("public-keys")),
        "user-data": merged["user-data"].decode(),
        "network": merged.get("network-config"),
    }))
"""


def _cloud_init_reads(documents: SeedDocuments, tmp_path: Path, macs: dict[str, str] | None = None) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "seed.iso"
    write_seed(documents, image)
    directory = tmp_path / "mounted"
    for path, content in read_iso(image).files.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(content)
    result = subprocess.run([SYSTEM_PYTHON, "-c", READER, documents.image_type.value, str(directory),
                             json.dumps(macs or {})], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", list(CloudInitImageType), ids=[k.value for k in CloudInitImageType])
def test_cloud_init_reads_identity_keys_and_user_data(kind: CloudInitImageType, tmp_path: Path) -> None:
    case = CASES["configdrive-everything"]
    documents = generate_seed(case.pod(), case.network(), image_type=kind)
    seen = _cloud_init_reads(documents, tmp_path, {"0a:58:0a:f4:01:05": "ens3"})
    assert seen["instance-id"] == "everything-vm.default"
    assert seen["local-hostname"] == "everything-vm"
    assert seen["keys"] == [KEY_A]
    assert seen["user-data"] == documents.user_data
    subnets = seen["network"]["config"][0]["subnets"]
    assert subnets[0]["address"] == "10.244.1.5"
    assert seen["network"]["config"][0]["mac_address"] == "0a:58:0a:f4:01:05"


def test_configdrive_keys_come_only_from_the_openstack_map(tmp_path: Path) -> None:
    documents = generate_seed(CASES["ssh-keys"].pod(), image_type=CloudInitImageType.CONFIGDRIVE)
    assert _cloud_init_reads(documents, tmp_path / "vmpod")["keys"] == [KEY_C, KEY_A, KEY_B]
    # What Virtlet wrote: the NoCloud-style list only.  cloud-init finds no key at all.
    virtlet = attrs.evolve(documents, meta_data={k: v for k, v in documents.meta_data.items() if k != "public_keys"})
    assert "public-keys" in virtlet.meta_data
    assert _cloud_init_reads(virtlet, tmp_path / "virtlet")["keys"] == []
