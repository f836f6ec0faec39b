"""The minimal image step: local files by path or file:// URL, digests, refusing what is not a disk image."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpod.errors import NotFoundError, SpecError
from vmpod.images import image_url, inspect_image
from vmpod.plugins import get_plugin_manager
from vmpod.runtime.imagestore import ImageStore
from vmpod.runtime.layout import Layout
from vmpod.runtime.store import Store


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageStore]:
    layout = Layout(tmp_path / "state")
    layout.make()
    store = Store.open(layout.db)
    yield ImageStore(layout, store, get_plugin_manager(load_entrypoints=False).image_sources())
    store.close()


def _qcow2(path: Path, size: str = "32M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def test_image_urls() -> None:
    assert image_url("/srv/images/cirros.qcow2") == "file:///srv/images/cirros.qcow2"
    assert image_url("file:///srv/a b.img") == "file:///srv/a b.img"
    assert image_url("virtlet.cloud/cirros") == "https://cirros"
    assert image_url("virtlet.cloud/cloud-images.ubuntu.com/x.img") == "https://cloud-images.ubuntu.com/x.img"
    assert image_url("http://example.org/x.img") == "http://example.org/x.img"
    with pytest.raises(SpecError):
        image_url("  ")


def test_pull_by_path_and_url_gives_one_image(images: ImageStore, tmp_path: Path) -> None:
    source = _qcow2(tmp_path / "base.qcow2")
    record = images.pull(str(source))
    assert record.digest == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert record.format == "qcow2"
    assert record.virtual_size == 32 << 20
    assert Path(record.path) == images.layout.images / record.digest.removeprefix("sha256:")
    assert Path(record.path).read_bytes() == source.read_bytes()
    assert os.stat(record.path).st_ino != os.stat(source).st_ino  # a copy, never a link
    assert images.pull(source.as_uri()) == record
    assert not list(images.layout.images_tmp.iterdir())


def test_unchanged_file_is_not_copied_again(images: ImageStore, tmp_path: Path) -> None:
    source = _qcow2(tmp_path / "base.qcow2")
    record = images.pull(str(source))
    stored = Path(record.path)
    inode = stored.stat().st_ino
    assert images.pull(str(source)).path == record.path
    assert stored.stat().st_ino == inode


def test_changed_file_gives_a_new_image(images: ImageStore, tmp_path: Path) -> None:
    source = _qcow2(tmp_path / "base.qcow2")
    first = images.pull(str(source))
    _qcow2(source, "48M")
    second = images.pull(str(source))
    assert second.digest != first.digest
    assert second.virtual_size == 48 << 20
    assert Path(first.path).exists()  # the old image stays: running pods may use it


def test_raw_disk_with_a_partition_table(images: ImageStore, tmp_path: Path) -> None:
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"\x00" * 510 + b"\x55\xaa" + b"\x00" * (1024 * 1024 - 512))
    record = images.pull(str(raw))
    assert record.format == "raw"
    assert record.virtual_size == 1024 * 1024


@pytest.mark.parametrize("make", ["text", "vmdk", "backed", "empty_raw"])
def test_refuses_what_is_not_a_bootable_disk_image(images: ImageStore, tmp_path: Path, make: str) -> None:
    path = tmp_path / "image"
    if make == "text":
        path.write_text("#!/bin/sh\necho this is not a disk\n" * 100)
    elif make == "vmdk":
        subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(path), "16M"], check=True)
    elif make == "backed":
        base = _qcow2(tmp_path / "base.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
                       check=True)
    else:
        path.write_bytes(b"\x00" * 4096)
    with pytest.raises(SpecError) as info:
        images.pull(str(path))
    assert info.value.path == "spec.containers[0].image"
    assert not list(images.layout.images.iterdir())
    assert not list(images.layout.images_tmp.iterdir())


def test_missing_file_and_unknown_scheme(images: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        images.pull(str(tmp_path / "nope.qcow2"))
    with pytest.raises(SpecError, match="no image source handles gopher"):
        images.pull("gopher://example.invalid/cirros.qcow2")
    with pytest.raises(SpecError, match="not a file"):
        images.pull(str(tmp_path))


def test_sweep_removes_partial_fetches_and_forgets_vanished_files(images: ImageStore, tmp_path: Path) -> None:
    record = images.pull(str(_qcow2(tmp_path / "base.qcow2")))
    partial = images.layout.images_tmp / "deadbeef"
    partial.write_bytes(b"half an image")
    stray = images.layout.images / ("0" * 64)
    stray.write_bytes(b"not recorded")
    assert set(images.sweep()) == {partial, stray}
    assert Path(record.path).exists()
    os.chmod(record.path, 0o644)
    Path(record.path).unlink()
    images.sweep()
    assert images.store.image(record.digest) is None
    again = images.pull(str(tmp_path / "base.qcow2"))
    assert again.digest == record.digest
    assert Path(again.path).exists()


def test_inspect_image_reads_qemu_img(tmp_path: Path) -> None:
    assert inspect_image(_qcow2(tmp_path / "a.qcow2", "1G")) == ("qcow2", 1 << 30)
