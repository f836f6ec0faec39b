"""Serial console output as a CRI (Kubernetes container) log: the line format and a checkpointing writer.

The format (cri-api ``parseCRILog``) is one record per line::

    2016-10-06T00:17:09.669794202Z stdout F the full line
    2016-10-06T00:17:09.669794203Z stdout P a partial chunk, continued by the next record

Timestamps are RFC 3339 in UTC with nine fractional digits (:func:`timestamp`); ``F`` marks a
full line (or the last chunk of a long one), ``P`` a partial chunk whose trailing newline a
reader drops before joining it with the next record.  :func:`format_record` writes a record and
:func:`parse_record` reads one (kubelet, crictl and ``vmpod logs`` read the same files).

:class:`CriLogWriter` is what backends use to turn a VM's serial console into its pod log.  The
hypervisor appends everything the guest writes to a *raw file* (``serial.raw``) whether or not
anybody reads it; the writer turns that file into records appended to the pod log, and keeps a
checkpoint, ``log.state`` next to the raw file: ``{"boot", "raw_offset", "log_size",
"log_inode"}``, how far the raw file has been turned into records and the log's size after
them.  The checkpoint is written (atomically) after each append to the log; a writer that was
killed between the two leaves a log longer than ``log_size``, and the next writer cuts the log
back to ``log_size`` and redoes the records from ``raw_offset``: no line is lost or written
twice, across any number of restarts.  A checkpoint of another *boot* (another raw file) is
ignored: the writer starts at the beginning of the raw file.

Records: one ``F`` record per guest line (its ``\\r\\n`` or ``\\n`` removed); bytes not ended
by a newline for :data:`PARTIAL_AFTER` seconds (a shell prompt), or :data:`MAX_LINE` bytes of
one line, are written as a ``P`` record and continue in the next record.  The time is when the
writer read the bytes.  Records are written as soon as they are read (readers of the log see
them at once) and ``fsync``\\ed at most every :data:`SYNC_EVERY` seconds, and on the final pump.
A log that was renamed (rotated) or truncated by someone else is followed: the writer goes on
appending to whatever file is at the log's path.

This module imports only the standard library and :mod:`vmpod.procutil` (and the ``vmpod``
package, which imports pluggy): backends use it from small detached helper processes, the qemu
supervisor even under ``python -I -S`` (with an explicit import path).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from pathlib import Path
from typing import Final

from vmpod.procutil import read_json, write_json

__all__ = [
    "LOG_STATE",
    "MAX_LINE",
    "PARTIAL_AFTER",
    "SERIAL_RAW",
    "SYNC_EVERY",
    "CriLogWriter",
    "LogLine",
    "format_record",
    "parse_record",
    "parse_timestamp",
    "timestamp",
]

#: Longest log line in bytes; longer console lines are split into ``P`` records (containerd's default).
MAX_LINE: Final = 16 * 1024
#: Seconds an unfinished line waits for its newline before :class:`CriLogWriter` writes it as a ``P`` record.
PARTIAL_AFTER: Final = 0.5
#: Longest time records appended by :class:`CriLogWriter` stay without ``fsync`` while more keep coming.
SYNC_EVERY: Final = 1.0
#: The raw serial output :class:`CriLogWriter` reads, in its directory.
SERIAL_RAW: Final = "serial.raw"
#: :class:`CriLogWriter`'s checkpoint, in its directory.
LOG_STATE: Final = "log.state"

_READ_CHUNK: Final = 1 << 20
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_STREAMS: Final = (b"stdout", b"stderr")


# -- the format --------------------------------------------------------------------------------


def timestamp(ns: int) -> str:
    """``ns`` (since the epoch) as RFC 3339 with nanoseconds in UTC: ``2016-10-06T00:17:09.669794202Z``."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (any number of fractional digits, any offset).

    :raises ValueError: for anything else.
    """
    main, frac, rest = text, "", ""
    if "." in text:
        main, _, tail = text.partition(".")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        frac, rest = tail[:digits], tail[digits:]
    else:
        main, rest = text[:19], text[19:]
    if not frac.isdigit() and frac:
        raise ValueError(f"bad timestamp {text!r}")
    zone = datetime.UTC if rest in ("Z", "z") else datetime.datetime.strptime(rest, "%z").tzinfo
    moment = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=zone)
    delta = moment - _EPOCH
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + nanos


@dataclasses.dataclass(frozen=True)
class LogLine:
    """One log line (partial records joined): ``content`` keeps its trailing newline when it had one."""

    timestamp: int
    stream: str
    content: bytes
    partial: bool = False


def _record(stamp: bytes, stream: bytes, partial: bool, content: bytes) -> bytes:
    body = content if content.endswith(b"\n") else content + b"\n"
    return b"%s %s %s %s" % (stamp, stream, b"P" if partial else b"F", body)


def format_record(content: bytes, *, stream: str = "stdout", ns: int | None = None, partial: bool = False) -> bytes:
    """One CRI record for ``content`` (which must not contain a newline except at its end), newline-terminated.

    ``ns`` is the record's time (default: now).
    """
    return _record(timestamp(time.time_ns() if ns is None else ns).encode(), stream.encode(), partial, content)


def parse_record(record: bytes) -> LogLine:
    """Parse one CRI record (with or without its newline).

    :raises ValueError: when it is not ``<timestamp> <stdout|stderr> <F|P>[:tags] <content>``.
    """
    parts = record.split(b" ", 3)
    if len(parts) < 3:
        raise ValueError(f"not a CRI log record: {record[:80]!r}")
    stamp, stream, tags = parts[0], parts[1], parts[2]
    content = parts[3] if len(parts) == 4 else b""
    if len(parts) == 3 and tags.endswith(b"\n"):
        tags = tags[:-1]
        content = b"\n"
    if stream not in _STREAMS:
        raise ValueError(f"bad stream {stream!r} in a CRI log record")
    tag = tags.split(b":", 1)[0]
    if tag not in (b"F", b"P"):
        raise ValueError(f"bad tag {tags!r} in a CRI log record")
    partial = tag == b"P"
    if not content.endswith(b"\n"):
        content += b"\n"
    if partial:
        content = content[:-1]
    return LogLine(timestamp=parse_timestamp(stamp.decode()), stream=stream.decode(), content=content,
                   partial=partial)


# -- the writer --------------------------------------------------------------------------------


class CriLogWriter:
    """Turns the raw serial output of one boot into CRI records appended to a log (see the module docstring).

    :param directory: holds the raw file (:data:`SERIAL_RAW`) and the checkpoint (:data:`LOG_STATE`).
    :param log_path: the pod log (created, with its directory, when missing).
    :param boot: names the raw file's contents: a checkpoint of another boot is ignored.

    The caller must make sure it is the only writer of ``directory`` (a lock held for the
    writer's lifetime): two writers would both append the same lines.
    """

    def __init__(self, directory: Path, log_path: Path, boot: str) -> None:
        self.directory = directory
        self.log_path = log_path
        self.boot = boot
        self.raw_offset = 0
        self.log_size = 0
        self.log_inode = 0
        #: an unfinished line waiting for its newline: (its offset in the raw file, when first seen)
        self._partial: tuple[int, float] | None = None
        self._synced = time.monotonic()
        self._recover()

    def _recover(self) -> None:
        state = read_json(self.directory / LOG_STATE)
        same_boot = state is not None and state.get("boot") == self.boot
        self.raw_offset = int(state["raw_offset"]) if state is not None and same_boot else 0
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            info = os.fstat(fd)
            if (state is not None and same_boot and info.st_ino == state.get("log_inode")
                    and info.st_size > int(state["log_size"])):
                # A writer was killed after appending and before its checkpoint: undo its lines.
                os.ftruncate(fd, int(state["log_size"]))
                info = os.fstat(fd)
            self.log_size, self.log_inode = info.st_size, info.st_ino
        finally:
            os.close(fd)
        self._save()

    def _save(self) -> None:
        write_json(self.directory / LOG_STATE, {"boot": self.boot, "raw_offset": self.raw_offset,
                                                "log_size": self.log_size, "log_inode": self.log_inode})

    def deadline(self) -> float | None:
        """Seconds until a pending unfinished line is due as a ``P`` record, or ``None``."""
        if self._partial is None:
            return None
        return max(0.0, self._partial[1] + PARTIAL_AFTER - time.monotonic())

    def pump(self, *, final: bool = False) -> int:
        """Append records for everything new in the raw file; returns how many were written.

        With ``final`` (the hypervisor is gone, the raw file complete) an unfinished last line is
        written as an ``F`` record and the log is ``fsync``\\ed.
        """
        written = 0
        while True:
            chunk = self._read_raw()
            if not chunk:
                break
            lines, consumed = self._split(chunk, final=final)
            if not lines:
                break
            self._append(lines, consumed, sync=final)
            written += len(lines)
        return written

    def _read_raw(self) -> bytes:
        try:
            with open(self.directory / SERIAL_RAW, "rb") as raw:
                raw.seek(self.raw_offset)
                return raw.read(_READ_CHUNK)
        except FileNotFoundError:
            return b""

    def _split(self, chunk: bytes, *, final: bool) -> tuple[list[tuple[bool, bytes]], int]:
        """``[(partial, text)]`` for the complete lines of ``chunk`` (and a due partial), and bytes used."""
        lines: list[tuple[bool, bytes]] = []
        consumed = 0
        while True:
            newline = chunk.find(b"\n", consumed, consumed + MAX_LINE + 1)
            if newline >= 0:
                lines.append((False, chunk[consumed:newline].rstrip(b"\r")))
                consumed = newline + 1
            elif len(chunk) - consumed >= MAX_LINE:
                lines.append((True, chunk[consumed : consumed + MAX_LINE]))
                consumed += MAX_LINE
            else:
                break
        rest = chunk[consumed:]
        if not rest:
            self._partial = None
            return lines, consumed
        # An unfinished line: wait for its end, up to PARTIAL_AFTER seconds from when it was first seen.
        start, now = self.raw_offset + consumed, time.monotonic()
        if final or (self._partial is not None and self._partial[0] == start
                     and now - self._partial[1] >= PARTIAL_AFTER):
            lines.append((not final, rest.rstrip(b"\r") if final else rest))
            consumed = len(chunk)
            self._partial = None
        elif self._partial is None or self._partial[0] != start:
            self._partial = (start, now)
        return lines, consumed

    def _append(self, lines: list[tuple[bool, bytes]], consumed: int, *, sync: bool) -> None:
        stamp = timestamp(time.time_ns()).encode()
        data = b"".join(_record(stamp, b"stdout", partial, text) for partial, text in lines)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            info = os.fstat(fd)
            if info.st_ino != self.log_inode or info.st_size < self.log_size:
                self.log_inode = info.st_ino  # rotated or truncated by someone else: follow the new file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync or time.monotonic() - self._synced >= SYNC_EVERY:
                os.fsync(fd)
                self._synced = time.monotonic()
            self.log_size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.raw_offset += consumed
        self._save()
