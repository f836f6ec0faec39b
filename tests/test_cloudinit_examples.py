"""Every Virtlet example manifest: golden seed documents (NoCloud and ConfigDrive), and the ISO read back.

Each pod gets the same CNI result (the bridge plugin's), so the goldens show
where network configuration is generated and where it is left out
(persistent root disk, ``VirtletForceDHCPNetworkConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import VIRTLET_EXAMPLES
from tests.support.cloudinit_cases import CNI_BRIDGE
from tests.support.isoread import read_iso
from vmpod.cloudinit import from_cni_result, generate_seed, write_seed
from vmpod.manifest import load_manifest_files
from vmpod.model import CloudInitImageType, VMPod

EXAMPLES = sorted(VIRTLET_EXAMPLES.glob("*.yaml"))
NETWORK = from_cni_result(CNI_BRIDGE)


def _pods() -> list[tuple[str, VMPod]]:
    result = []
    for path in EXAMPLES:
        for pod in load_manifest_files([path]).pods:
            result.append((f"{path.stem}__{pod.name}", pod))
    return result


PODS = _pods()
TYPES = list(CloudInitImageType)


def test_every_example_is_covered() -> None:
    assert len(EXAMPLES) == 21
    assert {name.split("__")[0] for name, _ in PODS} == {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("kind", TYPES, ids=[t.value for t in TYPES])
@pytest.mark.parametrize(("name", "pod"), PODS, ids=[name for name, _ in PODS])
def test_example_documents_match_golden(name: str, pod: VMPod, kind: CloudInitImageType, golden: Any) -> None:
    documents = generate_seed(pod, NETWORK, image_type=kind)
    golden.check(f"cloudinit/examples/{name}.{kind.value}.txt", documents.text())


@pytest.mark.parametrize("kind", TYPES, ids=[t.value for t in TYPES])
@pytest.mark.parametrize(("name", "pod"), PODS, ids=[name for name, _ in PODS])
def test_example_seed_iso_reads_back_with_isoinfo_and_blkid(name: str, pod: VMPod, kind: CloudInitImageType,
                                                            tmp_path: Path) -> None:
    documents = generate_seed(pod, NETWORK, image_type=kind)
    image = tmp_path / f"{name}.iso"
    write_seed(documents, image)
    seen = read_iso(image)
    assert seen.label == ("config-2" if kind is CloudInitImageType.CONFIGDRIVE else "cidata")
    assert seen.files == documents.files()
    # Joliet (what Windows' cloudbase-init reads) has the same names.
    assert {p for p, e in seen.joliet.items() if not e.is_dir} == set(documents.files())


def test_pod_annotation_chooses_the_layout_by_default() -> None:
    (pod,) = load_manifest_files([VIRTLET_EXAMPLES / "cirros-vm.yaml"]).pods
    assert generate_seed(pod).image_type is CloudInitImageType.NOCLOUD
    configdrive = attrs.evolve(pod, vm=attrs.evolve(pod.vm, cloud_init_image_type=CloudInitImageType.CONFIGDRIVE))
    assert generate_seed(configdrive).volume_label == "config-2"
    assert generate_seed(configdrive, image_type=CloudInitImageType.NOCLOUD).volume_label == "cidata"
