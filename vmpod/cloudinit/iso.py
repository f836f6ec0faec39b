"""In-process writer for cloud-init seed ISO images.

cloud-init finds its NoCloud data on a filesystem labelled ``cidata`` (files
``meta-data``, ``user-data``, ``network-config``) and its ConfigDrive data on
one labelled ``config-2`` (files under ``openstack/latest/``).  The usual
tools (``cloud-localds``, ``genisoimage -r -J -V cidata``) fork a process per
seed; this module writes the same kind of image with pycdlib, in-process:

* ISO 9660 (interchange level 3) with Rock Ridge 1.09 and Joliet level 3, so
  the names given here (``meta-data``, ``network_data.json``...) are what
  Linux's iso9660 driver, ``isoinfo -R``/``-J`` and cloud-init see; the plain
  ISO 9660 names underneath are upper-case d-character manglings nobody reads;
* file modes 0444 and directory modes 0555, owner and group 0, as
  ``genisoimage -r`` records them;
* byte-identical output for identical input: every timestamp is
  1970-01-01T00:00:00Z, entries are added in sorted order and no random
  identifier is written (see :func:`_freeze_dates` for how, since pycdlib has
  no option for the dates).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pycdlib
from pycdlib import dates as pycdlib_dates
from pycdlib import pycdlibexception

from vmpod.durable import fsync_directory
from vmpod.errors import SpecError

__all__ = [
    "CONFIGDRIVE_LABEL",
    "MAX_SEED_BYTES",
    "NOCLOUD_LABEL",
    "build_iso",
    "write_iso",
]

NOCLOUD_LABEL = "cidata"
"""Volume label cloud-init's NoCloud datasource looks for."""

CONFIGDRIVE_LABEL = "config-2"
"""Volume label cloud-init's ConfigDrive datasource looks for."""

MAX_SEED_BYTES = 64 * 1024 * 1024
"""Largest total size of the file contents a seed may hold."""

_ERROR_PATH = "seed"

_SECTOR = 2048
_FILE_MODE = 0o100444  # regular file, r--r--r--, like genisoimage -r
_DIR_MODE = 0o040555  # directory, r-xr-xr-x, like genisoimage -r
_IMAGE_MODE = 0o644  # mode of the image file write_iso leaves behind

# ECMA-119 6.8.2.1: at most 8 directory levels counting the root, so 7 below
# it, plus the file name.  Deeper trees need Rock Ridge relocation
# (an ``rr_moved`` directory visible to every reader), which a seed never needs.
_MAX_COMPONENTS = 8
# Joliet allows 64 UCS-2 characters per name; pycdlib checks the length of the
# UTF-8 encoding against 64, so that is the limit that holds for every name.
_MAX_NAME_BYTES = 64
# Characters Joliet forbids in names (besides the separator "/").
_FORBIDDEN_CHARS = frozenset("*:;?\\") | frozenset(chr(c) for c in range(0x20))
# The label is written in the primary (32 bytes) and Joliet (16 UCS-2
# characters) volume descriptors; keep it short and plain.
_LABEL_RE = re.compile(r"[A-Za-z0-9_.\-]{1,16}\Z")
_LABEL_ACCEPTED = "1 to 16 characters from A-Z a-z 0-9 _ . -"

# ISO 9660 level 3 name lengths: file name plus extension at most 30
# characters (ECMA-119 7.5.2), directory names at most 31.
_ISO_FILE_CHARS = 30
_ISO_EXT_CHARS = 8
_ISO_DIR_CHARS = 31
_NOT_D_CHAR = re.compile(r"[^A-Z0-9_]")

# The one timestamp written everywhere: 1970-01-01T00:00:00, offset 0 from GMT.
_EPOCH_DR_DATE = struct.pack("=BBBBBBb", 70, 1, 1, 0, 0, 0, 0)  # ECMA-119 9.1.5
_EPOCH_VD_DATE = b"1970010100000000\x00"  # ECMA-119 8.4.26.1
# Byte offsets of dates inside a primary/supplementary volume descriptor
# (ECMA-119 8.4.26 and 8.4.27, BP 814 and 831 counted from 1).
_VD_CREATION_DATE_OFFSET = 813
_VD_MODIFICATION_DATE_OFFSET = 830
_TF_FIELDS = (
    "creation_time",
    "access_time",
    "modification_time",
    "attribute_change_time",
    "backup_time",
    "expiration_time",
    "effective_time",
)

_Parts = tuple[str, ...]


def build_iso(files: Mapping[str, bytes], volume_label: str) -> bytes:
    """Return a seed ISO image holding ``files``, labelled ``volume_label``.

    :param files: POSIX relative paths (``"meta-data"``,
        ``"openstack/latest/meta_data.json"``) mapped to their contents;
        directories on the way are created.
    :param volume_label: the volume label, normally :data:`NOCLOUD_LABEL` or
        :data:`CONFIGDRIVE_LABEL`.
    :returns: the image; the same input always gives the same bytes.
    :raises SpecError: for a bad label, a path that is empty, absolute, has
        an empty, ``.`` or ``..`` component, a character Joliet cannot store,
        a name over 64 bytes, more than 8 components, is also a directory of
        other files or differs from another path only in letter case, or for
        contents over :data:`MAX_SEED_BYTES` in total; always with path
        ``"seed"`` and the offending value.
    """
    layout = _Layout.from_files(files, volume_label)
    out = io.BytesIO()
    layout.master(out)
    return out.getvalue()


def write_iso(files: Mapping[str, bytes], volume_label: str, dest: Path) -> None:
    """Write the seed ISO :func:`build_iso` would return to ``dest``, atomically.

    The image is written to a temporary file next to ``dest``, flushed to
    disk, given mode 0644 and renamed over ``dest``; on any failure the
    temporary file is removed and ``dest`` is left as it was.

    :raises SpecError: as :func:`build_iso`, before anything is written.
    :raises OSError: when the file cannot be written (missing directory...).
    """
    layout = _Layout.from_files(files, volume_label)
    # Mastered in memory: pycdlib seeks and writes piecemeal, which costs a
    # system call each on a real file; one write of the finished image is
    # several times faster, for at most twice MAX_SEED_BYTES of memory.
    image = io.BytesIO()
    layout.master(image)
    dest = Path(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(image.getbuffer())
            tmp.flush()
            os.fchmod(tmp.fileno(), _IMAGE_MODE)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(dest.parent)


class _Layout:
    """A validated seed: the directories and files to write, and the label."""

    def __init__(self, label: str, dirs: list[_Parts], files: dict[_Parts, bytes]) -> None:
        self.label = label
        self.dirs = dirs
        self.files = files

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], volume_label: str) -> _Layout:
        """Check ``files`` and ``volume_label``; raise :class:`SpecError` on the first problem."""
        if not isinstance(volume_label, str) or not _LABEL_RE.match(volume_label):
            raise SpecError(_ERROR_PATH, "invalid volume label", value=volume_label,
                            accepted=_LABEL_ACCEPTED)
        total = sum(len(content) for content in files.values())
        if total > MAX_SEED_BYTES:
            raise SpecError(_ERROR_PATH, "seed files are too large in total", value=total,
                            accepted=f"at most {MAX_SEED_BYTES} bytes")
        by_parts = {_split_path(path): content for path, content in sorted(files.items())}
        dirs: set[_Parts] = set()
        for parts in by_parts:
            dirs.update(parts[:i] for i in range(1, len(parts)))
        for parts in sorted(by_parts):
            if parts in dirs:
                raise SpecError(_ERROR_PATH, "path is a file and also a directory of other files",
                                value="/".join(parts))
        # Joliet is case-insensitive for its readers (Linux mounts a Joliet-only
        # view with check=relaxed, Windows always): two names differing only in
        # case would open the same file there.
        folded: dict[_Parts, _Parts] = {}
        for parts in sorted(dirs | by_parts.keys()):
            key = tuple(name.casefold() for name in parts)
            if key in folded:
                raise SpecError(_ERROR_PATH, "path differs from another only in letter case",
                                value="/".join(parts),
                                accepted=f"names that Joliet readers can tell apart from {'/'.join(folded[key])!r}")
            folded[key] = parts
        return cls(volume_label, sorted(dirs), dict(sorted(by_parts.items())))

    def master(self, out: BinaryIO) -> None:
        """Write the image to ``out`` (seekable, readable, positioned anywhere)."""
        iso = pycdlib.PyCdlib()
        iso.new(
            interchange_level=3,
            sys_ident="LINUX",
            vol_ident=self.label,
            app_ident_str="VMPOD",
            joliet=3,
            rock_ridge="1.09",
        )
        try:
            iso_names = _iso9660_names(self.dirs, list(self.files))
            for parts in self.dirs:  # sorted, so parents come first
                iso.add_directory(
                    iso_path=iso_names[parts],
                    rr_name=parts[-1],
                    joliet_path="/" + "/".join(parts),
                    file_mode=_DIR_MODE,
                )
            for parts, content in self.files.items():
                iso.add_fp(
                    io.BytesIO(content),
                    len(content),
                    iso_path=iso_names[parts] + ";1",
                    rr_name=parts[-1],
                    joliet_path="/" + "/".join(parts),
                    file_mode=_FILE_MODE,
                )
            _freeze_dates(iso)
            iso.write_fp(out)
            _freeze_modification_dates(iso, out)
        except pycdlibexception.PyCdlibInvalidInput as exc:  # pragma: no cover - validated above
            raise SpecError(_ERROR_PATH, f"cannot be written as an ISO 9660 image: {exc}") from exc
        finally:
            iso.close()


def _split_path(path: str) -> _Parts:
    """Split a relative POSIX path into its names, refusing anything unsafe or unwritable."""
    if not isinstance(path, str) or not path:
        raise SpecError(_ERROR_PATH, "empty file path", value=path,
                        accepted="a relative POSIX path such as 'meta-data'")
    if path.startswith("/"):
        raise SpecError(_ERROR_PATH, "file path must be relative", value=path,
                        accepted="a relative POSIX path such as 'meta-data'")
    parts = tuple(path.split("/"))
    if len(parts) > _MAX_COMPONENTS:
        raise SpecError(_ERROR_PATH, "file path is nested too deeply", value=path,
                        accepted=f"at most {_MAX_COMPONENTS - 1} directory levels")
    for name in parts:
        if name in ("", ".", ".."):
            raise SpecError(_ERROR_PATH, "file path has an empty, '.' or '..' component", value=path,
                            accepted="names separated by single '/'")
        if any(char in _FORBIDDEN_CHARS for char in name):
            raise SpecError(_ERROR_PATH, "file name has a character Joliet cannot store", value=path,
                            accepted="no control characters and none of * : ; ? \\")
        try:
            encoded = name.encode("utf-8")
            name.encode("utf-16-be")
        except UnicodeEncodeError:
            raise SpecError(_ERROR_PATH, "file name is not valid Unicode", value=path) from None
        if len(encoded) > _MAX_NAME_BYTES:
            raise SpecError(_ERROR_PATH, "file name is too long", value=path,
                            accepted=f"at most {_MAX_NAME_BYTES} bytes of UTF-8 per name")
    return parts


def _iso9660_names(dirs: list[_Parts], files: list[_Parts]) -> dict[_Parts, str]:
    """Absolute ISO 9660 paths (without ``;1``) for every directory and file.

    Only readers ignoring Rock Ridge and Joliet see these names: upper-case
    d-characters, truncated, made unique within their directory by a
    ``_<n>`` suffix.  The result depends only on the set of paths.
    """
    children: dict[_Parts, list[tuple[str, bool]]] = {}
    for parts in dirs:
        children.setdefault(parts[:-1], []).append((parts[-1], True))
    for parts in files:
        children.setdefault(parts[:-1], []).append((parts[-1], False))
    local: dict[_Parts, str] = {}
    for parent, entries in children.items():
        taken: set[str] = set()
        for name, is_dir in sorted(entries):
            iso_name = _iso9660_name(name, is_dir, taken)
            taken.add(iso_name.rstrip("."))
            local[(*parent, name)] = iso_name
    return {
        parts: "/" + "/".join(local[parts[:i]] for i in range(1, len(parts) + 1))
        for parts in (*dirs, *files)
    }


def _iso9660_name(name: str, is_dir: bool, taken: set[str]) -> str:
    """The ISO 9660 identifier for ``name``: ``STEM`` for a directory, ``STEM.EXT`` for a file."""
    if is_dir:
        stem, ext, limit = _d_chars(name), None, _ISO_DIR_CHARS
    else:
        base, dot, suffix = name.rpartition(".")
        if dot and base:
            stem, ext = _d_chars(base), _d_chars(suffix)[:_ISO_EXT_CHARS]
        else:
            stem, ext = _d_chars(name), ""
        limit = _ISO_FILE_CHARS - len(ext)
    for counter in itertools.count():
        tail = f"_{counter}" if counter else ""
        candidate = stem[: limit - len(tail)] + tail
        if candidate + ("." + ext if ext else "") not in taken:
            return candidate if ext is None else f"{candidate}.{ext}"
    raise AssertionError("unreachable")  # pragma: no cover


def _d_chars(text: str) -> str:
    """``text`` in ISO 9660 d-characters (A-Z, 0-9, _)."""
    return _NOT_D_CHAR.sub("_", text.upper())


# Determinism.  pycdlib (1.22) has no parameter for any date but the Rock
# Ridge creation time: new(), add_directory() and add_fp() stamp every
# directory record, Rock Ridge TF entry and volume descriptor with
# time.time() converted with time.localtime() (so the time zone leaks in
# too), and PrimaryOrSupplementaryVD.record() stamps the volume modification
# date with time.time() while the image is written.  Patching time.time would
# change a process-wide module, so instead, once the tree is complete,
# _freeze_dates() replaces every date object pycdlib made with one parsed
# from a constant by pycdlib's own parse(), and _freeze_modification_dates()
# overwrites the 17-byte modification date in the written volume descriptors
# (fixed offset, ECMA-119 8.4.27) after checking that the creation date next
# to it holds the constant, so a change of layout in pycdlib fails loudly
# rather than silently.  The determinism tests build under another clock and
# time zone to catch any date missed.  Nothing else varies: pycdlib writes no
# random identifier without isohybrid or UDF (neither is used), entries are
# added in sorted order, and the ISO 9660 names are derived from the paths.


def _parsed_date(date: Any, encoded: bytes) -> Any:
    date.parse(encoded)
    return date


# pycdlib only reads a date object once it is made (record() packs its fields;
# a second new() or parse() raises), so one instance of each kind is shared by
# every record of every image.
_DR_DATE = _parsed_date(pycdlib_dates.DirectoryRecordDate(), _EPOCH_DR_DATE)
_VD_DATE = _parsed_date(pycdlib_dates.VolumeDescriptorDate(), _EPOCH_VD_DATE)


def _volume_descriptors(iso: Any) -> Iterator[Any]:
    yield from iso.pvds
    yield from iso.svds


def _freeze_dates(iso: Any) -> None:
    """Set every date pycdlib recorded in ``iso`` so far to the constant epoch."""
    for vd in _volume_descriptors(iso):
        vd.volume_creation_date = _VD_DATE
        vd.volume_effective_date = _VD_DATE
        stack = [vd.root_dir_record]
        while stack:
            record = stack.pop()
            _freeze_record(record)
            for child in record.children:
                if child.is_dot() or child.is_dotdot():
                    _freeze_record(child)
                else:
                    stack.append(child)


def _freeze_record(record: Any) -> None:
    record.date = _DR_DATE
    rock_ridge = record.rock_ridge
    if rock_ridge is None:
        return
    for entries in (rock_ridge.dr_entries, rock_ridge.ce_entries):
        tf_record = None if entries is None else entries.tf_record
        if tf_record is None:
            continue
        for field in _TF_FIELDS:
            current = getattr(tf_record, field)
            if current is not None:
                short = isinstance(current, pycdlib_dates.DirectoryRecordDate)
                setattr(tf_record, field, _DR_DATE if short else _VD_DATE)


def _freeze_modification_dates(iso: Any, out: BinaryIO) -> None:
    """Overwrite the volume modification dates pycdlib wrote with the constant epoch."""
    for vd in _volume_descriptors(iso):
        start = vd.extent_location() * _SECTOR
        out.seek(start)
        header = out.read(_VD_MODIFICATION_DATE_OFFSET)
        if header[1:6] != b"CD001" or header[_VD_CREATION_DATE_OFFSET:] != _EPOCH_VD_DATE:
            raise RuntimeError("pycdlib wrote an unexpected volume descriptor layout")
        out.seek(start + _VD_MODIFICATION_DATE_OFFSET)
        out.write(_EPOCH_VD_DATE)
    out.seek(0, os.SEEK_END)
