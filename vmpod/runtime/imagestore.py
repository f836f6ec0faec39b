"""The content-addressed image store under ``<state_dir>/images/``.

Fetched bytes go to ``images/tmp/``, are hashed (sha256), inspected with
``qemu-img info --output json`` and renamed to ``images/sha256/<hex>``; the
store records the image and which source produced it.  A local file is copied
(never hard-linked: editing the source later must not change a running VM's
base), and re-used without copying or hashing while its device, inode, size
and mtime are unchanged.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
import uuid
from pathlib import Path

from vmpod.errors import NotFoundError, SpecError
from vmpod.hookspecs import ImageSourceSpec
from vmpod.images import IMAGE_PATH, file_path, file_stamp, image_url, inspect_image, sha256_file
from vmpod.runtime.layout import Layout
from vmpod.runtime.records import ImageRecord
from vmpod.runtime.store import Store

__all__ = ["ImageStore"]


class ImageStore:
    """Images by digest under ``<state_dir>/images/``, recorded in the store."""

    def __init__(self, layout: Layout, store: Store, sources: dict[str, ImageSourceSpec]) -> None:
        self.layout = layout
        self.store = store
        self.sources = sources

    def pull(self, name: str) -> ImageRecord:
        """Make image ``name`` available locally and return its record.

        :raises SpecError: for a name no source handles or a file that is not a disk image.
        :raises NotFoundError: when the source has no such image.
        """
        url = image_url(name)
        scheme = urllib.parse.urlsplit(url).scheme
        source = self.sources.get(scheme)
        if source is None:
            raise SpecError(IMAGE_PATH, f"no image source handles {scheme}:// URLs yet", value=name,
                            accepted="file:///PATH or an absolute path to a local qcow2 image "
                                     f"(sources: {', '.join(sorted(self.sources)) or 'none'})")
        stamp = ""
        if scheme == "file":
            path = file_path(url)
            try:
                stamp = file_stamp(path)
            except FileNotFoundError:
                raise NotFoundError(f"image file {path} does not exist") from None
            known = self.store.image_source(url)
            if known is not None and known[1] == stamp:
                record = self.store.image(known[0])
                if record is not None and Path(record.path).exists():
                    return record
        return self._fetch(url, source, stamp)

    def _fetch(self, url: str, source: ImageSourceSpec, stamp: str) -> ImageRecord:
        self.layout.images_tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.layout.images_tmp / uuid.uuid4().hex
        try:
            source.fetch(url, tmp)
            digest = sha256_file(tmp)
            fmt, virtual_size = inspect_image(tmp)
            dest = self.layout.images / digest.removeprefix("sha256:")
            size = tmp.stat().st_size
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        record = ImageRecord(digest=digest, path=str(dest), format=fmt, virtual_size=virtual_size, size=size,
                             created_at=time.time_ns())
        with self.store.transaction() as tx:
            tx.put_image(record)
            if stamp:
                tx.put_image_source(url, digest, stamp)
        stored = self.store.image(digest)
        assert stored is not None
        return stored

    def sweep(self) -> list[Path]:
        """Remove unfinished fetches and image files the store does not know; returns what was removed."""
        removed: list[Path] = []
        known = {record.path for record in self.store.images()}
        for directory in (self.layout.images_tmp, self.layout.images):
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if str(entry) not in known:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                    removed.append(entry)
        # An image row whose file vanished is forgotten, so the next pull fetches it again.
        for record in self.store.images():
            if not Path(record.path).exists():
                with self.store.transaction() as tx:
                    tx.delete_image(record.digest)
        return removed
