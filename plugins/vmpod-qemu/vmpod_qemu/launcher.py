"""Starts a machine's supervisor: ``launcher.py start|attach --dir D --log L --boot B [--path P] [-- ARGV]``.

Run as a script by the backend (``-I -S``: no site packages, nothing of vmpod), it does the
minimum before qemu runs, so that qemu starts a few milliseconds after ``start`` is called:

1. forks; the parent waits for one line on a pipe and exits with it (``ok <pid>`` on stdout
   and 0, or the error on stderr and 1): the backend's ``start`` returns once qemu runs;
2. the child starts a new session, sends its stdio to ``supervisor.log``, changes to the
   machine directory and takes ``supervisor.lock`` (one supervisor per machine);
3. ``start``: it becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so that the qemu that
   daemonizes below is reparented to it and its exit status can be collected, and spawns qemu's
   argv (``posix_spawnp``; stdin and stdout ``/dev/null``, stderr a pipe);
4. only then it lowers its own priority (``nice`` 10: it is housekeeping, the guest comes first),
   imports :mod:`vmpod_qemu.supervisor` (while qemu sets the machine up) and hands over to
   :func:`vmpod_qemu.supervisor.run_daemon`.  The supervisor uses vmpod's
   :mod:`vmpod.consolelog` and :mod:`vmpod.procutil` (standard library only): ``--path`` is the
   import path to find them (and ``vmpod`` itself) by, ``os.pathsep``-separated, as the backend
   knows it; without site packages (``-S``) nothing else would find an installed vmpod.

Every descriptor it opens is close-on-exec: qemu inherits none of them (not the lock).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_NICENESS = 10
_USAGE = "usage: launcher.py start|attach --dir DIR --log LOG --boot ID [--path IMPORT-PATH] [-- QEMU-ARGV...]"


def _parse(args: list[str]) -> tuple[str, str, str, str, str, list[str]] | None:
    argv: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, argv = args[:split], args[split + 1 :]
    path = ""
    if len(args) == 9 and args[7] == "--path":
        path, args = args[8], args[:7]
    if len(args) != 7 or args[0] not in ("start", "attach") or args[1::2] != ["--dir", "--log", "--boot"]:
        return None
    if (args[0] == "start") != bool(argv):
        return None
    return args[0], args[2], args[4], args[6], path, argv


def _daemon(mode: str, directory: str, *, log: str, boot: str, path: str, argv: list[str], report: int) -> int:
    os.setsid()
    os.chdir(directory)
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open("supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)
    lock = os.open("supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.write(report, b"error: another supervisor runs for this machine\n")
        return 1
    spawned = None
    if mode == "start":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        err_read, err_write = os.pipe()
        started_at = time.time_ns()
        try:
            pid = os.posix_spawnp(argv[0], argv, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err_write, 2),
            ])
        except OSError as exc:
            os.write(report, f"error: cannot run {argv[0]}: {exc}\n".encode())
            return 1
        finally:
            os.close(err_write)
    # The supervisor is housekeeping: on a busy host it yields the CPU to the guests (qemu was
    # spawned above at the caller's priority).
    os.nice(_NICENESS)
    # qemu sets the machine up meanwhile: now is the time to import the rest.
    sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *filter(None, path.split(os.pathsep))]
    from vmpod_qemu import supervisor  # noqa: PLC0415

    if mode == "start":
        spawned = supervisor.Spawned(pid=pid, stderr=err_read, started_at=started_at)
    from pathlib import Path  # noqa: PLC0415

    return supervisor.run_daemon(Path(directory), Path(log), boot, report=report, spawned=spawned)


def main(args: list[str] | None = None) -> int:
    """Start the supervisor (see the module docstring); returns the launcher's exit code."""
    parsed = _parse(list(sys.argv[1:] if args is None else args))
    if parsed is None:
        print(_USAGE, file=sys.stderr)
        return 2
    mode, directory, log, boot, path, argv = parsed
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(read_end)
        code = 1
        try:
            code = _daemon(mode, os.path.abspath(directory), log=os.path.abspath(log), boot=boot, path=path,
                           argv=argv, report=write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reply:
        answer = reply.read().decode(errors="replace").strip()
    if answer.startswith("ok"):
        print(answer)
        return 0
    print(answer or "error: the supervisor died while starting", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
