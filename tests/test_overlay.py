"""The in-process qcow2 writer (:mod:`vmpod.qcow2`), checked with the real ``qemu-img`` and ``qemu-io``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmpod import qcow2
from vmpod.errors import SpecError


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output", "json", str(path)], check=True, capture_output=True,
                         text=True).stdout
    return dict(json.loads(out))


def _check(path: Path) -> None:
    result = subprocess.run(["qemu-img", "check", "--output", "json", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report.get("corruptions", 0) == 0, report
    assert report.get("leaks", 0) == 0, report


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A raw base image with a known pattern, and its qcow2 copy."""
    raw = tmp_path / "base.raw"
    raw.write_bytes(bytes(range(256)) * 4096 + b"\x00" * (3 * 1024 * 1024))  # 4 MiB
    return raw


def test_overlay_is_a_valid_qcow2_with_its_backing_file(tmp_path: Path, base: Path) -> None:
    overlay = tmp_path / "root.qcow2"
    qcow2.write_overlay(overlay, base, "raw", 1 << 30)
    info = _info(overlay)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 1 << 30
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "raw"
    assert info["cluster-size"] == qcow2.CLUSTER_SIZE
    _check(overlay)


def test_reads_fall_through_and_writes_stay_in_the_overlay(tmp_path: Path, base: Path) -> None:
    before = base.read_bytes()
    overlay = tmp_path / "root.qcow2"
    qcow2.write_overlay(overlay, base, "raw", 8 << 20)
    out = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(out)], check=True)
    flat = out.read_bytes()
    assert flat[: len(before)] == before
    assert flat[len(before):] == b"\x00" * ((8 << 20) - len(before))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 65536 131072", str(overlay)], check=True,
                   capture_output=True)
    _check(overlay)
    assert base.read_bytes() == before
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(out)], check=True)
    assert out.read_bytes()[65536:196608] == b"\xab" * 131072


def test_overlay_on_a_qcow2_base(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    overlay = tmp_path / "root.qcow2"
    qcow2.write_overlay(overlay, base, "qcow2", 64 << 20)
    info = _info(overlay)
    assert info["backing-filename-format"] == "qcow2"
    _check(overlay)
    subprocess.run(["qemu-img", "compare", str(base), str(overlay)], check=True, capture_output=True)


@settings(max_examples=25, deadline=None)
@given(sectors=st.one_of(st.integers(1, 1 << 22), st.integers(1 << 22, (1 << 40) // 512)))
def test_blank_disks_of_any_size(tmp_path_factory: pytest.TempPathFactory, sectors: int) -> None:
    path = tmp_path_factory.mktemp("blank") / "disk.qcow2"
    qcow2.write_blank(path, sectors * 512, sync=False)
    info = _info(path)
    assert info["virtual-size"] == sectors * 512
    assert "backing-filename" not in info
    _check(path)


def test_same_bytes_as_written_again(tmp_path: Path, base: Path) -> None:
    first, second = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qcow2.write_overlay(first, base, "raw", 1 << 30)
    qcow2.write_overlay(second, base, "raw", 1 << 30)
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(("size", "fmt", "backing"), [
    (0, "raw", "/abs"), (513, "raw", "/abs"), (-512, "raw", "/abs"), (1 << 30, "vmdk", "/abs"),
    (1 << 30, "raw", "relative/base.img"), (qcow2.MAX_VIRTUAL_SIZE + 512, "raw", "/abs"),
])
def test_bad_arguments(tmp_path: Path, size: int, fmt: str, backing: str) -> None:
    with pytest.raises(SpecError):
        qcow2.write_overlay(tmp_path / "x.qcow2", Path(backing), fmt, size)
    assert not (tmp_path / "x.qcow2").exists()


def test_in_process_is_faster_than_qemu_img(tmp_path: Path, base: Path) -> None:
    """The reason this module exists: measure both (the figures are printed with -s)."""
    import time  # noqa: PLC0415

    start = time.perf_counter()
    for i in range(20):
        qcow2.write_overlay(tmp_path / f"o{i}.qcow2", base, "raw", 1 << 30, sync=False)
    ours = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    for i in range(5):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                        str(tmp_path / f"q{i}.qcow2"), "1G"], check=True)
    theirs = (time.perf_counter() - start) / 5
    print(f"\noverlay: in-process {ours * 1e3:.3f} ms, qemu-img create {theirs * 1e3:.1f} ms")
    assert ours < theirs
