"""The serial output virtlogd writes, turned into the pod's CRI log, across virtlogd's rotations.

libvirt hands the serial port's output to virtlogd, which appends it to
``<runtime_dir>/serial.raw`` whether or not anybody reads it, and rolls the file over at its
``max_size`` (2 MiB by default): ``serial.raw`` is renamed ``serial.raw.0`` (the older ones
move up to ``.1``, ``.2``; the oldest beyond ``max_backups`` is deleted) and a new ``serial.raw``
is started.

The CRI line writing itself is vmpod's :class:`vmpod.consolelog.CriLogWriter`
(``<RFC3339Nano> stdout F|P <text>``, a checkpoint so that no line is lost or written twice when
the writer is killed and restarted, partial lines as ``P`` after half a second).  It reads one
growing file by offset, so :class:`SerialLog` gives it a file that never changes under it: a
*hard link*, in ``<runtime_dir>/libvirt-console/``, to the serial file being read.  When virtlogd
rotates, the link still names the old file (the rename keeps the inode, and even a deleted
backup stays readable through the link); once that file is consumed to its end, the link moves
to the next file of the rotation and a new writer (its checkpoint keyed by the file's inode)
starts there at offset 0.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Final

from vmpod.consolelog import CriLogWriter
from vmpod_libvirt.records import CONSOLE_DIR, SERIAL_RAW

__all__ = ["SerialLog"]

_BACKUP: Final = re.compile(re.escape(SERIAL_RAW) + r"\.(\d+)")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


class SerialLog:
    """Appends one boot's serial output (``<source>/serial.raw`` and its rotations) to ``log_path``.

    The caller must be the only writer for the machine (the follower holds its lock).
    :param source: the runtime directory virtlogd writes ``serial.raw`` into.
    :param boot: the boot; checkpoints of other boots are ignored.
    """

    def __init__(self, source: Path, log_path: Path, boot: str) -> None:
        self.source = source
        self.log_path = log_path
        self.boot = boot
        self.work = source / CONSOLE_DIR
        self.work.mkdir(exist_ok=True)
        self.link = self.work / SERIAL_RAW
        self.writer: CriLogWriter | None = None
        self._open()

    def _chain(self) -> list[Path]:
        """The serial files that exist, oldest first: ``serial.raw.N`` ... ``serial.raw.0``, ``serial.raw``."""
        backups = []
        for path in self.source.glob(f"{SERIAL_RAW}.*"):
            match = _BACKUP.fullmatch(path.name)
            if match:
                backups.append((int(match.group(1)), path))
        chain = [path for _, path in sorted(backups, reverse=True)]
        if (self.source / SERIAL_RAW).exists():
            chain.append(self.source / SERIAL_RAW)
        return chain

    def _open(self) -> None:
        """Start a writer on the linked file, linking the oldest serial file first if nothing is linked yet."""
        if not self.link.exists():
            chain = self._chain()
            if not chain:
                return  # virtlogd has not created the file yet
            self._relink(chain[0])
        identity = _identity(self.link)
        if identity is None:
            return
        self.writer = CriLogWriter(self.work, self.log_path, f"{self.boot}:{identity[1]}")

    def _relink(self, target: Path) -> None:
        tmp = self.work / f".{SERIAL_RAW}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.link(target, tmp)
        os.replace(tmp, self.link)

    def _next(self) -> Path | None:
        """The serial file after the linked one, once virtlogd has rotated away from it; else ``None``."""
        linked = _identity(self.link)
        chain = self._chain()
        identities = [_identity(path) for path in chain]
        if linked in identities:
            index = identities.index(linked)
            return chain[index + 1] if index + 1 < len(chain) else None
        return chain[0] if chain else None  # the linked file was rotated out of the chain altogether

    def deadline(self) -> float | None:
        """Seconds until a pending unfinished line is due as a ``P`` line, or ``None``."""
        return self.writer.deadline() if self.writer is not None else None

    def pump(self, *, final: bool = False) -> int:
        """Append log lines for everything new; returns how many were written.

        With ``final`` (the boot is over) an unfinished last line is written as an ``F`` line.
        """
        if self.writer is None:
            self._open()
            if self.writer is None:
                return 0
        written = self.writer.pump()
        while (following := self._next()) is not None:
            # virtlogd no longer writes the linked file: finish it (a line cut by the rotation is a P line).
            written += self.writer.pump()
            while (wait := self.writer.deadline()) is not None:
                time.sleep(wait)
                written += self.writer.pump()
            self._relink(following)
            self._open()
            assert self.writer is not None
            written += self.writer.pump()
        if final:
            written += self.writer.pump(final=True)
        return written
