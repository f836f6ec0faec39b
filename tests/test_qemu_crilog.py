"""The qemu supervisor's serial -> CRI log writer: line splitting, partial lines, exactly-once across crashes."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from vmpod_qemu import supervisor
from vmpod_qemu.supervisor import CriLogWriter, boot_records, cri_timestamp, exit_record, read_json, write_json

CRI = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout (F|P) (.*)$")


def entries(log: Path) -> list[tuple[str, bytes]]:
    """``(tag, text)`` of every line; each must be a well-formed CRI log line."""
    out = []
    for line in log.read_bytes().split(b"\n")[:-1]:
        match = CRI.match(line)
        assert match, line
        out.append((match.group(1).decode(), match.group(2)))
    return out


def joined(log: Path) -> list[bytes]:
    """The guest's lines as a CRI reader reassembles them (P lines continue in the next line)."""
    lines, current = [], b""
    for tag, text in entries(log):
        current += text
        if tag == "F":
            lines.append(current)
            current = b""
    return lines


@pytest.fixture
def machine_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "machine"
    directory.mkdir()
    return directory


def feed(directory: Path, data: bytes) -> None:
    with open(directory / "serial.raw", "ab") as raw:
        raw.write(data)


def test_lines_become_cri_lines(machine_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "pod" / "vm.log"
    writer = CriLogWriter(machine_dir, log, "boot1")
    feed(machine_dir, b"\r\nSeaBIOS\r\nhello world\nno newline yet")
    assert writer.pump() == 3
    assert entries(log) == [("F", b""), ("F", b"SeaBIOS"), ("F", b"hello world")]
    feed(machine_dir, b" - done\r\n")
    assert writer.pump() == 1
    assert entries(log)[-1] == ("F", b"no newline yet - done")


def test_unfinished_line_is_written_as_partial_after_a_while(machine_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "PARTIAL_AFTER", 0.05)
    log = tmp_path / "vm.log"
    writer = CriLogWriter(machine_dir, log, "b")
    feed(machine_dir, b"login: ")
    assert writer.pump() == 0
    deadline = writer.deadline()
    assert deadline is not None
    assert deadline <= 0.05
    time.sleep(0.06)
    assert writer.pump() == 1
    assert entries(log) == [("P", b"login: ")]
    feed(machine_dir, b"root\nnext")
    assert writer.pump(final=True) == 2
    assert entries(log)[1:] == [("F", b"root"), ("F", b"next")]
    assert joined(log) == [b"login: root", b"next"]


def test_long_lines_are_split(machine_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    writer = CriLogWriter(machine_dir, log, "b")
    long = b"x" * (supervisor.MAX_LINE * 2 + 10)
    feed(machine_dir, long + b"\n")
    writer.pump()
    assert [tag for tag, _ in entries(log)] == ["P", "P", "F"]
    assert joined(log) == [long]


def test_restart_resumes_without_loss_or_duplicates(machine_dir: Path, tmp_path: Path) -> None:
    """A new writer (a restarted supervisor) continues from the checkpoint."""
    log = tmp_path / "vm.log"
    first = CriLogWriter(machine_dir, log, "b")
    feed(machine_dir, b"one\ntwo\n")
    first.pump()
    feed(machine_dir, b"three\n")  # written while no supervisor runs
    second = CriLogWriter(machine_dir, log, "b")
    second.pump()
    assert joined(log) == [b"one", b"two", b"three"]


def test_killed_between_append_and_checkpoint(machine_dir: Path, tmp_path: Path) -> None:
    """Lines appended after the last checkpoint are cut and written again: exactly once."""
    log = tmp_path / "vm.log"
    writer = CriLogWriter(machine_dir, log, "b")
    feed(machine_dir, b"one\n")
    writer.pump()
    checkpoint = (machine_dir / "log.state").read_bytes()
    feed(machine_dir, b"two\n")
    writer.pump()
    (machine_dir / "log.state").write_bytes(checkpoint)  # as if killed before saving the checkpoint
    assert joined(log) == [b"one", b"two"]
    CriLogWriter(machine_dir, log, "b").pump()
    assert joined(log) == [b"one", b"two"]


def test_new_boot_starts_from_the_beginning_of_its_serial_output(machine_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    writer = CriLogWriter(machine_dir, log, "boot1")
    feed(machine_dir, b"first boot\n")
    writer.pump(final=True)
    (machine_dir / "serial.raw").unlink()
    feed(machine_dir, b"second boot\n")
    CriLogWriter(machine_dir, log, "boot2").pump()
    assert joined(log) == [b"first boot", b"second boot"]


def test_rotated_log_is_followed(machine_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    writer = CriLogWriter(machine_dir, log, "b")
    feed(machine_dir, b"before\n")
    writer.pump()
    log.rename(tmp_path / "vm.log.1")
    feed(machine_dir, b"after\n")
    writer.pump()
    assert joined(log) == [b"after"]
    assert joined(tmp_path / "vm.log.1") == [b"before"]
    state = read_json(machine_dir / "log.state")
    assert state is not None
    assert state["log_size"] == log.stat().st_size


def test_timestamp_format() -> None:
    assert cri_timestamp(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"


@pytest.mark.parametrize(
    ("status", "stop", "expected"),
    [
        (0, None, (0, "Completed")),
        (3 << 8, None, (3, "Error")),
        (signal.SIGKILL, None, (137, "Killed")),
        (signal.SIGSEGV, None, (139, "Crashed")),
        (None, None, (-1, "Killed")),
        (0, {"boot": "b2", "forced": False}, (0, "Stopped")),
        (0, {"boot": "b2", "forced": True}, (137, "Killed")),
        (signal.SIGKILL, {"boot": "b2", "forced": True}, (137, "Killed")),
        (0, {"boot": "b1", "forced": False}, (0, "Completed")),  # a stop of an earlier boot
    ],
)
def test_exit_reasons(status: int | None, stop: dict[str, object] | None, expected: tuple[int, str]) -> None:
    record = exit_record(status, stop, now_ns=5, pid=42, boot="b2", started_at=3)
    assert (record["exit_code"], record["exit_reason"]) == expected
    assert (record["boot"], record["started_at"], record["finished_at"]) == ("b2", 3, 5)


def test_records_of_an_earlier_boot_are_ignored(machine_dir: Path) -> None:
    """A restarted machine keeps run.json/exit.json until its new boot replaces them."""
    write_json(machine_dir / "run.json", {"boot": "b1", "started_at": 10, "pid": 1, "starttime": 1})
    assert boot_records(machine_dir) == ({"boot": "b1", "started_at": 10, "pid": 1, "starttime": 1}, None)
    write_json(machine_dir / "exit.json", {"boot": "b1", "started_at": 10, "finished_at": 20})
    assert boot_records(machine_dir)[1] == {"boot": "b1", "started_at": 10, "finished_at": 20}
    write_json(machine_dir / "run.json", {"boot": "b2", "started_at": 30, "pid": 2, "starttime": 2})
    assert boot_records(machine_dir)[1] is None  # b2 runs; b1's exit is history
    write_json(machine_dir / "exit.json", {"boot": "b3", "started_at": 40, "finished_at": 40})
    assert boot_records(machine_dir) == (None, {"boot": "b3", "started_at": 40, "finished_at": 40})  # b3 failed


def test_process_identity_rejects_reused_pids() -> None:
    me = os.getpid()
    starttime = supervisor.proc_starttime(me)
    assert starttime is not None
    assert supervisor.process_matches(me, starttime, supervisor.boot_id())
    assert not supervisor.process_matches(me, starttime + 1, supervisor.boot_id())
    assert not supervisor.process_matches(me, starttime, "another-boot")
