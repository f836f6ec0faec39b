"""vmpod.procutil: process identities that survive pid reuse, pidfd-safe signalling, locks, atomic JSON records."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpod.procutil import (
    ProcessIdentity,
    boot_id,
    locked,
    parent_pid,
    proc_starttime,
    process_matches,
    read_json,
    recorded_pid,
    try_flock,
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


#: A lock holder whose main thread ends first (``pthread_exit``, called without the GIL through ctypes)
#: while another thread lives on for ``argv[2]`` seconds: what a multi-threaded helper looks like while
#: it is being killed, its lock still held and its main thread already a zombie.
_DYING_HOLDER = """
import ctypes, fcntl, os, sys, threading, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
def linger():
    time.sleep(float(sys.argv[2]))
    os._exit(0)
threading.Thread(target=linger).start()
print("held", flush=True)
if sys.argv[3] == "dying":
    ctypes.CDLL(None).pthread_exit(None)
"""


@pytest.fixture
def lock_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "helper.lock", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


@contextlib.contextmanager
def hold_lock(path: Path, seconds: float, how: str) -> Iterator[subprocess.Popen[str]]:
    """A child process holding ``path``'s lock, ``live`` or ``dying`` (see above); killed at the end."""
    with subprocess.Popen([sys.executable, "-c", _DYING_HOLDER, str(path), str(seconds), how],
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            yield holder
        finally:
            holder.kill()


def main_thread_state(pid: int) -> str:
    deadline = time.monotonic() + 10
    while (state := Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z":
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return state


def test_try_flock_waits_for_a_dying_holder_only(tmp_path: Path, lock_fd: int) -> None:
    with hold_lock(tmp_path / "helper.lock", 60, "live") as live:
        assert not try_flock(lock_fd), "a live holder keeps its lock"
        assert not try_flock(lock_fd, holder=lambda: live.pid), "a live holder keeps its lock"
    assert try_flock(lock_fd), "the holder is gone: the lock is free"

    fd = os.open(tmp_path / "other.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with hold_lock(tmp_path / "other.lock", 1.0, "dying") as dying:
            record = tmp_path / "helper.json"
            write_json(record, {"pid": dying.pid})
            assert main_thread_state(dying.pid) == "Z", "the holder's main thread has ended, another thread runs"
            assert not try_flock(fd), "a holder nobody named counts, dying or not"
            assert not try_flock(fd, holder=lambda: dying.pid, dying_grace=0), "without a grace it still counts"
            assert try_flock(fd, holder=recorded_pid(record)), "a named dying holder is waited for: its lock is " \
                "released when its last thread ends"
            assert dying.wait(10) == 0
    finally:
        os.close(fd)


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
