"""A minimal image step: resolve an image name, fetch it through an image source, keep it by digest.

Names the runtime accepts in this version:

* ``file:///abs/path/disk.qcow2`` and ``/abs/path/disk.qcow2`` (a local file),
  through the built-in ``file`` source this module registers;
* any ``scheme://...`` URL for which a plugin registered an
  :class:`~vmpod.hookspecs.ImageSourceSpec`;
* Virtlet-style names (``virtlet.cloud/cirros``, ``cloud-images.ubuntu.com/...``)
  mean ``https://<name>``, as in Virtlet; no https source exists yet (a later
  issue adds downloads, digest pins and translation configs), so they fail
  with a :class:`~vmpod.errors.SpecError` that says so.

:class:`vmpod.runtime.imagestore.ImageStore` keeps what the sources fetch,
by digest, under ``<state_dir>/images/``.

Only disk images are accepted: qcow2 without a backing file, or raw images
that start with a partition table (MBR or GPT) or an ISO 9660 volume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from vmpod._markers import hookimpl
from vmpod.errors import NotFoundError, SpecError, VmpodError
from vmpod.hookspecs import ImageSourceSpec

__all__ = ["IMAGE_PATH", "file_path", "file_stamp", "image_url", "inspect_image", "sha256_file", "vmpod_image_sources"]

#: Field path put on image errors (the manifest field the name came from).
IMAGE_PATH = "spec.containers[0].image"

_VIRTLET_PREFIX = "virtlet.cloud/"
_CHUNK = 1 << 20
_QEMU_IMG_TIMEOUT = 60


def image_url(name: str) -> str:
    """The URL an image name stands for (``/x`` -> ``file:///x``, ``virtlet.cloud/n`` -> ``https://n``)."""
    name = name.strip()
    if not name:
        raise SpecError(IMAGE_PATH, "empty image name", accepted="file:///PATH, an absolute path or a URL")
    if name.startswith("/"):
        return Path(name).absolute().as_uri()
    if "://" in name:
        return name
    return "https://" + name.removeprefix(_VIRTLET_PREFIX)


def _fetch_file(url: str, dest: Path) -> None:
    source = file_path(url)
    try:
        with source.open("rb") as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
    except FileNotFoundError:
        raise NotFoundError(f"image file {source} does not exist") from None
    except IsADirectoryError:
        raise SpecError(IMAGE_PATH, "not a file", value=str(source), accepted="a disk image file") from None
    except PermissionError as exc:
        raise SpecError(IMAGE_PATH, f"cannot read the image: {exc.strerror}", value=str(source)) from None


def file_path(url: str) -> Path:
    """The local path of a ``file://`` URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise SpecError(IMAGE_PATH, "not a local file URL", value=url, accepted="file:///ABSOLUTE/PATH")
    return Path(urllib.parse.unquote(parsed.path))


@hookimpl
def vmpod_image_sources() -> Iterator[ImageSourceSpec]:
    """The built-in ``file`` source: local files by ``file://`` URL."""
    yield ImageSourceSpec(name="file", schemes=("file",), fetch=_fetch_file)


def inspect_image(path: Path) -> tuple[str, int]:
    """``(format, virtual size)`` of the disk image at ``path``, read with ``qemu-img info``.

    :raises SpecError: when the file is not a disk image vmpod can boot from.
    """
    try:
        result = subprocess.run(["qemu-img", "info", "--output", "json", "-U", str(path)], capture_output=True,
                                text=True, timeout=_QEMU_IMG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise VmpodError("qemu-img is not installed (Debian package qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise VmpodError(f"qemu-img info {path} took more than {_QEMU_IMG_TIMEOUT} s") from None
    if result.returncode != 0:
        raise SpecError(IMAGE_PATH, f"not a readable disk image: {result.stderr.strip()}")
    info = json.loads(result.stdout)
    fmt = str(info.get("format", ""))
    size = int(info.get("virtual-size", 0))
    if fmt == "qcow2":
        if info.get("backing-filename"):
            raise SpecError(IMAGE_PATH, "the qcow2 image has a backing file of its own",
                            value=info["backing-filename"],
                            accepted="a standalone image (flatten it with qemu-img convert -O qcow2)")
    elif fmt == "raw":
        if not _looks_like_disk(path):
            raise SpecError(IMAGE_PATH, "not a disk image (no partition table, no ISO 9660 volume)",
                            accepted="a qcow2 image, or a raw disk with an MBR/GPT partition table")
    else:
        raise SpecError(IMAGE_PATH, f"unsupported image format {fmt!r}",
                        accepted="qcow2 or raw (convert with qemu-img convert -O qcow2)")
    if size <= 0 or size % 512:
        raise SpecError(IMAGE_PATH, "the image's virtual size is not a positive multiple of 512", value=size)
    return fmt, size


def _looks_like_disk(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(512)
        f.seek(32769)
        iso = f.read(5)
    return (len(head) == 512 and head[510:512] == b"\x55\xaa") or iso == b"CD001"


def file_stamp(path: Path) -> str:
    """A string that changes when the file at ``path`` is replaced or modified."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
