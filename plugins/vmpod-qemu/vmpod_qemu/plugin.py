"""The ``vmpod`` entry point of the qemu backend: registers :class:`~vmpod_qemu.backend.QemuBackend` as ``qemu``."""

from __future__ import annotations

from collections.abc import Iterator

import vmpod
from vmpod.backend import Backend, BackendConfig
from vmpod.hookspecs import BackendSpec


def _factory(config: BackendConfig) -> Backend:
    # Imported when the backend is opened, not when vmpod loads its plugins: qemu.qmp pulls in asyncio.
    from vmpod_qemu.backend import QemuBackend  # noqa: PLC0415

    return QemuBackend(config)


@vmpod.hookimpl
def vmpod_backends() -> Iterator[BackendSpec]:
    """The ``qemu`` backend: needs no daemon, so it is the default wherever qemu is installed (priority 10)."""
    yield BackendSpec(
        name="qemu",
        factory=_factory,
        description="daemonized qemu processes driven over QMP (KVM when usable, else TCG); no daemon needed",
        priority=10,
    )
