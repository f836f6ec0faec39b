"""Reading console logs in the CRI format (``vmpod logs``, ``--tail``, ``-f``), and a simple writer.

The format itself (records, timestamps, :class:`~vmpod.consolelog.LogLine`) is
:mod:`vmpod.consolelog`'s; its names are re-exported here.  Backends append a VM's serial
console to the file in this format (:class:`vmpod.consolelog.CriLogWriter`); crictl and
kubectl read the same file.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vmpod.consolelog import MAX_LINE, LogLine, format_record, parse_record, parse_timestamp, timestamp

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


class _Joiner:
    """Joins partial records into whole lines."""

    def __init__(self) -> None:
        self.pending: LogLine | None = None

    def feed(self, line: LogLine) -> LogLine | None:
        if self.pending is not None:
            line = dataclasses.replace(line, timestamp=self.pending.timestamp,
                                       content=self.pending.content + line.content)
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
