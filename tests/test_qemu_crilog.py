"""The qemu supervisor's records: exit reasons, boot records (its log writer: tests/test_consolelog.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from vmpod_qemu.supervisor import boot_records, exit_record

from vmpod.procutil import write_json


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


@pytest.fixture
def machine_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "machine"
    directory.mkdir()
    return directory


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
