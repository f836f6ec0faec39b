"""The content-addressed image store under ``<state_dir>/images/``.

A pull resolves the name (:meth:`vmpod.images.ImageConfig.resolve`), then streams the
bytes into ``images/tmp/<random>`` while hashing them (sha256) in the same pass, fsyncs,
verifies a pinned digest, inspects the file with ``qemu-img info`` (qcow2 and raw only)
and renames it atomically to ``images/sha256/<hex>``.  A failed pull leaves nothing in
the store.  Concurrent pulls of one URL in a process share one download.

A local file is copied (never hard-linked: editing the source later must not change a
running VM's base), and re-used without copying or hashing while its device, inode,
size and mtime are unchanged.  A remote image is re-used by URL unless ``refresh`` is
asked for (``vmpod pull`` does), and by digest whenever the name pins one.

Reference counts come from the pods: an image whose digest a container records as
its ``image_ref`` is in use; :meth:`ImageStore.remove` refuses it and
:meth:`ImageStore.prune` keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import attrs

from vmpod.durable import fsync_directory
from vmpod.errors import ConflictError, NotFoundError, SpecError
from vmpod.hookspecs import ImageSourceSpec
from vmpod.images import (
    IMAGE_PATH,
    ImageConfig,
    ImagePullError,
    Progress,
    ResolvedImage,
    file_path,
    file_stamp,
    inspect_image,
    sha256_file,
    streaming_fetcher,
)
from vmpod.runtime.layout import Layout
from vmpod.runtime.records import ImageRecord
from vmpod.runtime.store import Store

__all__ = ["ImageInfo", "ImageStore"]


@attrs.frozen
class ImageInfo:
    """A stored image with the names (URLs) that gave it and the pods using it."""

    record: ImageRecord
    names: tuple[str, ...]
    users: tuple[str, ...]


class ImageStore:
    """Images by digest under ``<state_dir>/images/``, recorded in the store.

    :param config: how names resolve; None reads :meth:`ImageConfig.from_env` on every
        pull, so edited translation configs apply without a restart (as in Virtlet).
    """

    def __init__(self, layout: Layout, store: Store, sources: dict[str, ImageSourceSpec],
                 config: ImageConfig | None = None) -> None:
        self.layout = layout
        self.store = store
        self.sources = sources
        self.config = config
        self._guard = threading.Lock()
        self._inflight: dict[tuple[str, str], Future[ImageRecord]] = {}
        #: downloads actually started, and pulls that joined one in progress; for diagnostics and tests.
        self.fetches = 0
        self.joined = 0

    def resolve(self, name: str) -> ResolvedImage:
        """What ``name`` stands for under the current configuration."""
        return (self.config or ImageConfig.from_env()).resolve(name)

    def pull(self, name: str, *, refresh: bool = False, progress: Progress | None = None) -> ImageRecord:
        """Make image ``name`` available locally and return its record.

        :param refresh: download a remote image again even when its URL was pulled before.
        :param progress: called with ``(bytes done, total or None)`` while downloading.
        :raises SpecError: for a name no source handles or a file that is not a disk image.
        :raises NotFoundError: when the source has no such image.
        :raises ImagePullError: when the download or the digest check fails.
        """
        resolved = self.resolve(name)
        url = resolved.url
        scheme = urllib.parse.urlsplit(url).scheme
        source = self.sources.get(scheme)
        if source is None:
            raise SpecError(IMAGE_PATH, f"no image source handles {scheme}:// URLs", value=name,
                            accepted="file:///PATH, an absolute path, http(s) URLs or a translated name "
                                     f"(sources: {', '.join(sorted(self.sources)) or 'none'})")
        if resolved.digest:
            present = self._present(resolved.digest)
            if present is not None:
                return present
        stamp = ""
        if scheme == "file":
            path = file_path(url)
            try:
                stamp = file_stamp(path)
            except FileNotFoundError:
                raise NotFoundError(f"image file {path} does not exist") from None
            known = self.store.image_source(url)
            if known is not None and known[1] == stamp:
                present = self._present(known[0])
                if present is not None and (not resolved.digest or present.digest == resolved.digest):
                    return present
        elif not refresh and not resolved.digest:  # a pinned digest not in the store is downloaded
            known = self.store.image_source(url)
            if known is not None:
                present = self._present(known[0])
                if present is not None:
                    return present
        return self._shared((url, resolved.digest), lambda: self._fetch(resolved, source, stamp, progress))

    def _present(self, digest: str) -> ImageRecord | None:
        record = self.store.image(digest)
        return record if record is not None and Path(record.path).exists() else None

    def _shared(self, key: tuple[str, str], fetch: Callable[[], ImageRecord]) -> ImageRecord:
        with self._guard:
            future = self._inflight.get(key)
            owner = future is None
            if future is None:
                future = self._inflight[key] = Future()
            else:
                self.joined += 1
        if not owner:
            return future.result()
        try:
            record = fetch()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(record)
            return record
        finally:
            with self._guard:
                del self._inflight[key]

    def _fetch(self, resolved: ResolvedImage, source: ImageSourceSpec, stamp: str,
               progress: Progress | None) -> ImageRecord:
        with self._guard:
            self.fetches += 1
        self.layout.images_tmp.mkdir(parents=True, exist_ok=True)
        self.layout.images.mkdir(parents=True, exist_ok=True)
        tmp = self.layout.images_tmp / uuid.uuid4().hex
        streamer = streaming_fetcher(source)
        try:
            if streamer is not None:
                with tmp.open("wb") as out:
                    digest = streamer(resolved.url, out, resolved.transport, progress)
                    out.flush()
                    os.fsync(out.fileno())
            else:
                source.fetch(resolved.url, tmp)
                with tmp.open("rb") as f:
                    os.fsync(f.fileno())
                digest = sha256_file(tmp)
            if resolved.digest and digest != resolved.digest:
                raise ImagePullError(f"image digest mismatch: {digest} instead of {resolved.digest} "
                                     f"({resolved.url})")
            fmt, virtual_size = inspect_image(tmp)
            dest = self.layout.images / digest.removeprefix("sha256:")
            size = tmp.stat().st_size
            if not dest.exists():
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
                fsync_directory(self.layout.images)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ImagePullError(f"{resolved.url}: no space left on the device while storing the image "
                                     f"in {self.layout.images_tmp}") from None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        record = ImageRecord(digest=digest, path=str(dest), format=fmt, virtual_size=virtual_size, size=size,
                             created_at=time.time_ns())
        with self.store.transaction() as tx:
            tx.put_image(record)
            tx.put_image_source(resolved.url, digest, stamp)
        stored = self.store.image(digest)
        assert stored is not None
        return stored

    # ---- listing, removal, garbage collection ------------------------------------------

    def users(self) -> dict[str, list[str]]:
        """``digest -> [namespace/pod, ...]`` for every image a pod's container uses."""
        found: dict[str, list[str]] = {}
        for pod in self.store.pods():
            if pod.container is not None and pod.container.image_ref:
                found.setdefault(pod.container.image_ref, []).append(f"{pod.namespace}/{pod.name}")
        return found

    def listing(self) -> list[ImageInfo]:
        """Every stored image, with its names and users, newest first."""
        users = self.users()
        names: dict[str, list[str]] = {}
        for url, digest in self.store.image_sources():
            names.setdefault(digest, []).append(url)
        records = sorted(self.store.images(), key=lambda r: (-r.created_at, r.digest))
        return [ImageInfo(record=r, names=tuple(names.get(r.digest, ())), users=tuple(users.get(r.digest, ())))
                for r in records]

    def find(self, ref: str) -> ImageRecord:
        """The image ``ref`` names: ``sha256:<hex>``, a unique hex prefix (12+ digits) or a pulled name.

        :raises NotFoundError: when nothing (or more than one image) matches.
        """
        text = ref.strip().removeprefix("sha256:")
        if len(text) >= 12 and all(c in "0123456789abcdef" for c in text):
            matches = [r for r in self.store.images() if r.digest.removeprefix("sha256:").startswith(text)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise NotFoundError(f"image {ref} is ambiguous: {len(matches)} images match")
        try:
            resolved = self.resolve(ref)
        except SpecError:
            raise NotFoundError(f"no image {ref} in the store") from None
        digest = resolved.digest
        if not digest:
            known = self.store.image_source(resolved.url)
            digest = known[0] if known is not None else ""
        record = self.store.image(digest) if digest else None
        if record is None:
            raise NotFoundError(f"no image {ref} in the store")
        return record

    def remove(self, ref: str) -> ImageRecord:
        """Remove one image.

        :raises ConflictError: while a pod uses it.
        :raises NotFoundError: when there is no such image.
        """
        record = self.find(ref)
        users = self.users().get(record.digest)
        if users:
            raise ConflictError(f"image {record.digest[:19]} is used by pod(s) {', '.join(users)}: "
                                "delete them first")
        self._delete(record)
        return record

    def prune(self) -> list[ImageRecord]:
        """Remove every image no pod uses (and unfinished fetches); returns the removed images."""
        users = self.users()
        removed = [record for record in self.store.images() if record.digest not in users]
        for record in removed:
            self._delete(record)
        self.sweep()
        return removed

    def _delete(self, record: ImageRecord) -> None:
        with self.store.transaction() as tx:
            tx.delete_image(record.digest)
        with contextlib.suppress(FileNotFoundError):
            Path(record.path).unlink()

    def sweep(self) -> list[Path]:
        """Remove unfinished fetches and image files the store does not know; returns what was removed."""
        removed: list[Path] = []
        known = {record.path for record in self.store.images()}
        with self._guard:
            busy = bool(self._inflight)
        for directory in (self.layout.images_tmp, self.layout.images):
            if not directory.is_dir() or (busy and directory == self.layout.images_tmp):
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
