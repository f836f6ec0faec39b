"""The plugin module named by the ``vmpod`` entry point: it registers :class:`SleepBackend`."""

from __future__ import annotations

from collections.abc import Iterator

import vmpod
from vmpod.hookspecs import BackendSpec
from vmpod_example_backend.backend import SleepBackend


@vmpod.hookimpl
def vmpod_backends() -> Iterator[BackendSpec]:
    """Provide the ``sleep`` backend (low priority: never the default over a real hypervisor)."""
    yield BackendSpec(name=SleepBackend.name, factory=SleepBackend,
                      description="example backend: each machine is a sleep process", priority=-50)
