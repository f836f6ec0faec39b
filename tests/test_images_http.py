"""Pulling images over HTTP and HTTPS from a real server on 127.0.0.1, and every fault the issue lists.

Each fault must give a clear error and leave nothing in the store (no partial file
under ``images/tmp`` nor ``images/sha256``).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.imageserver import ImageServer, TLSFiles, make_tls
from vmpod.errors import NotFoundError, SpecError
from vmpod.images import ImageConfig, ImagePullError, download, load_translations
from vmpod.plugins import get_plugin_manager
from vmpod.runtime.imagestore import ImageStore
from vmpod.runtime.layout import Layout
from vmpod.runtime.store import Store


def _qcow2(path: Path, size: str = "64M") -> Path:
    raw = path.with_suffix(".raw")
    with raw.open("wb") as f:  # some data, so the image is not all header
        f.write(b"\x00" * 510 + b"\x55\xaa")
        f.write(bytes(range(256)) * 4096)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(raw), size], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return path


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    _qcow2(root / "cirros.qcow2")
    _qcow2(root / "cirros-2.qcow2", "96M")
    (root / "notes.txt").write_bytes(b"hello, this is not a disk image\n" * 4096)
    return root


@pytest.fixture
def server(served: Path) -> Iterator[ImageServer]:
    with ImageServer(served) as srv:
        yield srv


@pytest.fixture
def tls_server(served: Path, tls: TLSFiles) -> Iterator[ImageServer]:
    with ImageServer(served, tls=tls) as srv:
        yield srv


def _open_store(state: Path, config: ImageConfig | None = None) -> tuple[ImageStore, Store]:
    layout = Layout(state)
    layout.make()
    store = Store.open(layout.db)
    sources = get_plugin_manager(load_entrypoints=False).image_sources()
    return ImageStore(layout, store, sources, config or ImageConfig()), store


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageStore]:
    image_store, store = _open_store(tmp_path / "state")
    yield image_store
    store.close()


def _assert_clean(images: ImageStore) -> None:
    assert list(images.layout.images_tmp.iterdir()) == []
    assert list(images.layout.images.iterdir()) == []
    assert images.store.images() == []


# ---- successful pulls ---------------------------------------------------------------------


def test_plain_pull(images: ImageStore, server: ImageServer, served: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    record = images.pull(server.url("/files/cirros.qcow2"), progress=lambda done, total: seen.append((done, total)))
    assert record.digest == _sha(served / "cirros.qcow2")
    assert record.format == "qcow2"
    assert record.virtual_size == 64 << 20
    assert Path(record.path).read_bytes() == (served / "cirros.qcow2").read_bytes()
    assert Path(record.path).parent == images.layout.images
    assert seen[-1] == (record.size, record.size)
    assert list(images.layout.images_tmp.iterdir()) == []
    # Pulled again by URL: re-used; with refresh: downloaded again, same digest.
    assert images.pull(server.url("/files/cirros.qcow2")) == record
    assert server.hits["/files/cirros.qcow2"] == 1
    assert images.pull(server.url("/files/cirros.qcow2"), refresh=True) == record
    assert server.hits["/files/cirros.qcow2"] == 2


def test_redirects_are_followed_up_to_the_limit(images: ImageStore, server: ImageServer, served: Path,
                                                 tmp_path: Path) -> None:
    record = images.pull(server.url("/redirect/3/cirros.qcow2"))
    assert record.digest == _sha(served / "cirros.qcow2")
    assert server.hits["/redirect/1/cirros.qcow2"] == 1
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "limit.yaml").write_text(
        "translations:\n"
        f"  - name: short\n    url: {server.url('/redirect/3/cirros-2.qcow2')}\n    transport: two\n"
        "transports:\n  two: {maxRedirects: 2}\n")
    images.config = ImageConfig(translations=load_translations(conf))
    with pytest.raises(ImagePullError, match="more than 2 redirects"):
        images.pull("virtlet.cloud/short")
    assert len(images.store.images()) == 1


def test_digest_match_and_tag_ignored(images: ImageStore, server: ImageServer, served: Path) -> None:
    digest = _sha(served / "cirros.qcow2")
    url = server.url("/files/cirros.qcow2")
    record = images.pull(f"{url}@{digest}")
    assert record.digest == digest
    # Pinned and present: not downloaded again, even under another name.
    assert images.pull(f"{server.url('/files/other.qcow2')}@{digest}") == record
    assert server.hits["/files/cirros.qcow2"] == 1
    assert images.resolve(f"virtlet.cloud/example.org/cirros:0.5.2@{digest}").url == "https://example.org/cirros"


def test_https_with_translation_regexp_and_a_per_rule_ca(images: ImageStore, tls_server: ImageServer,
                                                          served: Path, tls: TLSFiles, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    ca = {"certificates": [{"cert": tls.ca.read_text()}]}
    (conf / "50-local.yaml").write_text(yaml.safe_dump({
        "prefix": "mirror",
        "translations": [
            {"regexp": r"cirros/(\d+)", "url": tls_server.url("/files/cirros-$1.qcow2"), "transport": "local"},
            {"name": "cirros", "url": tls_server.url("/files/cirros.qcow2"), "transport": "local"},
            {"name": "wrong-name", "url": tls_server.url("/files/cirros.qcow2"), "transport": "wrong"},
        ],
        "transports": {
            "local": {"timeout": 10000, "tls": {**ca, "serverName": "images.test"}},
            "wrong": {"tls": {**ca, "serverName": "wrong.test"}},
        },
    }))
    images.config = ImageConfig(translations=load_translations(conf))
    resolved = images.resolve("virtlet.cloud/mirror/cirros/2")
    assert resolved.url == tls_server.url("/files/cirros-2.qcow2")
    assert resolved.transport.tls.server_name == "images.test"
    assert resolved.transport.timeout == 10.0
    assert resolved.rule == f"{conf / '50-local.yaml'}: cirros/(\\d+)"
    record = images.pull("virtlet.cloud/mirror/cirros/2")
    assert record.digest == _sha(served / "cirros-2.qcow2")
    assert record.virtual_size == 96 << 20
    assert images.pull("mirror/cirros").digest == _sha(served / "cirros.qcow2")
    # The certificate is checked against the rule's serverName.
    with pytest.raises(ImagePullError, match="TLS error"):
        images.pull("mirror/wrong-name", refresh=True)
    # Without the rule's CA the same server is refused.
    with pytest.raises(ImagePullError, match=r"TLS error.*CERTIFICATE_VERIFY_FAILED"):
        images.pull(tls_server.url("/files/notes.txt"))


def test_insecure_transport(images: ImageStore, tls_server: ImageServer, served: Path, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.yaml").write_text(f"translations:\n  - name: any\n    url: {tls_server.url('/files/cirros.qcow2')}\n"
                                 "    transport: lax\ntransports:\n  lax: {tls: {insecure: true}}\n")
    images.config = ImageConfig(translations=load_translations(conf))
    assert images.pull("any").digest == _sha(served / "cirros.qcow2")


# ---- faults -------------------------------------------------------------------------------


def test_connection_dropped_mid_download(images: ImageStore, server: ImageServer) -> None:
    with pytest.raises(ImagePullError, match=r"closed after .* bytes"):
        images.pull(server.url("/drop/cirros.qcow2"))
    _assert_clean(images)


def test_wrong_digest(images: ImageStore, server: ImageServer, served: Path) -> None:
    want = "sha256:" + "ab" * 32
    with pytest.raises(ImagePullError, match=f"image digest mismatch: {_sha(served / 'cirros.qcow2')} "
                                             f"instead of {want}"):
        images.pull(server.url("/files/cirros.qcow2") + "@" + want)
    _assert_clean(images)
    with pytest.raises(SpecError, match="64 hex digits"):
        images.pull(server.url("/files/cirros.qcow2") + "@sha256:abc")


def test_404(images: ImageStore, server: ImageServer) -> None:
    with pytest.raises(NotFoundError, match="HTTP 404"):
        images.pull(server.url("/files/nope.qcow2"))
    _assert_clean(images)


def test_redirect_loop(images: ImageStore, server: ImageServer) -> None:
    with pytest.raises(ImagePullError, match="redirect loop"):
        images.pull(server.url("/loop/a"))
    assert server.hits["/loop/a"] == 1
    assert server.hits["/loop/b"] == 1
    _assert_clean(images)


def test_stalling_server_times_out(images: ImageStore, server: ImageServer, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "t.yaml").write_text(f"translations:\n  - name: stall\n    url: {server.url('/stall/cirros.qcow2')}\n"
                                 "transports:\n  '': {timeout: 500}\n")
    images.config = ImageConfig(translations=load_translations(conf))
    with pytest.raises(ImagePullError, match=r"timed out \(0.5 s\)"):
        images.pull("stall")
    _assert_clean(images)


def test_disk_full(tmp_path: Path, server: ImageServer, served: Path) -> None:
    big = served / "big.img"
    with big.open("wb") as f:
        f.write(b"\x00" * 510 + b"\x55\xaa")
        f.write(bytes(range(256)) * (16 * 4096))
    images_dir = tmp_path / "state" / "images"
    images_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(images_dir)], check=True)
    try:
        images, store = _open_store(tmp_path / "state")
        try:
            with pytest.raises(ImagePullError, match="no space left on the device"):
                images.pull(server.url("/files/big.img"))
            _assert_clean(images)
            # The same store still works for an image that fits.
            assert images.pull(server.url("/files/cirros.qcow2")).format == "qcow2"
        finally:
            store.close()
    finally:
        subprocess.run(["umount", str(images_dir)], check=True)
        big.unlink()


def test_not_a_disk_image(images: ImageStore, server: ImageServer) -> None:
    with pytest.raises(SpecError, match="not a disk image"):
        images.pull(server.url("/files/notes.txt"))
    _assert_clean(images)


def test_unreachable_server(images: ImageStore, server: ImageServer) -> None:
    port = server.port
    server.__exit__(None, None, None)
    with pytest.raises(ImagePullError, match=r"connection failed|Connection refused"):
        images.pull(f"http://127.0.0.1:{port}/files/cirros.qcow2")
    _assert_clean(images)


# ---- concurrency --------------------------------------------------------------------------


def test_ten_concurrent_pulls_download_once(images: ImageStore, server: ImageServer, served: Path) -> None:
    url = server.url("/gate/cirros.qcow2")
    results: list[object] = [None] * 10

    def pull(i: int) -> None:
        try:
            results[i] = images.pull(url, refresh=True)
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while images.joined < 9 and time.monotonic() < deadline:  # the server holds the first request meanwhile
        time.sleep(0.01)
    server.gate.set()
    for t in threads:
        t.join(30)
    assert images.joined == 9
    assert server.hits["/gate/cirros.qcow2"] == 1
    assert images.fetches == 1
    digests = {getattr(r, "digest", r) for r in results}
    assert digests == {_sha(served / "cirros.qcow2")}
    assert len(images.store.images()) == 1


def test_an_unresolvable_short_name_points_at_translation_configs() -> None:
    """Virtlet's users saw `https://cirros` fail with no hint (reference 4.2 row 27)."""
    with pytest.raises(ImagePullError, match=r"cannot resolve host 'vmpod-no-such-image'.*translation config"):
        download("https://vmpod-no-such-image/disk.img", io.BytesIO())
    with pytest.raises(ImagePullError, match=r"cannot resolve host 'image\.invalid'") as caught:
        download("https://image.invalid/disk.img", io.BytesIO())
    assert "translation config" not in str(caught.value)
