"""Where vmpod keeps its files under the state directory.

::

    <state_dir>/
      vmpod.db, vmpod.db-wal, vmpod.db-shm   the store (SQLite, WAL)
      vmpod.lock                              held by the one process that may change the store
      images/sha256/<hex>                     image data, content-addressed
      images/tmp/                             images being fetched
      pods/<uid>/                             one directory per pod: everything it owns
        root.qcow2                            the root overlay
        seed.iso                              the cloud-init seed
        volumes/<volume>/                     files volume handlers create
        run/                                  the backend's per-machine files (pidfile, sockets)
        probes/                               probe status and the pod's prober (vmpod.probing), with probes only
      logs/<namespace>_<name>_<uid>_<container>.log   console log, CRI format
      backends/<name>/                        each backend's own files (never touched by the runtime)

Every file under ``pods/`` and ``logs/`` is recorded in the store as an
artefact before it is created, so reconcile can tell leftovers from live files.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

__all__ = ["STATE_DIR_ENV", "Layout", "default_state_dir"]

#: Environment variable naming the state directory.
STATE_DIR_ENV = "VMPOD_STATE_DIR"


def default_state_dir() -> Path:
    """``$VMPOD_STATE_DIR``, else ``/var/lib/vmpod`` for root, else ``$XDG_DATA_HOME/vmpod``."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/vmpod")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "vmpod"


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).absolute()


@attrs.frozen
class Layout:
    """Paths under one state directory (absolute)."""

    root: Path = attrs.field(converter=_absolute)

    @property
    def db(self) -> Path:
        """The store file."""
        return self.root / "vmpod.db"

    @property
    def lock(self) -> Path:
        """The writer lock file."""
        return self.root / "vmpod.lock"

    @property
    def images(self) -> Path:
        """Content-addressed image data."""
        return self.root / "images" / "sha256"

    @property
    def images_tmp(self) -> Path:
        """Images being fetched."""
        return self.root / "images" / "tmp"

    @property
    def pods(self) -> Path:
        """Parent of every pod directory."""
        return self.root / "pods"

    @property
    def logs(self) -> Path:
        """Parent of every pod's log directory."""
        return self.root / "logs"

    def pod_dir(self, uid: str) -> Path:
        """The directory holding everything pod ``uid`` owns."""
        return self.pods / uid

    def log_file(self, namespace: str, name: str, uid: str, container: str) -> Path:
        """The console log of a pod's container (one flat file per container: no directory to make)."""
        return self.logs / f"{namespace}_{name}_{uid}_{container}.log"

    def make(self) -> None:
        """Create the top-level directories."""
        for path in (self.root, self.images, self.images_tmp, self.pods, self.logs):
            path.mkdir(parents=True, exist_ok=True)
