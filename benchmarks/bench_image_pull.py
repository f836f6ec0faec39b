"""Image pull throughput against ``curl`` of the same file from the same local server, in the same run.

A sparse raw image (default 1 GiB, with an MBR signature so it is a disk) is served
over HTTP on 127.0.0.1 by the test server (``socket.sendfile``, in its own process).  Each round, in
alternating order, downloads it:

* with ``curl -sS -o FILE`` into the sink directory;
* with :func:`vmpod.images.download` (sha256 computed in the same pass) into a file
  in the same sink directory -- the like-for-like comparison;
* with a whole ``ImageStore.pull`` (download + hash, fsync, ``qemu-img info``, rename),
  whose extra cost is reported separately.

It prints each throughput (median of the rounds) and the ratio vmpod/curl.

Usage::

    python3 benchmarks/bench_image_pull.py [--size-mib 1024] [--rounds 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmpod.images import ImageConfig, download
from vmpod.plugins import get_plugin_manager
from vmpod.runtime.imagestore import ImageStore
from vmpod.runtime.layout import Layout
from vmpod.runtime.store import Store


def _image(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.write(b"\x00" * 510 + b"\x55\xaa")
        f.truncate(size)
    return path


def _timed(action: object) -> float:
    assert callable(action)
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    """Run the benchmark and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp", help="where the served file and the downloads go")
    args = parser.parse_args()
    size = args.size_mib << 20
    curl = shutil.which("curl")
    if curl is None:
        print("curl is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        served = work / "served"
        served.mkdir()
        _image(served / "disk.img", size)
        sink = work / "sink"
        sink.mkdir()
        times: dict[str, list[float]] = {"curl": [], "vmpod download": [], "vmpod pull": []}
        # The server runs in its own process, so it competes with neither client for the GIL.
        root = Path(__file__).resolve().parent.parent
        with subprocess.Popen([sys.executable, "-m", "tests.support.imageserver", str(served)], cwd=root,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
            assert server.stdout is not None
            assert server.stdin is not None
            url = f"http://127.0.0.1:{server.stdout.readline().strip()}/files/disk.img"

            def run_curl() -> None:
                subprocess.run([curl, "-sS", "--fail", "-o", str(sink / "curl.img"), url], check=True)

            def run_download() -> None:
                with (sink / "vmpod.img").open("wb") as out:
                    download(url, out)

            def run_pull() -> None:
                layout = Layout(work / "state")
                shutil.rmtree(layout.root, ignore_errors=True)
                layout.make()
                store = Store.open(layout.db)
                try:
                    images = ImageStore(layout, store, get_plugin_manager(load_entrypoints=False).image_sources(),
                                        ImageConfig())
                    images.pull(url)
                finally:
                    store.close()

            actions = {"curl": run_curl, "vmpod download": run_download, "vmpod pull": run_pull}
            run_download()  # warm the page cache of the served file
            for i in range(args.rounds):
                order = list(actions) if i % 2 == 0 else list(reversed(actions))
                for name in order:
                    times[name].append(_timed(actions[name]))
                    for f in sink.iterdir():
                        f.unlink()
            server.stdin.close()
    mib = size / (1 << 20)
    block = bytes(1 << 20)
    digest = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(256):
        digest.update(block)
    sha_rate = 256 / (time.perf_counter() - start)
    rates = {name: mib / statistics.median(t) for name, t in times.items()}
    print(f"image: {mib:.0f} MiB sparse raw over http://127.0.0.1, sink {args.dir}, {args.rounds} rounds (median)")
    for name, rate in rates.items():
        print(f"  {name:15s} {rate:8.0f} MiB/s   runs: {', '.join(f'{t:.2f}s' for t in times[name])}")
    print(f"  sha256 alone    {sha_rate:8.0f} MiB/s   (one core: the ceiling of any pull that verifies digests)")
    print(f"ratio vmpod download (sha256 in the same pass) / curl: {rates['vmpod download'] / rates['curl']:.2f}")
    print(f"ratio vmpod pull (+fsync, qemu-img info, rename) / curl: {rates['vmpod pull'] / rates['curl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
