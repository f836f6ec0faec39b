"""``python -m vmpod.probing --state-dir DIR --uid UID [--foreground]``: start a pod's prober.

Unless ``--foreground``, it detaches (fork, new session, stdio to ``prober.log``); the parent
exits once the detached prober holds ``prober.lock`` and has recorded its identity in
``prober.json`` (or found another prober holding the lock), so whoever started it can find it.
Only then the prober itself is imported: the caller waits a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vmpod.probing import LOCK_FILE, LOG_FILE, PROBER_FILE, PROBES_DIR
from vmpod.procutil import ProcessIdentity, locked, write_json


def _daemonize(log_path: Path) -> int | None:
    """Fork; in the parent wait for the child's word and return None; in the child return the fd to tell it by."""
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as word:
            word.read()
        return None
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)
    return write_end


def main(args: list[str] | None = None) -> int:
    """Start the prober (detached unless ``--foreground``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m vmpod.probing")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--uid", required=True)
    parser.add_argument("--foreground", action="store_true", help="do not detach")
    options = parser.parse_args(args)
    state_dir: Path = options.state_dir.absolute()
    directory = state_dir / "pods" / options.uid / PROBES_DIR
    if not directory.is_dir():
        return 0
    tell = None
    if not options.foreground:
        tell = _daemonize(directory / LOG_FILE)
        if tell is None:
            return 0
    with locked(directory / LOCK_FILE, blocking=False) as held:
        if held:
            identity = ProcessIdentity.of(os.getpid())
            if identity is not None:
                write_json(directory / PROBER_FILE, identity.to_run())
        if tell is not None:
            os.close(tell)
        if not held:
            return 0
        import logging  # noqa: PLC0415

        from vmpod.probing.prober import serve  # noqa: PLC0415

        logging.basicConfig(level=logging.INFO, format="%(asctime)s prober %(process)d: %(message)s")
        return serve(state_dir, options.uid)


if __name__ == "__main__":
    sys.exit(main())
