"""File helpers of the runtime: removing what a pod owns, flushing a filesystem once."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

__all__ = ["remove_path", "sync_filesystem"]

_libc = ctypes.CDLL(None, use_errno=True)


def sync_filesystem(path: Path) -> None:
    """Flush every file and directory of the filesystem holding ``path`` to disk (``syncfs``).

    One call per created pod replaces an fsync per file and per directory: on ext4 each
    fsync of new metadata costs a journal commit, so this is several times cheaper.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def remove_path(path: Path) -> None:
    """Remove a file or a whole directory tree (gone is fine; symlinks are removed, never followed)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
