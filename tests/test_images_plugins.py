"""A third-party image source (here a pretend ``oci://`` registry) plugs in through ``vmpod_image_sources``."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpod import hookimpl
from vmpod.errors import SpecError
from vmpod.hookspecs import ImageSourceSpec
from vmpod.images import ImageConfig, ImagePullError
from vmpod.plugins import get_plugin_manager
from vmpod.runtime.imagestore import ImageStore
from vmpod.runtime.layout import Layout
from vmpod.runtime.store import Store


class OciSource:
    """Serves ``oci://registry/<name>`` from a directory of qcow2 files; records the calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []

    def fetch(self, url: str, dest: Path) -> None:
        self.calls.append(url)
        dest.write_bytes((self.root / url.rsplit("/", 1)[1]).read_bytes())

    @hookimpl
    def vmpod_image_sources(self) -> Iterator[ImageSourceSpec]:
        yield ImageSourceSpec(name="oci", schemes=("oci",), fetch=self.fetch)


@pytest.fixture
def oci(tmp_path: Path) -> OciSource:
    root = tmp_path / "registry"
    root.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "cirros"), "40M"], check=True)
    (root / "junk").write_bytes(b"junk" * 1000)
    return OciSource(root)


@pytest.fixture
def images(tmp_path: Path, oci: OciSource) -> Iterator[ImageStore]:
    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(oci, name="oci-source")
    layout = Layout(tmp_path / "state")
    layout.make()
    store = Store.open(layout.db)
    yield ImageStore(layout, store, manager.image_sources(), ImageConfig())
    store.close()


def test_plugin_source_is_used_verified_and_stored(images: ImageStore, oci: OciSource) -> None:
    assert {"file", "http", "https", "oci"} <= set(images.sources)
    digest = "sha256:" + hashlib.sha256((oci.root / "cirros").read_bytes()).hexdigest()
    record = images.pull(f"oci://registry/cirros@{digest}")
    assert record.digest == digest
    assert record.virtual_size == 40 << 20
    assert oci.calls == ["oci://registry/cirros"]
    assert images.pull("oci://registry/cirros") == record  # re-used by URL
    assert oci.calls == ["oci://registry/cirros"]
    with pytest.raises(ImagePullError, match="image digest mismatch"):
        images.pull("oci://registry/cirros@sha256:" + "0" * 64)
    with pytest.raises(SpecError, match=r"not a disk image|not a readable disk image"):
        images.pull("oci://registry/junk")
    assert list(images.layout.images_tmp.iterdir()) == []
    assert [r.digest for r in images.store.images()] == [digest]
