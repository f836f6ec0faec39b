"""The pluggy markers: the project name, the hookspec marker and the public ``hookimpl``."""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookimpl", "hookspec"]

#: The pluggy project name and the entry-point group plugins register under.
PROJECT = "vmpod"

hookspec = pluggy.HookspecMarker(PROJECT)

#: Decorate a plugin function with ``@vmpod.hookimpl`` to implement a hook.
hookimpl = pluggy.HookimplMarker(PROJECT)
