"""Read an ISO image back with real, independent tools (not pycdlib).

* ``isoinfo`` from genisoimage lists the Rock Ridge tree (``-R -l``), extracts
  files (``-R -x /path``) and lists the Joliet tree (``-J -l``);
* ``blkid`` from util-linux reads the volume label, as cloud-init does.

Gotchas of these tools that this module deals with:

* ``isoinfo -x`` of a path that does not exist prints nothing and exits 0, so
  files are only extracted after the listing showed them, and the extracted
  length is checked against the listed size;
* ``isoinfo -J`` prints Joliet names in ISO-8859-1 (it has no UTF-8 output),
  so Joliet names are decoded as Latin-1 and a character outside Latin-1
  shows up as whatever isoinfo substitutes;
* ``blkid`` keeps a cache (``/run/blkid/blkid.tab``) even for regular files,
  so it is run with ``-p`` (probe the file itself, no cache).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IsoEntry", "IsoImage", "missing_tools", "read_iso", "read_seed"]

TOOLS = ("isoinfo", "blkid")

# One entry of `isoinfo -l`, e.g.
#   -r--r--r--   1    0    0              36 Jan  1 1970 [     49 00]  meta-data
# (isoinfo ends every name with one space).
_ENTRY_RE = re.compile(
    rb"^(?P<mode>[-dlcbps][-rwxsStT]{9})\s+(?P<nlinks>\d+)\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+"
    rb"(?P<size>\d+)\s+\w{3}\s+\d+\s+(?P<year>\d+)\s+\[\s*(?P<extent>\d+)\s+[0-9A-Fa-f]{2}\]  "
    rb"(?P<name>.*) $"
)
_DIR_RE = re.compile(rb"^Directory listing of (?P<dir>/.*)$")


@dataclass(frozen=True)
class IsoEntry:
    """One file or directory as ``isoinfo -l`` lists it."""

    path: str
    """Relative path, ``/``-separated, e.g. ``openstack/latest/user_data``."""
    is_dir: bool
    mode: str
    """``ls``-style mode string, e.g. ``-r--r--r--``."""
    nlinks: int
    uid: int
    gid: int
    size: int
    year: int
    """Year of the recording date isoinfo prints."""


@dataclass(frozen=True)
class IsoImage:
    """What the independent tools see in an image."""

    label: str
    """The volume label as ``blkid`` reports it."""
    volume_id: str
    """The primary volume descriptor's identifier as ``isoinfo -d`` reports it."""
    files: dict[str, bytes]
    """Contents of every regular file, by Rock Ridge path."""
    rock_ridge: dict[str, IsoEntry]
    """Every file and directory of the Rock Ridge tree, by path."""
    joliet: dict[str, IsoEntry]
    """Every file and directory of the Joliet tree, by path (names decoded as Latin-1)."""
    iso9660: dict[str, IsoEntry]
    """Every file and directory of the plain ISO 9660 tree (``NAME.EXT;1``), by path."""


def missing_tools() -> list[str]:
    """The tools this module needs that are not on ``PATH``."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def read_seed(image: Path) -> tuple[dict[str, bytes], str]:
    """Files (Rock Ridge paths to contents) and ``blkid`` label of ``image``."""
    result = read_iso(image)
    return result.files, result.label


def read_iso(image: Path) -> IsoImage:
    """Read ``image`` back with ``isoinfo`` and ``blkid``."""
    rock_ridge = _listing(image, ["-R"], "utf-8")
    joliet = _listing(image, ["-J"], "latin-1")
    iso9660 = _listing(image, [], "ascii")
    files: dict[str, bytes] = {}
    for path, entry in rock_ridge.items():
        if entry.is_dir:
            continue
        content = _run(["isoinfo", "-R", "-x", "/" + path, "-i", str(image)])
        if len(content) != entry.size:
            raise AssertionError(
                f"isoinfo extracted {len(content)} bytes of {path!r}, listed as {entry.size} bytes"
            )
        files[path] = content
    return IsoImage(
        label=_label(image),
        volume_id=_volume_id(image),
        files=files,
        rock_ridge=rock_ridge,
        joliet=joliet,
        iso9660=iso9660,
    )


def _run(argv: list[str]) -> bytes:
    completed = subprocess.run(argv, capture_output=True, check=False)
    if completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {completed.returncode}: {completed.stderr.decode(errors='replace')}"
        )
    return completed.stdout


def _listing(image: Path, flags: list[str], encoding: str) -> dict[str, IsoEntry]:
    """Parse ``isoinfo <flags> -l``: every entry but ``.`` and ``..``, by relative path."""
    flag = " ".join(flags)
    output = _run(["isoinfo", *flags, "-l", "-i", str(image)])
    entries: dict[str, IsoEntry] = {}
    directory: str | None = None
    for line in output.split(b"\n"):
        if not line:
            continue
        header = _DIR_RE.match(line)
        if header:
            directory = header["dir"].decode(encoding).strip("/")
            continue
        match = _ENTRY_RE.match(line)
        if match is None or directory is None:
            raise AssertionError(f"cannot parse isoinfo {flag} -l line: {line!r}")
        name = match["name"].decode(encoding)
        if name in (".", ".."):
            continue
        path = f"{directory}/{name}" if directory else name
        mode = match["mode"].decode()
        if path in entries:
            raise AssertionError(f"isoinfo {flag} -l lists {path!r} twice")
        entries[path] = IsoEntry(
            path=path,
            is_dir=mode.startswith("d"),
            mode=mode,
            nlinks=int(match["nlinks"]),
            uid=int(match["uid"]),
            gid=int(match["gid"]),
            size=int(match["size"]),
            year=int(match["year"]),
        )
    return entries


def _label(image: Path) -> str:
    return _run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(image)]).decode().rstrip("\n")


def _volume_id(image: Path) -> str:
    for line in _run(["isoinfo", "-d", "-i", str(image)]).decode(errors="replace").splitlines():
        if line.startswith("Volume id:"):
            return line.removeprefix("Volume id:").strip()
    raise AssertionError("isoinfo -d printed no volume id")
