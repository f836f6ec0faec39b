"""Cloud-init seeds for VM pods: the documents, and the NoCloud/ConfigDrive images holding them.

Typical use::

    from vmpod.cloudinit import from_cni_result, generate_seed, write_seed

    documents = generate_seed(pod, from_cni_result(cni_result), adjust=plugins.adjust_seed)
    write_seed(documents, state_dir / "seed.iso")

* :func:`generate_seed` (pure) turns a :class:`~vmpod.model.VMPod`, a
  :class:`NetworkDescription` and a :class:`DiskMap` into
  :class:`SeedDocuments`, following Virtlet's rules with its bugs fixed
  (``docs/cloud-init.md``);
* :func:`write_seed` writes them as an ISO image, atomically
  (:mod:`vmpod.cloudinit.iso`);
* :mod:`vmpod.cloudinit.network` is the network model and its two formats,
  :mod:`vmpod.cloudinit.disks` where volumes appear in the guest,
  :mod:`vmpod.cloudinit.scripts` the symlink and mount scripts.
"""

from __future__ import annotations

from pathlib import Path

from vmpod.cloudinit.disks import DiskMap, GuestDisk, GuestFilesystem, default_disk_map
from vmpod.cloudinit.generate import Adjust, SeedDocuments, generate_seed, render_user_data
from vmpod.cloudinit.iso import CONFIGDRIVE_LABEL, MAX_SEED_BYTES, NOCLOUD_LABEL, build_iso, write_iso
from vmpod.cloudinit.network import (
    DNS,
    Interface,
    IPConfig,
    NetworkDescription,
    Route,
    configdrive_network_data,
    from_cni_result,
    nocloud_network_config,
)

__all__ = [
    "CONFIGDRIVE_LABEL",
    "DNS",
    "MAX_SEED_BYTES",
    "NOCLOUD_LABEL",
    "Adjust",
    "DiskMap",
    "GuestDisk",
    "GuestFilesystem",
    "IPConfig",
    "Interface",
    "NetworkDescription",
    "Route",
    "SeedDocuments",
    "build_iso",
    "build_seed",
    "configdrive_network_data",
    "default_disk_map",
    "from_cni_result",
    "generate_seed",
    "nocloud_network_config",
    "render_user_data",
    "write_iso",
    "write_seed",
]


def build_seed(documents: SeedDocuments) -> bytes:
    """The seed ISO image of ``documents`` (the same documents always give the same bytes)."""
    return build_iso(documents.files(), documents.volume_label)


def write_seed(documents: SeedDocuments, dest: Path) -> None:
    """Write the seed ISO of ``documents`` to ``dest`` atomically: on any failure ``dest`` is untouched.

    :raises SpecError: when the documents cannot be stored (nothing is written).
    :raises OSError: when the file cannot be written.
    """
    write_iso(documents.files(), documents.volume_label, Path(dest))
