"""vmpod.consolelog: the CRI log line format and the serial -> CRI log writer (partial lines, exactly-once)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from vmpod import consolelog
from vmpod.consolelog import CriLogWriter, format_record, parse_record, parse_timestamp, timestamp
from vmpod.procutil import read_json
from vmpod.runtime import logs

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


# ---------------------------------------------------------------------------------------- the format


def test_log_records_round_trip() -> None:
    ns = 1_475_713_029_669_794_202
    assert timestamp(ns) == "2016-10-06T00:17:09.669794202Z"
    assert parse_timestamp("2016-10-06T00:17:09.669794202Z") == ns
    assert parse_timestamp("2016-10-06T02:17:09.6697942+02:00") == ns - 2
    record = format_record(b"hello World", ns=ns)
    assert record == b"2016-10-06T00:17:09.669794202Z stdout F hello World\n"
    line = parse_record(record)
    assert (line.timestamp, line.stream, line.content, line.partial) == (ns, "stdout", b"hello World\n", False)
    assert parse_record(b"2016-10-06T00:17:09.669794202Z stderr P part\n").content == b"part"
    for bad in (b"nonsense", b"2016-10-06T00:17:09Z stdio F x\n", b"2016-10-06T00:17:09Z stdout X x\n"):
        with pytest.raises(ValueError, match="CRI log record"):
            parse_record(bad)


def test_runtime_logs_use_the_same_format() -> None:
    """``vmpod.runtime.logs`` (``vmpod logs``) reads and writes with this module's functions, not a copy."""
    assert logs.format_record is format_record
    assert logs.parse_record is parse_record
    assert logs.timestamp is timestamp
    assert logs.LogLine is consolelog.LogLine
    assert logs.MAX_LINE == consolelog.MAX_LINE


# ---------------------------------------------------------------------------------------- the writer


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
    monkeypatch.setattr(consolelog, "PARTIAL_AFTER", 0.05)
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
    long = b"x" * (consolelog.MAX_LINE * 2 + 10)
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
    assert timestamp(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"


def test_writer_output_reads_back(machine_dir: Path, tmp_path: Path) -> None:
    """What the writer appends is what ``vmpod logs`` reads: partial records joined, newlines kept."""
    log = tmp_path / "vm.log"
    long = b"y" * (consolelog.MAX_LINE + 5)
    feed(machine_dir, b"a\r\n" + long + b"\nlast")
    CriLogWriter(machine_dir, log, "b").pump(final=True)
    assert [line.content for line in logs.read_lines(log)] == [b"a\n", long + b"\n", b"last\n"]
    assert all(line.stream == "stdout" for line in logs.read_lines(log))
