"""The in-process seed ISO writer, read back with independent tools.

Every image is read with ``isoinfo`` (Rock Ridge, Joliet and plain ISO 9660
trees) and ``blkid`` (tests/support/isoread.py), and, where the kernel has
an iso9660 driver, mounted through a loop device.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.support.isoread import IsoImage, missing_tools, read_iso
from vmpod.cloudinit.iso import (
    CONFIGDRIVE_LABEL,
    MAX_SEED_BYTES,
    NOCLOUD_LABEL,
    build_iso,
    write_iso,
)
from vmpod.errors import SpecError


def test_the_real_readers_are_installed() -> None:
    """isoinfo and blkid are what these tests trust; scripts/setup.sh installs them."""
    assert missing_tools() == []

NOCLOUD = {
    "meta-data": b'{"instance-id": "i-0123456789", "local-hostname": "cirros-vm"}\n',
    "user-data": b"#cloud-config\nusers:\n  - name: testuser\n    ssh_authorized_keys: [ssh-rsa AAAA]\n",
    "network-config": b"version: 1\nconfig:\n  - type: physical\n    name: eth0\n",
}
CONFIGDRIVE = {
    "openstack/latest/meta_data.json": b'{"uuid": "i-0123456789", "hostname": "cirros-vm"}',
    "openstack/latest/user_data": b"#cloud-config\nruncmd: [echo hi]\n",
    "openstack/latest/network_data.json": b'{"links": [], "networks": [], "services": []}',
}

FILE_MODE = "-r--r--r--"
DIR_MODE = "dr-xr-xr-x"
ISO9660_NAME = re.compile(r"[A-Z0-9_]+(\.[A-Z0-9_]*;1)?\Z")


def directories(paths: Iterator[str] | list[str]) -> set[str]:
    """Every directory the files at ``paths`` live in."""
    dirs: set[str] = set()
    for path in paths:
        parts = path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def written(tmp_path: Path, files: dict[str, bytes], label: str, name: str = "seed.iso") -> Path:
    dest = tmp_path / name
    write_iso(files, label, dest)
    return dest


def assert_layout(image: IsoImage, files: dict[str, bytes], label: str) -> None:
    """The independent readers see exactly ``files`` under ``label``, with genisoimage -r modes."""
    assert image.files == files
    assert image.label == label
    assert image.volume_id == label
    dirs = directories(list(files))
    assert set(image.rock_ridge) == set(files) | dirs
    assert set(image.joliet) == set(files) | dirs
    for path, entry in image.rock_ridge.items():
        assert entry.is_dir == (path in dirs)
        assert entry.mode == (DIR_MODE if entry.is_dir else FILE_MODE), path
        assert (entry.uid, entry.gid) == (0, 0)
        assert entry.year == 1970
        if not entry.is_dir:
            assert entry.nlinks == 1
            assert entry.size == len(files[path])
    for path, entry in image.joliet.items():
        assert entry.is_dir == (path in dirs)
        if not entry.is_dir:
            assert entry.size == len(files[path])
    for path in image.iso9660:
        assert all(ISO9660_NAME.match(name) for name in path.split("/")), path
    assert len(image.iso9660) == len(image.rock_ridge)


# --- layouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "label"),
    [(NOCLOUD, NOCLOUD_LABEL), (CONFIGDRIVE, CONFIGDRIVE_LABEL)],
    ids=["nocloud", "configdrive"],
)
def test_layout_reads_back(tmp_path: Path, files: dict[str, bytes], label: str) -> None:
    assert_layout(read_iso(written(tmp_path, files, label)), files, label)


def test_nocloud_names_are_exact_in_rock_ridge_and_joliet(tmp_path: Path) -> None:
    image = read_iso(written(tmp_path, NOCLOUD, NOCLOUD_LABEL))
    assert sorted(image.rock_ridge) == ["meta-data", "network-config", "user-data"]
    assert sorted(image.joliet) == ["meta-data", "network-config", "user-data"]
    assert sorted(image.iso9660) == ["META_DATA.;1", "NETWORK_CONFIG.;1", "USER_DATA.;1"]


def test_configdrive_names_are_exact_in_rock_ridge_and_joliet(tmp_path: Path) -> None:
    image = read_iso(written(tmp_path, CONFIGDRIVE, CONFIGDRIVE_LABEL))
    expected = sorted(["openstack", "openstack/latest", *CONFIGDRIVE])
    assert sorted(image.rock_ridge) == expected
    assert sorted(image.joliet) == expected
    assert image.rock_ridge["openstack/latest"].mode == DIR_MODE


def test_names_that_collide_in_iso9660_stay_distinct(tmp_path: Path) -> None:
    files = {
        "user-data": b"1",
        "user_data": b"2",
        "user data": b"3",
        "user+data": b"4",
        ".hidden": b"5",
        "a.b.c.tar.gz": b"6",
        "x" * 64: b"7",
        "x" * 63 + "y": b"8",
        "dir.d/file": b"9",
        "dir_d": b"10",
    }
    image = read_iso(written(tmp_path, files, NOCLOUD_LABEL))
    assert_layout(image, files, NOCLOUD_LABEL)
    top_level = [path for path in image.iso9660 if "/" not in path]
    assert len({name.removesuffix(";1").rstrip(".") for name in top_level}) == len(top_level)


def test_non_ascii_names(tmp_path: Path) -> None:
    files = {"ünïcödé/dàtä": b"latin-1 names", "é": b"", "space in name": b"s"}
    image = read_iso(written(tmp_path, files, NOCLOUD_LABEL))
    assert_layout(image, files, NOCLOUD_LABEL)  # Joliet names: isoinfo prints them as Latin-1


def test_empty_files_and_empty_seed(tmp_path: Path) -> None:
    assert_layout(read_iso(written(tmp_path, {"meta-data": b""}, NOCLOUD_LABEL)), {"meta-data": b""},
                  NOCLOUD_LABEL)
    assert_layout(read_iso(written(tmp_path, {}, CONFIGDRIVE_LABEL, "empty.iso")), {}, CONFIGDRIVE_LABEL)


def test_deepest_allowed_path_needs_no_relocation(tmp_path: Path) -> None:
    files = {"a/b/c/d/e/f/g/h": b"eight levels", "a/b/c/d/e/f/g/i": b"", "top": b"t"}
    image = read_iso(written(tmp_path, files, NOCLOUD_LABEL))
    assert_layout(image, files, NOCLOUD_LABEL)  # in particular: no rr_moved directory anywhere


def test_binary_and_multi_sector_contents(tmp_path: Path) -> None:
    files = {
        "user-data": bytes(range(256)) * 41,  # 10496 bytes: several 2048-byte sectors, not a multiple
        "meta-data": b"\x00" * 2048,
        "network-config": b"\xff",
    }
    assert_layout(read_iso(written(tmp_path, files, NOCLOUD_LABEL)), files, NOCLOUD_LABEL)


def test_label_is_what_blkid_reports(tmp_path: Path) -> None:
    for label in ("CIDATA", "config-2", "x", "a" * 16):
        assert read_iso(written(tmp_path, NOCLOUD, label, f"{label}.iso")).label == label


# --- determinism ----------------------------------------------------------------------------------


def test_two_builds_are_byte_identical() -> None:
    first = build_iso(NOCLOUD, NOCLOUD_LABEL)
    assert build_iso(dict(reversed(NOCLOUD.items())), NOCLOUD_LABEL) == first
    assert build_iso(CONFIGDRIVE, CONFIGDRIVE_LABEL) == build_iso(CONFIGDRIVE, CONFIGDRIVE_LABEL)


_CHILD = """
import sys, time
time.time = lambda: 2_000_000_000.5  # pycdlib stamps records with time.time(): another clock
from vmpod.cloudinit.iso import build_iso
files = {k: v.encode("latin-1") for k, v in FILES.items()}
sys.stdout.buffer.write(build_iso(files, LABEL))
"""


@pytest.mark.parametrize("tz", ["XST-12:45", "YST+9:30"])
def test_build_does_not_depend_on_clock_timezone_or_hash_seed(tz: str) -> None:
    files = {**NOCLOUD, **CONFIGDRIVE}
    source = _CHILD.replace("FILES", repr({k: v.decode("latin-1") for k, v in files.items()})).replace(
        "LABEL", repr(NOCLOUD_LABEL)
    )
    env = {**os.environ, "TZ": tz, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", source], capture_output=True, env=env, check=True)
    assert hashlib.sha256(child.stdout).hexdigest() == hashlib.sha256(
        build_iso(files, NOCLOUD_LABEL)
    ).hexdigest()


def test_every_date_is_the_epoch(tmp_path: Path) -> None:
    dest = written(tmp_path, {**NOCLOUD, **CONFIGDRIVE}, NOCLOUD_LABEL)
    info = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", str(dest)],
                          capture_output=True, check=True, text=True).stdout.strip()
    assert info == "1970-01-01-00-00-00-00"  # blkid's iso9660 UUID is the modification date
    image = read_iso(dest)
    assert {entry.year for entry in image.rock_ridge.values()} == {1970}
    assert {entry.year for entry in image.joliet.values()} == {1970}
    assert {entry.year for entry in image.iso9660.values()} == {1970}


# Lower- and upper-case letters are different letters here: names equal but for case are refused.
_names = st.text(alphabet="abcXYZ019-_. ", min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)


@st.composite
def seed_files(draw: st.DrawFn) -> dict[str, bytes]:
    """Small file maps whose paths never use a file as a directory."""
    files = draw(st.dictionaries(_paths, st.binary(max_size=3000), max_size=6))
    dirs = directories(list(files))
    return {path: content for path, content in files.items() if path not in dirs}


@given(files=seed_files(), label=st.sampled_from([NOCLOUD_LABEL, CONFIGDRIVE_LABEL]))
def test_property_read_back_equals_input_and_builds_are_identical(files: dict[str, bytes], label: str) -> None:
    image = build_iso(files, label)
    assert build_iso(files, label) == image
    with tempfile.TemporaryDirectory(prefix="vmpod-iso-") as tmp:
        dest = Path(tmp) / "prop.iso"
        write_iso(files, label, dest)
        assert dest.read_bytes() == image
        assert_layout(read_iso(dest), files, label)


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "value"),
    [
        ({"/meta-data": b""}, "/meta-data"),
        ({"": b""}, ""),
        ({"..": b""}, ".."),
        ({"../etc/passwd": b""}, "../etc/passwd"),
        ({"openstack/../../x": b""}, "openstack/../../x"),
        ({"a//b": b""}, "a//b"),
        ({"a/": b""}, "a/"),
        ({"./meta-data": b""}, "./meta-data"),
        ({"a/b/c/d/e/f/g/h/i": b""}, "a/b/c/d/e/f/g/h/i"),
        ({"x" * 65: b""}, "x" * 65),
        ({"é" * 33: b""}, "é" * 33),
        ({"a:b": b""}, "a:b"),
        ({"a;1": b""}, "a;1"),
        ({"new\nline": b""}, "new\nline"),
        ({"back\\slash": b""}, "back\\slash"),
        ({"\udcff": b""}, "\udcff"),
        ({"openstack": b"", "openstack/latest/user_data": b""}, "openstack"),
        ({"a/b": b"", "a/b/c": b""}, "a/b"),
        ({"User-Data": b"", "user-data": b""}, "user-data"),
        ({"Openstack/a": b"", "openstack/b": b""}, "openstack"),
        ({"META": b"", "meta/x": b""}, "meta"),
    ],
)
def test_bad_paths_are_refused(files: dict[str, bytes], value: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_iso(files, NOCLOUD_LABEL)
    assert caught.value.path == "seed"
    assert caught.value.value == value


@pytest.mark.parametrize("label", ["", "a" * 17, "ci data", "cïdata", "ci/data", "cidata\n"])
def test_bad_labels_are_refused(label: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_iso(NOCLOUD, label)
    assert caught.value.path == "seed"
    assert caught.value.value == label


def test_too_large_total_is_refused() -> None:
    half = bytes(MAX_SEED_BYTES // 2)
    with pytest.raises(SpecError) as caught:
        build_iso({"user-data": half, "meta-data": half, "network-config": b"x"}, NOCLOUD_LABEL)
    assert caught.value.path == "seed"
    assert caught.value.value == MAX_SEED_BYTES + 1


def test_exactly_the_maximum_is_accepted() -> None:
    image = build_iso({"user-data": bytes(MAX_SEED_BYTES)}, NOCLOUD_LABEL)
    assert len(image) > MAX_SEED_BYTES


# --- write_iso ------------------------------------------------------------------------------------


def test_write_iso_writes_what_build_iso_returns(tmp_path: Path) -> None:
    dest = written(tmp_path, NOCLOUD, NOCLOUD_LABEL)
    assert dest.read_bytes() == build_iso(NOCLOUD, NOCLOUD_LABEL)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_write_iso_replaces_an_existing_image(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"old")
    write_iso(CONFIGDRIVE, CONFIGDRIVE_LABEL, dest)
    assert read_iso(dest).files == CONFIGDRIVE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_write_iso_into_a_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_iso(NOCLOUD, NOCLOUD_LABEL, tmp_path / "missing" / "seed.iso")
    assert list(tmp_path.iterdir()) == []


def test_write_iso_refusing_input_leaves_nothing_and_keeps_the_old_image(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"old")
    with pytest.raises(SpecError):
        write_iso({"user-data": bytes(MAX_SEED_BYTES + 1)}, NOCLOUD_LABEL, dest)
    with pytest.raises(SpecError):
        write_iso({"/abs": b""}, NOCLOUD_LABEL, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]
    assert dest.read_bytes() == b"old"


def test_write_iso_failing_midway_removes_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # the module calls os.fsync
    with pytest.raises(OSError, match="Input/output error"):
        write_iso(NOCLOUD, NOCLOUD_LABEL, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]
    assert dest.read_bytes() == b"old"


def test_write_iso_onto_a_directory_removes_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "seed.iso").mkdir()
    with pytest.raises(IsADirectoryError):
        write_iso(NOCLOUD, NOCLOUD_LABEL, tmp_path / "seed.iso")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]
