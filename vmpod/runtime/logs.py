"""Console logs in the CRI format: writing, reading, ``--tail`` and ``-f``.

One line per record (cri-api ``parseCRILog``)::

    2016-10-06T00:17:09.669794202Z stdout F the full line
    2016-10-06T00:17:09.669794203Z stdout P a partial chunk, continued by the next record

Timestamps are RFC 3339 in UTC with nine fractional digits; ``F`` marks a
full line (or the last chunk of a long one), ``P`` a partial chunk whose
trailing newline the reader drops before joining it with the next record.
Backends append a VM's serial console to the file in this format; crictl and
kubectl read the same file.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import attrs

__all__ = [
    "MAX_LINE",
    "LogLine",
    "LogWriter",
    "follow",
    "format_record",
    "parse_record",
    "parse_timestamp",
    "read_lines",
    "timestamp",
]

MAX_LINE = 16 * 1024
"""Longer console lines are split into partial records of at most this many bytes (containerd's default)."""

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_STREAMS = (b"stdout", b"stderr")


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


@attrs.frozen
class LogLine:
    """One log line (partial records joined): ``content`` keeps its trailing newline when it had one."""

    timestamp: int
    stream: str
    content: bytes
    partial: bool = False


def format_record(content: bytes, *, stream: str = "stdout", ns: int | None = None, partial: bool = False) -> bytes:
    """One CRI record for ``content`` (which must not contain a newline except at its end)."""
    body = content if content.endswith(b"\n") else content + b"\n"
    tag = b"P" if partial else b"F"
    return b"%s %s %s %s" % (timestamp(time.time_ns() if ns is None else ns).encode(), stream.encode(), tag, body)


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


class _Joiner:
    """Joins partial records into whole lines."""

    def __init__(self) -> None:
        self.pending: LogLine | None = None

    def feed(self, line: LogLine) -> LogLine | None:
        if self.pending is not None:
            line = attrs.evolve(line, timestamp=self.pending.timestamp, content=self.pending.content + line.content)
            self.pending = None
        if line.partial:
            self.pending = line
            return None
        return line


def _records(stream: BinaryIO, joiner: _Joiner) -> Iterator[LogLine]:
    for raw in stream:
        if not raw.endswith(b"\n"):  # a record still being written: leave it for later
            stream.seek(-len(raw), os.SEEK_CUR)
            return
        try:
            line = joiner.feed(parse_record(raw))
        except ValueError:
            continue  # a damaged record is skipped, as the kubelet's reader does
        if line is not None:
            yield line


def _tail_offset(stream: BinaryIO, lines: int) -> int:
    """Offset of the start of the last ``lines`` newline-terminated records."""
    end = stream.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    position, found, block = end, 0, 64 * 1024
    while position > 0:
        start = max(0, position - block)
        stream.seek(start)
        chunk = stream.read(position - start)
        index = len(chunk)
        while True:
            index = chunk.rfind(b"\n", 0, index)
            if index < 0:
                break
            if start + index + 1 != end:
                found += 1
                if found == lines:
                    return start + index + 1
        position = start
    return 0


def read_lines(path: Path, *, tail: int | None = None) -> list[LogLine]:
    """Every line of the log at ``path`` (the last ``tail`` records when given); a missing file is empty."""
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return []
    with stream:
        if tail is not None:
            stream.seek(_tail_offset(stream, tail))
        return list(_records(stream, _Joiner()))


def follow(path: Path, *, tail: int | None = None, keep_going: Callable[[], bool], poll: float = 0.1,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[LogLine]:
    """Lines of the log as they are written, like ``kubectl logs -f``.

    Starts with the existing lines (or the last ``tail``); at the end of the
    file it waits ``poll`` seconds and asks ``keep_going()`` whether to wait
    for more (the container is still running); a renamed or replaced file
    (log rotation) is reopened from its start.
    """
    joiner = _Joiner()
    stream: BinaryIO | None = None
    inode = None
    first = True
    try:
        while True:
            if stream is None:
                try:
                    stream = path.open("rb")
                except FileNotFoundError:
                    if not keep_going():
                        return
                    sleep(poll)
                    continue
                inode = os.fstat(stream.fileno()).st_ino
                if first and tail is not None:
                    stream.seek(_tail_offset(stream, tail))
                first = False
            got = False
            for line in _records(stream, joiner):
                got = True
                yield line
            if got:
                continue
            try:
                replaced = path.stat().st_ino != inode
            except FileNotFoundError:
                replaced = True
            if replaced:
                for line in _records(stream, joiner):  # drain what the old file still had
                    yield line
                stream.close()
                stream = None
                continue
            if not keep_going():
                yield from _records(stream, joiner)
                return
            sleep(poll)
    finally:
        if stream is not None:
            stream.close()


class LogWriter:
    """Appends text to a CRI log file, splitting it into records (backends and tests use it)."""

    def __init__(self, path: Path, stream: str = "stdout") -> None:
        self.path = path
        self.stream = stream
        self._partial = b""

    def write(self, data: bytes) -> None:
        """Append console output: complete lines become F records (CR before LF dropped), long ones P+F."""
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = bytearray()
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            while len(line) > MAX_LINE:
                out += format_record(line[:MAX_LINE], stream=self.stream, partial=True)
                line = line[MAX_LINE:]
            out += format_record(line, stream=self.stream)
        if out:
            with self.path.open("ab") as f:
                f.write(out)

    def flush(self) -> None:
        """Write a pending incomplete line as a partial record."""
        if self._partial:
            with self.path.open("ab") as f:
                f.write(format_record(self._partial, stream=self.stream, partial=True))
            self._partial = b""
