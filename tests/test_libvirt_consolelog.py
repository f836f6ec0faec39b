"""The libvirt backend's serial log: virtlogd's raw file (and its rotations) into CRI log lines; run records.

No libvirtd needed: virtlogd's rotation is imitated with renames, as virtlogd does it
(``serial.raw`` -> ``serial.raw.0`` -> ``serial.raw.1`` ..., the oldest deleted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from vmpod_libvirt.consolelog import SerialLog
from vmpod_libvirt.records import (
    CONSOLE_DIR,
    EXIT_FILE,
    SERIAL_RAW,
    STOP_FILE,
    backend_files,
    ensure_exit,
    exit_for,
    exit_of_boot,
    read_json,
    write_json,
)

CRI = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout ([FP]) (.*)$")


def records(log: Path) -> list[tuple[str, str]]:
    """``(tag, text)`` of every record of a CRI log; each must be well formed."""
    out = []
    for raw in log.read_bytes().split(b"\n")[:-1]:
        match = CRI.match(raw)
        assert match, f"not a CRI log line: {raw!r}"
        out.append((match.group(1).decode(), match.group(2).decode()))
    return out


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as raw:
        raw.write(data)


def rotate(directory: Path, backups: int = 3) -> None:
    """What virtlogd does at max_size: shift the backups up, the live file becomes ``.0``, a new one starts."""
    oldest = directory / f"{SERIAL_RAW}.{backups - 1}"
    oldest.unlink(missing_ok=True)
    for index in range(backups - 2, -1, -1):
        older = directory / f"{SERIAL_RAW}.{index}"
        if older.exists():
            older.rename(directory / f"{SERIAL_RAW}.{index + 1}")
    (directory / SERIAL_RAW).rename(directory / f"{SERIAL_RAW}.0")
    (directory / SERIAL_RAW).touch()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


def test_lines_partial_lines_and_the_final_line(run_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "pod.log"
    raw = run_dir / SERIAL_RAW
    serial = SerialLog(run_dir, log, "boot1")
    assert serial.pump() == 0, "no serial file yet: nothing to do"
    append(raw, b"SYSLINUX\r\nline two\n/ # ")
    assert serial.pump() == 2
    assert serial.deadline() is not None, "the prompt waits for its newline"
    append(raw, b"echo hi\r\n")
    serial.pump()
    append(raw, b"tail without newline")
    serial.pump(final=True)
    assert records(log) == [("F", "SYSLINUX"), ("F", "line two"), ("F", "/ # echo hi"), ("F", "tail without newline")]


def test_rotation_loses_and_repeats_nothing(run_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "pod.log"
    raw = run_dir / SERIAL_RAW
    append(raw, b"a1\na2\n")
    serial = SerialLog(run_dir, log, "boot1")
    serial.pump()
    append(raw, b"a3\n")  # written before the rotation, not yet read
    rotate(run_dir)
    append(raw, b"b1\nb2\n")
    serial.pump()
    assert [text for _, text in records(log)] == ["a1", "a2", "a3", "b1", "b2"]
    # a follower restarted later resumes from its checkpoint: nothing twice
    append(raw, b"b3\n")
    SerialLog(run_dir, log, "boot1").pump()
    assert [text for _, text in records(log)] == ["a1", "a2", "a3", "b1", "b2", "b3"]


def test_line_cut_by_a_rotation_is_a_partial_record(run_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "pod.log"
    raw = run_dir / SERIAL_RAW
    serial = SerialLog(run_dir, log, "boot1")
    append(raw, b"whole\nhalf a li")
    serial.pump()
    rotate(run_dir)
    append(raw, b"ne\nnext\n")
    serial.pump()
    assert records(log) == [("F", "whole"), ("P", "half a li"), ("F", "ne"), ("F", "next")]


def test_several_rotations_while_nobody_follows(run_dir: Path, tmp_path: Path) -> None:
    """The follower was down for two rotations: it reads the backups in order; a deleted backup it had
    linked is still read to its end through the link."""
    log = tmp_path / "pod.log"
    raw = run_dir / SERIAL_RAW
    append(raw, b"one\n")
    SerialLog(run_dir, log, "boot1").pump()
    append(raw, b"two\n")
    rotate(run_dir, backups=1)  # the linked file is renamed to serial.raw.0 ...
    append(raw, b"three\n")
    rotate(run_dir, backups=1)  # ... and deleted by the next rotation (one backup kept)
    append(raw, b"four\n")
    SerialLog(run_dir, log, "boot1").pump()
    assert [text for _, text in records(log)] == ["one", "two", "three", "four"]


def test_a_new_boot_starts_over(run_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "pod.log"
    raw = run_dir / SERIAL_RAW
    append(raw, b"first boot\n")
    SerialLog(run_dir, log, "boot1").pump(final=True)
    raw.unlink()
    (run_dir / CONSOLE_DIR / SERIAL_RAW).unlink()  # what start does before the next boot
    append(raw, b"second boot\n")
    SerialLog(run_dir, log, "boot2").pump()
    assert [text for _, text in records(log)] == ["first boot", "second boot"]


def test_exit_reasons() -> None:
    assert exit_for(1, None, "b") == (0, "Completed", "the guest powered off")
    assert exit_for(1, {"boot": "b", "forced": False}, "b")[1] == "Stopped"
    assert exit_for(2, {"boot": "b", "forced": True}, "b")[:2] == (137, "Killed")
    assert exit_for(2, {"boot": "other", "forced": False}, "b")[1] == "Killed", "a stop of another boot"
    assert exit_for(3, None, "b")[1] == "Crashed"
    assert exit_for(6, None, "b")[1] == "StartError"
    assert exit_for(0, None, "b")[1] == "Error"


def test_the_first_exit_record_of_a_boot_wins(run_dir: Path) -> None:
    run = {"boot": "b1", "started_at": 100}
    write_json(run_dir / STOP_FILE, {"boot": "b1", "forced": False})
    first = ensure_exit(run_dir, run, 1, 200)
    assert first["exit_reason"] == "Stopped"
    assert first["finished_at"] == 200
    assert ensure_exit(run_dir, run, 3, 300) == first
    assert exit_of_boot(run_dir, "b1") == first
    assert exit_of_boot(run_dir, "b2") is None
    second = ensure_exit(run_dir, {"boot": "b2", "started_at": 400}, 1, 350)
    assert (second["finished_at"], second["exit_reason"]) == (400, "Completed"), "never before its start"
    assert read_json(run_dir / EXIT_FILE) == second


def test_backend_files_are_all_found(run_dir: Path) -> None:
    """What destroy removes: every name the backend and follower use, rotated backups and temp files."""
    made = [SERIAL_RAW, f"{SERIAL_RAW}.0", f"{SERIAL_RAW}.2", ".libvirt-run.json.42.tmp", "libvirt-run.json"]
    for name in made:
        (run_dir / name).touch()
    (run_dir / CONSOLE_DIR).mkdir()
    (run_dir / "disk.img").touch()  # not the backend's
    found = {p.name for p in backend_files(run_dir) if p.exists()}
    assert found == {*made, CONSOLE_DIR}
    assert os.path.exists(run_dir / "disk.img")
