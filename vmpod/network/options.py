"""How pods are networked: the mode and where CNI's configuration and plugins are.

``user`` (the default on a standalone node): the backend's user-mode network
(qemu's slirp), no root needed, no pod IP.  ``cni``: every pod gets a network
namespace, the first CNI network configuration of :attr:`NetworkOptions.conf_dir`
is applied to it, and the VM owns the address CNI assigned (see
:mod:`vmpod.network.podnet`).

Each setting comes from the runtime option (``Runtime.open(network=...)``, the
CLI flags ``--network``, ``--cni-conf-dir``, ``--cni-bin-dir``), else the
environment (:data:`MODE_ENV`, :data:`CONF_DIR_ENV`, :data:`BIN_DIR_ENV`), else
the Kubernetes node defaults.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence

import attrs

from vmpod.errors import SpecError

__all__ = [
    "BIN_DIR_ENV",
    "CONF_DIR_ENV",
    "DEFAULT_BIN_DIRS",
    "DEFAULT_CONF_DIR",
    "MODE_ENV",
    "NetworkOptions",
    "PodNetworkMode",
]

MODE_ENV = "VMPOD_NETWORK"
CONF_DIR_ENV = "VMPOD_CNI_CONF_DIR"
BIN_DIR_ENV = "VMPOD_CNI_BIN_DIR"

#: Where a Kubernetes node keeps CNI network configurations.
DEFAULT_CONF_DIR = "/etc/cni/net.d"
#: Where plugins are looked for, in order: Kubernetes nodes' ``/opt/cni/bin``, then Debian's package.
DEFAULT_BIN_DIRS: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")


class PodNetworkMode(enum.StrEnum):
    """How a pod's VM is networked."""

    USER = "user"
    """User-mode networking in the hypervisor (no pod IP)."""
    CNI = "cni"
    """A network namespace per pod, set up by CNI plugins; the VM owns the pod IP."""


@attrs.frozen
class NetworkOptions:
    """The network mode for new pods and the CNI directories.

    :param bin_dirs: directories searched for plugin executables, in order (``CNI_PATH``).
    """

    mode: PodNetworkMode = PodNetworkMode.USER
    conf_dir: str = DEFAULT_CONF_DIR
    bin_dirs: tuple[str, ...] = DEFAULT_BIN_DIRS

    @classmethod
    def resolve(cls, mode: str | None = None, conf_dir: str | None = None,
                bin_dirs: str | Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> NetworkOptions:
        """Options from the given values, else the environment, else the defaults.

        ``bin_dirs`` may be one ``:``-separated string, as ``$VMPOD_CNI_BIN_DIR`` and ``CNI_PATH`` are.

        :raises SpecError: for an unknown mode or an empty directory.
        """
        env = os.environ if environ is None else environ
        raw_mode = mode or env.get(MODE_ENV) or PodNetworkMode.USER.value
        try:
            parsed = PodNetworkMode(raw_mode)
        except ValueError:
            where = "--network" if mode else f"${MODE_ENV}"
            raise SpecError(where, "unknown network mode", value=raw_mode,
                            accepted=", ".join(m.value for m in PodNetworkMode)) from None
        directory = conf_dir or env.get(CONF_DIR_ENV) or DEFAULT_CONF_DIR
        raw_bins = bin_dirs if bin_dirs is not None else env.get(BIN_DIR_ENV) or None
        if raw_bins is None:
            bins = DEFAULT_BIN_DIRS
        elif isinstance(raw_bins, str):
            bins = tuple(d for d in raw_bins.split(":") if d)
        else:
            bins = tuple(d for d in raw_bins if d)
        if not bins:
            raise SpecError("--cni-bin-dir", "no CNI plugin directory given", value=raw_bins,
                            accepted="one or more directories separated by ':'")
        return cls(mode=parsed, conf_dir=directory, bin_dirs=bins)
