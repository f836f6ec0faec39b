"""``vmpod images``, ``vmpod pull IMAGE`` and ``vmpod rmi IMAGE...``: the image store from the command line.

``pull`` shows a progress bar when standard error is a terminal and plain lines
(at most one per 10 %) otherwise.  ``images --prune`` removes every image no pod uses.
"""

from __future__ import annotations

import argparse
import sys
import time

from vmpod.cli._runtime import open_runtime
from vmpod.errors import NotFoundError

__all__ = ["ProgressPrinter", "human_size", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``images``, ``pull`` and ``rmi``."""
    images = subparsers.add_parser("images", help="list stored VM images",
                                   description="List the images in the store: digest, format, sizes, the URLs "
                                               "that gave them and the pods using them.")
    images.add_argument("--prune", action="store_true", help="remove every image no pod uses")
    images.add_argument("-q", "--quiet", action="store_true", help="print digests only")
    images.set_defaults(handler=_images)

    pull = subparsers.add_parser("pull", help="download a VM image into the store",
                                 description="Resolve IMAGE (virtlet.cloud/ prefix, translation configs, "
                                             "@sha256: pin) and download it into the store, verified.")
    pull.add_argument("image", metavar="IMAGE")
    _add_translations(pull)
    pull.set_defaults(handler=_pull)

    rmi = subparsers.add_parser("rmi", help="remove VM images from the store",
                                description="Remove images by name, sha256:DIGEST or a unique digest prefix; "
                                            "an image a pod uses is refused.")
    rmi.add_argument("images", nargs="+", metavar="IMAGE")
    _add_translations(rmi)
    rmi.set_defaults(handler=_rmi)


def _add_translations(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-translations", metavar="DIR", default=None,
                        help="directory of translation configs (env VMPOD_IMAGE_TRANSLATIONS; "
                             "default /etc/vmpod/images when it exists)")


def human_size(n: int) -> str:
    """``512B``, ``1.5MiB``, ``2.0GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


class ProgressPrinter:
    """Download progress on stderr: a bar redrawn in place on a terminal, else a line per 10 %."""

    def __init__(self, name: str, *, tty: bool | None = None) -> None:
        self.name = name
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._last_step = -1
        self._last_draw = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        """Report ``done`` bytes of ``total``."""
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < 0.1 and done != total:
                return
            self._last_draw = now
            rate = done / max(now - self.started, 1e-6)
            if total:
                filled = 30 * done // total
                bar = "#" * filled + "-" * (30 - filled)
                text = f"\r{self.name} [{bar}] {100 * done // total:3d}% {human_size(done)}/{human_size(total)}"
            else:
                text = f"\r{self.name} {human_size(done)}"
            sys.stderr.write(f"{text} {human_size(int(rate))}/s\x1b[K")
            sys.stderr.flush()
            return
        step = 10 * done // total if total else done >> 27  # 10 % steps, or every 128 MiB
        if step != self._last_step:
            self._last_step = step
            shown = f"{100 * done // total}% ({human_size(done)}/{human_size(total)})" if total else human_size(done)
            print(f"{self.name}: {shown}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty and self._last_draw:
            sys.stderr.write("\n")


def _images(args: argparse.Namespace) -> int:
    runtime = open_runtime(args, write=args.prune)
    if runtime is None:
        return 0
    with runtime:
        if args.prune:
            for record in runtime.images.prune():
                print(f"deleted: {record.digest}")
            return 0
        infos = runtime.images.listing()
        if args.quiet:
            for info in infos:
                print(info.record.digest)
            return 0
        rows = [("DIGEST", "FORMAT", "VIRTUAL SIZE", "SIZE", "PODS", "NAME")]
        for info in infos:
            rows.append((info.record.digest[:19], info.record.format, human_size(info.record.virtual_size),
                         human_size(info.record.size), str(len(info.users)), ", ".join(info.names) or "<none>"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "   " + row[5])
    return 0


def _config_for(args: argparse.Namespace, runtime: object) -> None:
    from vmpod.images import ImageConfig  # noqa: PLC0415
    from vmpod.runtime import Runtime  # noqa: PLC0415

    assert isinstance(runtime, Runtime)
    if args.image_translations:
        runtime.images.config = ImageConfig.from_env(translations_dir=args.image_translations)


def _pull(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    assert runtime is not None
    with runtime:
        _config_for(args, runtime)
        resolved = runtime.images.resolve(args.image)
        progress = ProgressPrinter(args.image)
        try:
            record = runtime.images.pull(args.image, refresh=True, progress=progress)
        finally:
            progress.finish()
        via = f" (rule {resolved.rule})" if resolved.rule else ""
        print(f"pulled {resolved.url}{via}")
        print(f"{resolved.name}@{record.digest} {record.format} {human_size(record.virtual_size)}")
    return 0


def _rmi(args: argparse.Namespace) -> int:
    runtime = open_runtime(args)
    assert runtime is not None
    missing: list[str] = []
    with runtime:
        _config_for(args, runtime)
        for ref in args.images:
            try:
                record = runtime.images.remove(ref)
            except NotFoundError as exc:
                missing.append(str(exc))
                continue
            print(f"deleted: {record.digest}")
    if missing:
        raise NotFoundError("; ".join(missing))
    return 0
