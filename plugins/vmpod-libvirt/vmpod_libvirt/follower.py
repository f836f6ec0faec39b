"""The log follower: one small detached process per running domain (``python -m vmpod_libvirt.follower``).

Started by the backend right after a domain starts (it takes the follower lock and hands it over as
``--lock-fd``) (and again by a new backend object for a
running domain that has none: a vmpod restart, a follower that was killed).  It lives in its own
session, so the pod log keeps growing while no vmpod command runs; it needs neither vmpod nor
libvirtd to be up (virtlogd keeps writing the serial output while libvirtd restarts).

Loop: append new serial output to the pod log (:class:`~vmpod_libvirt.consolelog.SerialLog`)
every :data:`PUMP_INTERVAL` seconds, and ask libvirt every :data:`CHECK_INTERVAL` seconds whether
the boot it follows still runs (same domain id); a lost connection is retried at the next check.
When the boot is over it finishes the log (the last unfinished line as an ``F`` line), writes
the exit record (:func:`vmpod_libvirt.records.ensure_exit`) and exits.  On SIGTERM (the backend
stops or removes the domain) it finishes the log and exits at once.

It is also the machine's console monitor: a :class:`vmpod.consolemux.ConsoleMux` thread holds the
serial console's pty (its path from the live domain XML, opened only while that same boot runs),
reads it continuously and serves it to any number of ``vmpod attach`` clients on
:data:`~vmpod.consolemux.ATTACH_SOCKET` in the runtime directory.  The backend binds that socket
(so it exists when ``start`` returns) and hands it over as ``--listen-fd``.  The pod log does not
come from the pty but from virtlogd's file, so a monitor that is killed loses no log line; the
backend's next command starts a new follower.

It holds :data:`~vmpod_libvirt.records.FOLLOWER_LOCK` while it runs (one follower per machine) and
records itself in :data:`~vmpod_libvirt.records.FOLLOWER_FILE` (pid, start time, boot); its own
diagnostics go to :data:`~vmpod_libvirt.records.FOLLOWER_LOG`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from vmpod.consolemux import ATTACH_SOCKET, ConsoleMux, bind_attach_socket, open_pty
from vmpod.procutil import ProcessIdentity
from vmpod_libvirt import connection as lv
from vmpod_libvirt.consolelog import SerialLog
from vmpod_libvirt.records import FOLLOWER_FILE, FOLLOWER_LOCK, RUN_FILE, ensure_exit, locked, read_json, write_json

__all__ = ["CHECK_INTERVAL", "PUMP_INTERVAL", "console_pty", "main"]

#: How often new serial output is looked for.
PUMP_INTERVAL: Final = 0.1
#: How often libvirt is asked whether the domain still runs.
CHECK_INTERVAL: Final = 0.5
#: After the domain stopped: how long to wait for virtlogd's last bytes.
_DRAIN_QUIET: Final = 0.1
_DRAIN_MAX: Final = 1.0


class _Watch:
    """Whether the followed boot still runs, through a libvirt connection opened (and reopened) on demand."""

    def __init__(self, uri: str, uuid: str, domain_id: int) -> None:
        self.uri = uri
        self.uuid = uuid
        self.domain_id = domain_id
        self.conn: lv.Connect | None = None
        #: libvirt's shutoff reason once the boot is over
        self.reason = 0

    def running(self) -> bool | None:
        """True while the boot runs, False once it is over, None when libvirtd cannot be asked."""
        try:
            if self.conn is None:
                self.conn = lv.open_connection(self.uri)
            try:
                domain = self.conn.lookupByUUIDString(self.uuid)
            except lv.LibvirtError as exc:
                if lv.error_code(exc) == lv.ERR_NO_DOMAIN:
                    return False
                raise
            state, reason = domain.state()
            if state in (lv.SHUTOFF, lv.CRASHED):
                self.reason = reason if state == lv.SHUTOFF else lv.SHUTOFF_CRASHED
                return False
            return domain.ID() == self.domain_id
        except lv.LibvirtError:
            if self.conn is not None:
                lv.close_quietly(self.conn)
            self.conn = None
            return None


def console_pty(xml: str) -> str | None:
    """The pty of the serial console in a live domain XML (``<console type="pty">``, else ``<serial>``)."""
    tree = ET.fromstring(xml)
    for element in (*tree.iterfind("devices/console"), *tree.iterfind("devices/serial")):
        source = element.find("source")
        if element.get("type") == "pty" and source is not None and source.get("path"):
            return str(source.get("path"))
    return None


def _pty_of(watch: _Watch) -> Callable[[], str]:
    """The console pty of the followed boot, asked on a connection of its own (the mux runs in a thread)."""

    def path() -> str:
        try:
            conn = lv.open_connection(watch.uri)
            try:
                domain = conn.lookupByUUIDString(watch.uuid)
                if domain.ID() != watch.domain_id:
                    raise OSError(f"domain {watch.uuid} is no longer the followed boot")
                found = console_pty(domain.XMLDesc(0))
            finally:
                lv.close_quietly(conn)
        except lv.LibvirtError as exc:
            raise OSError(f"libvirt: {exc}") from None
        if found is None:
            raise OSError(f"domain {watch.uuid} has no pty console")
        return found

    return path


def _drain(log: SerialLog) -> None:
    """Append what virtlogd still writes after qemu exited, until the file is quiet."""
    deadline = time.monotonic() + _DRAIN_MAX
    while time.monotonic() < deadline:
        if log.pump() == 0:
            time.sleep(_DRAIN_QUIET)
            if log.pump() == 0:
                return


def follow(directory: Path, log_path: Path, boot: str, watch: _Watch, listener: socket.socket | None = None) -> int:
    """Follow the boot until it is over or SIGTERM comes (the caller holds the follower lock).

    ``listener``: the attach socket the backend bound; ``None``: bind it here.
    """
    mux = ConsoleMux(listener or bind_attach_socket(directory / ATTACH_SOCKET), open_pty(_pty_of(watch)),
                     reopen=False).start()
    try:
        return _follow(directory, log_path, boot, watch)
    finally:
        mux.close()
        (directory / ATTACH_SOCKET).unlink(missing_ok=True)


def _follow(directory: Path, log_path: Path, boot: str, watch: _Watch) -> int:
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    me = ProcessIdentity.of(os.getpid())
    assert me is not None  # this process runs
    write_json(directory / FOLLOWER_FILE, {**me.to_run(), "boot": boot})
    log = SerialLog(directory, log_path, boot)
    next_check = 0.0
    ended = False
    while not stop:
        log.pump()
        now = time.monotonic()
        if now >= next_check:
            next_check = now + CHECK_INTERVAL
            if watch.running() is False:
                ended = True
                break
        pending = log.deadline()
        time.sleep(PUMP_INTERVAL if pending is None else max(0.0, min(PUMP_INTERVAL, pending)))
    if ended:
        _drain(log)
    log.pump(final=True)
    if ended:
        run = read_json(directory / RUN_FILE)
        if run is not None and run.get("boot") == boot:
            ensure_exit(directory, run, watch.reason, time.time_ns())
    (directory / FOLLOWER_FILE).unlink(missing_ok=True)
    if watch.conn is not None:
        lv.close_quietly(watch.conn)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``--dir RUNTIME_DIR --log POD_LOG --boot BOOT --uri URI --uuid UUID --domain-id ID``."""
    parser = argparse.ArgumentParser(prog="vmpod_libvirt.follower", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--boot", required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--uuid", required=True)
    parser.add_argument("--domain-id", required=True, type=int)
    parser.add_argument("--lock-fd", type=int, help="an inherited descriptor that already holds the follower lock")
    parser.add_argument("--listen-fd", type=int, help="an inherited listening socket: the attach socket")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    watch = _Watch(args.uri, args.uuid, args.domain_id)
    listener = None
    if args.listen_fd is not None:
        listener = socket.socket(fileno=args.listen_fd)
        listener.setblocking(False)
        os.set_inheritable(args.listen_fd, False)
    if args.lock_fd is not None:
        try:
            fcntl.flock(args.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: checks it really is
        except OSError:
            return 0
        return follow(directory, args.log, args.boot, watch, listener)
    with locked(directory / FOLLOWER_LOCK, blocking=False) as mine:
        if not mine:
            return 0  # another follower already keeps this machine's log
        return follow(directory, args.log, args.boot, watch)


if __name__ == "__main__":
    sys.exit(main())
