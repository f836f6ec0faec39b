"""Bootable guest images that vmpod's tests, demos and backends run.

:func:`build_debian_cloud_guest` builds (once, then caches) a Debian cloud
image with real cloud-init and sshd; see :mod:`vmpod.guests.debian`.

The names are imported lazily so that ``python3 -m vmpod.guests.debian``
does not import its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmpod.guests.debian import build_debian_cloud_guest
    from vmpod.guests.disk import GuestBuildError, default_cache_dir

__all__ = ["GuestBuildError", "build_debian_cloud_guest", "default_cache_dir"]

_MODULES = {
    "GuestBuildError": "vmpod.guests.disk",
    "build_debian_cloud_guest": "vmpod.guests.debian",
    "default_cache_dir": "vmpod.guests.disk",
}


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
