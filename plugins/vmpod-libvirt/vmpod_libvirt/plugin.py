"""The ``vmpod`` entry point of the libvirt backend: registers :class:`~vmpod_libvirt.backend.LibvirtBackend`."""

from __future__ import annotations

from collections.abc import Iterator

import vmpod
from vmpod.backend import Backend, BackendConfig
from vmpod.errors import BackendUnavailable
from vmpod.hookspecs import BackendSpec


def _factory(config: BackendConfig) -> Backend:
    # Imported when the backend is opened, not when vmpod loads its plugins: libvirt-python is a
    # compiled module that may be missing (then the backend is unavailable, vmpod still works).
    try:
        from vmpod_libvirt.backend import LibvirtBackend  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailable(f"libvirt: libvirt-python is not installed ({exc}): "
                                 "pip install libvirt-python (needs libvirt-dev and pkg-config)") from exc
    return LibvirtBackend(config)


@vmpod.hookimpl
def vmpod_backends() -> Iterator[BackendSpec]:
    """The ``libvirt`` backend.

    Its priority is below ``qemu``'s: installing it does not make it the default, because it
    needs a configured libvirtd; choose it with ``--backend libvirt`` or ``VMPOD_BACKEND=libvirt``.
    """
    yield BackendSpec(
        name="libvirt",
        factory=_factory,
        description="libvirt domains (Virtlet's model; KVM when usable, else TCG); option uri (default "
                    "qemu:///system)",
        priority=5,
    )
