"""The ``vmpod`` entry point of the fake backend: registers :class:`~vmpod_fake.backend.FakeBackend` as ``fake``."""

from __future__ import annotations

from collections.abc import Iterator

import vmpod
from vmpod.hookspecs import BackendSpec
from vmpod_fake.backend import FakeBackend


@vmpod.hookimpl
def vmpod_backends() -> Iterator[BackendSpec]:
    """The ``fake`` backend; lowest priority, so it is the default only when nothing else is installed."""
    yield BackendSpec(
        name=FakeBackend.name,
        factory=FakeBackend,
        description="simulated hypervisor for tests: no guest runs, machines live in a JSON file",
        priority=-100,
    )
