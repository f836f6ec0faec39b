"""vmpod.procutil: process identities that survive pid reuse, pidfd-safe signalling, locks, atomic JSON records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from vmpod.procutil import (
    ProcessIdentity,
    boot_id,
    locked,
    parent_pid,
    proc_starttime,
    process_matches,
    read_json,
    write_json,
)


def test_process_identity_rejects_reused_pids() -> None:
    me = os.getpid()
    starttime = proc_starttime(me)
    assert starttime is not None
    assert process_matches(me, starttime, boot_id())
    assert not process_matches(me, starttime + 1, boot_id())
    assert not process_matches(me, starttime, "another-boot")
    assert not process_matches(0, starttime, "")
    assert parent_pid(me) == os.getppid()


def test_identity_records_round_trip() -> None:
    me = ProcessIdentity.of(os.getpid())
    assert me is not None
    assert me.alive()
    assert ProcessIdentity.from_run(me.to_run()) == me
    record = me.to_run("supervisor_")
    assert set(record) == {"supervisor_pid", "supervisor_starttime", "boot_id"}
    assert ProcessIdentity.from_run(record, prefix="supervisor_") == me
    assert ProcessIdentity.from_run({}) is None
    assert ProcessIdentity.from_run({"pid": 1, "starttime": None}) is None


def test_send_and_wait_only_reach_the_recorded_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = ProcessIdentity.of(child.pid)
        assert identity is not None
        impostor = ProcessIdentity(pid=child.pid, starttime=identity.starttime + 1, boot_id=identity.boot_id)
        assert not impostor.send(signal.SIGTERM), "another start time: another process, never signalled"
        assert not identity.wait(0.01)
        assert identity.send(signal.SIGTERM)
        assert child.wait(10) == -signal.SIGTERM
        assert identity.wait(0.01), "gone (reaped)"
        assert not identity.send(signal.SIGTERM)
    finally:
        child.kill()
        child.wait()


def test_locked(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with locked(path) as held:
        assert held
        with locked(path, blocking=False) as again:
            assert not again, "flock: another open file description cannot take it"
    with locked(path, blocking=False) as free:
        assert free


def test_json_records(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert read_json(path) is None
    write_json(path, {"b": 1, "a": [1, 2]})
    assert read_json(path) == {"a": [1, 2], "b": 1}
    assert path.read_text() == '{"a": [1, 2], "b": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"], "no temporary file left"
    path.write_text("[1, 2]")
    assert read_json(path) is None, "not an object"
    path.write_text("{broken")
    assert read_json(path) is None
