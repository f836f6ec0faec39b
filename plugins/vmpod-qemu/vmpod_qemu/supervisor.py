"""The per-machine supervisor: collects qemu's start, writes its serial console to the pod log, serves it to
attach clients (the console monitor), records its exit.

One small process per running machine, detached from vmpod (its own session), so that the
pod log keeps growing while no vmpod command runs and across vmpod restarts.  It imports
only the standard library and vmpod's :mod:`vmpod.consolelog`, :mod:`vmpod.consolemux` and :mod:`vmpod.procutil` (which
import only the standard library, and the ``vmpod`` package: pluggy); :mod:`vmpod_qemu.launcher`
starts it (and qemu, first) as
``python3 -I -S launcher.py ...``, a few tens of milliseconds instead of a full vmpod import.

``start``
    The supervisor is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``) and spawned qemu's argv,
    which daemonizes: qemu forks twice and its launching process exits once the machine is set
    up.  The daemonized qemu is reparented to the supervisor, so the supervisor ``waitpid``\\s
    it and learns exactly how it ended.
``attach``
    For a qemu that runs while its supervisor is gone (killed): resumes the log from its
    checkpoint and watches the process through a pidfd.  It is not qemu's parent, so if qemu
    then exits on its own the exit status is unknown.

Files, in the machine directory (qemu's working directory):

``serial.raw``
    everything the guest wrote to its serial port; qemu appends to it (chardev ``logfile``)
    whether or not anybody is attached to ``console.sock``, so nothing is lost while no
    supervisor runs.
``log.state``
    the log checkpoint of :class:`vmpod.consolelog.CriLogWriter`, which turns ``serial.raw`` into
    CRI log lines: no line is lost or written twice when the supervisor is killed and restarted.
``supervisor.lock``
    the supervisor holds an exclusive ``flock`` on it while it runs: one log writer per
    machine; whoever else needs to finish the log takes the lock first.
``supervisor.log``
    the supervisor's own stdout and stderr (diagnostics).
``attach.sock``
    the console monitor (:class:`vmpod.consolemux.ConsoleMux`, in a thread of the supervisor):
    it stays connected to qemu's ``console.sock`` (reconnecting if it drops), reads it
    continuously so that qemu never blocks on it, and serves it to any number of ``vmpod attach``
    clients on this socket (0600).  Bound before the supervisor reports ``ok``: it exists once
    ``start`` returns.  The log does not come from it (it comes from ``serial.raw``), so a
    monitor that is killed loses no log line; the backend's next command restarts it (attach mode).
``run.json``
    ``{"pid", "starttime", "boot_id", "started_at", "supervisor_pid", "supervisor_starttime",
    "boot"}``: identifies qemu (and the supervisor) beyond its pid: a pid whose start time
    (``/proc/<pid>/stat``) or kernel boot id differ is another process that reused the number,
    and is never signalled.
``stop.json``
    written by the backend before it asks qemu to stop (``{"boot", "forced"}``).
``exit.json``
    how qemu ended: ``{"boot", "started_at", "finished_at", "exit_code", "exit_reason", "message"}``.

The pod log gets CRI log lines ``<RFC3339Nano> stdout F|P <text>``, written by
:class:`vmpod.consolelog.CriLogWriter` (see there: partial lines, long lines, ``fsync``).
Process identities, locks and the JSON records come from :mod:`vmpod.procutil`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import selectors
import signal
import time
from pathlib import Path
from typing import Any, Final

from vmpod.consolelog import SERIAL_RAW, CriLogWriter
from vmpod.consolemux import ATTACH_SOCKET, ConsoleMux, bind_attach_socket, open_unix
from vmpod.procutil import ProcessIdentity, parent_pid, proc_starttime, read_json, write_json

__all__ = [
    "EXIT_FILE",
    "LOCK_FILE",
    "RUN_FILE",
    "STOP_FILE",
    "Spawned",
    "boot_records",
    "exit_record",
    "run_daemon",
]

RUN_FILE: Final = "run.json"
EXIT_FILE: Final = "exit.json"
STOP_FILE: Final = "stop.json"
LOCK_FILE: Final = "supervisor.lock"
PIDFILE: Final = "qemu.pid"
#: qemu's serial console socket (see :mod:`vmpod_qemu.argv`; not imported from there: this module stays light).
CONSOLE_SOCKET: Final = "console.sock"

_IN_MODIFY: Final = 0x2
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC
#: Without inotify, how often the raw file is polled.
_POLL_INTERVAL: Final = 0.05


# -- records (also used by the backend) ------------------------------------------------


def exit_record(status: int | None, stop: dict[str, Any] | None, *, now_ns: int, pid: int, boot: str,
                started_at: int) -> dict[str, Any]:
    """The ``exit.json`` record of qemu ``pid`` of ``boot``: ``status`` is its wait status (``None``: unknown).

    A stop of this boot requested by vmpod (``stop`` with the same ``boot``) makes the reason
    ``Stopped`` (``Killed``, code 137, when it had to be forced); otherwise a signal is
    ``Killed`` (SIGKILL) or ``Crashed``, exit 0 ``Completed`` (the guest powered off), another
    code ``Error``, and an unknown status ``Killed`` with code -1.
    """
    if status is None:
        code, reason = -1, "Killed"
        message = f"qemu (pid {pid}) exited while no supervisor was its parent: exit status unknown"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
        reason = "Killed" if sig == signal.SIGKILL else "Crashed"
        message = f"qemu (pid {pid}) was killed by signal {signal.Signals(sig).name}"
    else:
        code = os.WEXITSTATUS(status)
        reason = "Completed" if code == 0 else "Error"
        message = f"qemu (pid {pid}) exited with code {code}"
    if stop is not None and stop.get("boot") == boot:
        if stop.get("forced"):
            code, reason = 137, "Killed"
            message = "forced off: the guest did not power off in time"
        else:
            code, reason = max(code, 0), "Stopped"
            message = "powered off by request"
    return {"boot": boot, "started_at": started_at, "finished_at": max(now_ns, started_at), "exit_code": code,
            "exit_reason": reason, "message": message}


def boot_records(directory: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(run, exit)`` of the machine's latest boot; ``exit`` is ``None`` while that boot has not ended.

    ``run.json`` and ``exit.json`` are never removed when a machine starts again (a reader would
    see a machine that ran as never started); each names its boot, and an ``exit.json`` of an
    earlier boot is ignored.  An ``exit.json`` of a boot that failed to start (no ``run.json`` of
    its own) is newer than the ``run.json`` of the boot before: ``(None, exit)``.
    """
    run = read_json(directory / RUN_FILE)
    ended = read_json(directory / EXIT_FILE)
    if ended is None or run is None or ended.get("boot") == run.get("boot"):
        return run, ended
    if int(ended.get("started_at", 0)) > int(run.get("started_at", 0)):
        return None, ended
    return run, None


# -- the supervisor process --------------------------------------------------------------------


class _Inotify:
    """Wake-ups when a file is written (``IN_MODIFY``), through libc's inotify; ``fd`` is -1 without it."""

    def __init__(self, path: Path) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return
            if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = -1

    def drain(self) -> None:
        if self.fd < 0:
            return
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass


class _Supervisor:
    def __init__(self, directory: Path, log_path: Path, boot: str) -> None:
        self.directory = directory
        self.log_path = log_path
        self.boot = boot
        self.qemu_pid = 0
        self.started_at = 0
        self.child_status: int | None = None
        self.is_parent = False

    def reap(self) -> None:
        """Collect exited children (qemu, and qemu's intermediate processes reparented to us)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.qemu_pid:
                self.child_status = status

    def watch(self, pidfd: int) -> None:
        """Follow the serial output until qemu exits (or the supervisor is told to stop)."""
        writer = CriLogWriter(self.directory, self.log_path, self.boot)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        stop_requested: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: stop_requested.append(signum))
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        notify = _Inotify(self.directory / SERIAL_RAW)
        selector = selectors.DefaultSelector()
        selector.register(pidfd, selectors.EVENT_READ, "qemu")
        selector.register(wake_r, selectors.EVENT_READ, "signal")
        if notify.fd >= 0:
            selector.register(notify.fd, selectors.EVENT_READ, "serial")
        exited = False
        while not exited and not stop_requested:
            writer.pump()
            self.reap()
            timeout = writer.deadline()
            if notify.fd < 0:
                timeout = _POLL_INTERVAL if timeout is None else min(timeout, _POLL_INTERVAL)
            for key, _events in selector.select(timeout):
                if key.data == "qemu":
                    exited = True
                elif key.data == "signal":
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    notify.drain()
            self.reap()
            exited = exited or self.child_status is not None
        if stop_requested and not exited:
            writer.pump()
            return
        deadline = time.monotonic() + 5
        while self.is_parent and self.child_status is None and time.monotonic() < deadline:
            self.reap()
            if self.child_status is None:
                time.sleep(0.01)
        writer.pump(final=True)
        record = exit_record(self.child_status, read_json(self.directory / STOP_FILE), now_ns=time.time_ns(),
                             pid=self.qemu_pid, boot=self.boot, started_at=self.started_at)
        write_json(self.directory / EXIT_FILE, record)


@dataclasses.dataclass(frozen=True)
class Spawned:
    """qemu's launching process, started by :mod:`vmpod_qemu.launcher` before this module was imported.

    :param pid: the launching qemu process (it exits once the daemonized qemu runs).
    :param stderr: read end of a pipe on its stderr (qemu's error messages while starting).
    :param started_at: when it was spawned (ns since the epoch).
    """

    pid: int
    stderr: int
    started_at: int


def _collect_start(sup: _Supervisor, spawned: Spawned) -> str:
    """Wait for qemu's launcher; on success write ``run.json`` and return ``""``, else qemu's error."""
    chunks = []
    while True:
        data = os.read(spawned.stderr, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(spawned.stderr)
    _, status = os.waitpid(spawned.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        text = b"".join(chunks).decode(errors="replace").strip()
        return text or f"qemu exited with code {code} while starting"
    try:
        pid = int((sup.directory / PIDFILE).read_text().strip())
    except (OSError, ValueError) as exc:
        return f"qemu started but its pidfile is unreadable: {exc}"
    qemu = ProcessIdentity.of(pid)
    if qemu is None:
        return f"qemu (pid {pid}) exited right after starting"
    sup.qemu_pid, sup.started_at = pid, spawned.started_at
    sup.is_parent = parent_pid(pid) == os.getpid()
    write_json(sup.directory / RUN_FILE, {
        **qemu.to_run(), "started_at": spawned.started_at,
        "boot": sup.boot, "supervisor_pid": os.getpid(), "supervisor_starttime": proc_starttime(os.getpid()),
        "supervisor_is_parent": sup.is_parent,
    })
    return ""


def run_daemon(directory: Path, log_path: Path, boot: str, *, report: int, spawned: Spawned | None) -> int:
    """The detached supervisor, after :mod:`vmpod_qemu.launcher` set it up (session, stdio, lock).

    ``spawned`` is qemu's launching process (``start``), or ``None`` to attach to the qemu that
    ``run.json`` names.  The outcome is told to the waiting launcher through ``report``
    (``ok <pid>`` or ``error: ...``); then qemu is watched until it exits.
    """
    sup = _Supervisor(directory, log_path, boot)

    def tell(message: str) -> None:
        os.write(report, message.encode() + b"\n")
        os.close(report)

    if spawned is not None:
        problem = _collect_start(sup, spawned)
        if problem:
            now = time.time_ns()
            write_json(directory / EXIT_FILE, {"boot": boot, "started_at": spawned.started_at, "finished_at": now,
                                               "exit_code": 1, "exit_reason": "StartError", "message": problem})
            sup.reap()
            tell("error: " + problem.replace("\n", " | "))
            return 1
    else:
        run = read_json(directory / RUN_FILE) or {}
        sup.qemu_pid, sup.started_at = int(run.get("pid", 0)), int(run.get("started_at", 0))
        qemu = ProcessIdentity.from_run(run)
        if qemu is None or not qemu.alive():
            tell("error: qemu is not running")
            return 1
        # This supervisor is the one to find (and terminate) from now on; qemu is not its child.
        write_json(directory / RUN_FILE, {**run, "supervisor_pid": os.getpid(),
                                          "supervisor_starttime": proc_starttime(os.getpid()),
                                          "supervisor_is_parent": False})
    try:
        pidfd = os.pidfd_open(sup.qemu_pid)
    except OSError as exc:
        tell(f"error: cannot watch qemu (pid {sup.qemu_pid}): {exc}")
        return 1
    try:
        mux = ConsoleMux(bind_attach_socket(directory / ATTACH_SOCKET), open_unix(directory / CONSOLE_SOCKET))
    except OSError as exc:
        tell(f"error: cannot serve the console on {ATTACH_SOCKET}: {exc}")
        return 1
    mux.start()
    tell(f"ok {sup.qemu_pid}")
    try:
        sup.watch(pidfd)
    finally:
        mux.close()
        (directory / ATTACH_SOCKET).unlink(missing_ok=True)
    return 0
