"""Image name resolution: prefix, tags, digests, translation configs (anchored regexps, sorted files), file dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmpod.errors import SpecError
from vmpod.images import ImageConfig, Transport, load_translations, parse_translation_config

DIGEST = "sha256:" + "0123456789abcdef" * 4


def _config(tmp_path: Path, **files: str) -> ImageConfig:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    for name, text in files.items():
        (conf / name.replace("_", ".")).write_text(text)
    return ImageConfig(translations=load_translations(conf))


def test_virtlet_names_tags_and_digests() -> None:
    config = ImageConfig()
    resolved = config.resolve("virtlet.cloud/download.cirros-cloud.net/0.3.5/cirros-0.3.5-x86_64-disk.img")
    assert resolved.url == "https://download.cirros-cloud.net/0.3.5/cirros-0.3.5-x86_64-disk.img"
    assert resolved.digest == ""
    assert resolved.transport == Transport()
    tagged = config.resolve(f"virtlet.cloud/example.org/images/fedora:39@{DIGEST.upper().replace('SHA256', 'sha256')}")
    assert tagged.name == "example.org/images/fedora"
    assert tagged.url == "https://example.org/images/fedora"
    assert tagged.digest == DIGEST
    assert config.resolve("/srv/disk.qcow2").url == "file:///srv/disk.qcow2"
    assert config.resolve("http://127.0.0.1:8080/a.img").url == "http://127.0.0.1:8080/a.img"
    assert ImageConfig(download_protocol="http").resolve("mirror.local/a.img").url == "http://mirror.local/a.img"
    with pytest.raises(SpecError, match="64 hex digits"):
        config.resolve("example.org/a@sha256:1234")
    with pytest.raises(SpecError, match="empty image name"):
        config.resolve("virtlet.cloud/")


def test_regexps_are_anchored_and_expand_groups(tmp_path: Path) -> None:
    config = _config(tmp_path, a_yaml="""
translations:
  - regexp: 'image(\\d+)'
    url: https://images.example/$1.qcow2
  - regexp: 'os/(?P<distro>[a-z]+)-(\\d+)'
    url: https://images.example/${distro}/$2/disk.qcow2
""")
    assert config.resolve("image7").url == "https://images.example/7.qcow2"
    # Virtlet's unanchored search would translate these; vmpod matches the whole name.
    assert config.resolve("prod/image1").url == "https://prod/image1"
    assert config.resolve("image1x").url == "https://image1x"
    assert config.resolve("os/debian-12").url == "https://images.example/debian/12/disk.qcow2"


def test_files_in_sorted_order_names_before_regexps_prefixes(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        b_yaml="translations:\n  - name: cirros\n    url: https://second/cirros\n",
        a_yaml="translations:\n  - regexp: 'cirr.*'\n    url: https://first/regexp\n"
               "  - name: cirros\n    url: https://first/name\n",
        c_yml="prefix: prod\ntranslations:\n  - name: cirros\n    url: https://prod/cirros\n    transport: p\n"
              "transports:\n  p: {timeout: -5, maxRedirects: 0, proxy: 'http://proxy:3128'}\n",
        d_txt="not: [a config",
    )
    assert config.resolve("cirros").url == "https://first/name"  # a-*, and exact names before regexps
    assert config.resolve("cirrus").url == "https://first/regexp"
    prod = config.resolve("virtlet.cloud/prod/cirros")
    assert prod.url == "https://prod/cirros"
    assert prod.transport.timeout is None  # negative: no limit, as in Virtlet
    assert prod.transport.max_redirects == 0
    assert prod.transport.proxy == "http://proxy:3128"
    assert config.resolve("production/cirros").url == "https://production/cirros"


def test_sorted_file_names(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("20-b.yaml", "10-a.yml", "30-c.yaml", "ignored.txt"):
        (conf / name).write_text(f"translations:\n  - name: x\n    url: https://{name.split('.')[0]}/x\n")
    configs = load_translations(conf)
    assert [Path(c.source).name for c in configs] == ["10-a.yml", "20-b.yaml", "30-c.yaml"]
    assert ImageConfig(translations=configs).resolve("x").url == "https://10-a/x"
    assert load_translations(tmp_path / "missing") == ()


@pytest.mark.parametrize(("document", "message"), [
    ({"translations": [{"url": "https://x"}]}, "exactly one of name and regexp"),
    ({"translations": [{"name": "a", "regexp": "b", "url": "https://x"}]}, "exactly one of name and regexp"),
    ({"translations": [{"regexp": "(", "url": "https://x"}]}, "bad regular expression"),
    ({"translations": [{"name": "a"}]}, "needs url"),
    ({"transports": {"t": {"timeout": "5s"}}}, "milliseconds"),
    ({"transports": {"t": {"maxRedirects": -1}}}, "non-negative"),
    ({"transports": {"t": {"proxy": "socks5://x"}}}, "http:// URL"),
    ({"transports": {"t": {"tls": {"certificates": [{"key": "k"}]}}}}, "needs cert"),
    ({"translation": []}, "unknown key"),
    (["a list"], "must be a mapping"),
])
def test_malformed_configs_name_the_file_and_field(document: object, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_translation_config(document, "/etc/vmpod/images/bad.yaml")
    assert "/etc/vmpod/images/bad.yaml" in str(info.value)


def test_tls_certificates_split_into_cas_and_client_certs() -> None:
    config = parse_translation_config({"transports": {"": {"tls": {
        "certificates": [{"cert": "CA PEM"}, {"cert": "CLIENT PEM", "key": "KEY PEM"}],
        "serverName": "images.test", "insecure": True}}}}, "x.yaml")
    tls = config.transport("").tls
    assert tls.ca_certs == ("CA PEM",)
    assert tls.client_certs == (("CLIENT PEM", "KEY PEM"),)
    assert tls.server_name == "images.test"
    assert tls.insecure
    assert config.transport("unknown") == Transport(name="unknown")


def test_environment(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.yaml").write_text("translations:\n  - name: cirros\n    url: https://mirror/cirros\n")
    config = ImageConfig.from_env({"VMPOD_IMAGE_TRANSLATIONS": str(conf), "VMPOD_IMAGE_FILE_DIRS": "/srv:/data",
                                   "VMPOD_IMAGE_DOWNLOAD_PROTOCOL": "http"})
    assert config.resolve("cirros").url == "https://mirror/cirros"
    assert config.resolve("other/x").url == "http://other/x"
    assert config.file_dirs == (Path("/srv"), Path("/data"))
    config.resolve("/srv/images/a.qcow2")
    with pytest.raises(SpecError, match="allowed directories"):
        config.resolve("/srv/../etc/shadow")
    with pytest.raises(SpecError, match="VMPOD_IMAGE_FILE_DIRS is empty"):
        ImageConfig.from_env({"VMPOD_IMAGE_FILE_DIRS": ""}).resolve("/srv/a.qcow2")
    assert ImageConfig.from_env({}).file_dirs is None  # unset: any local file the user can read
    with pytest.raises(SpecError, match="http or https"):
        ImageConfig.from_env({"VMPOD_IMAGE_DOWNLOAD_PROTOCOL": "ftp"})
