"""The cloud-init seed of a pod: :func:`vmpod.cloudinit.generate_seed`, adjusted by plugins, written as an ISO.

The runtime calls :func:`write_seed` once per container creation.  In the
``user`` network mode the guest uses DHCP, so no network config is generated;
in the ``cni`` mode the CNI result becomes the guest's static configuration
(:func:`vmpod.network.podnet.describe`).  The disk map is :func:`vmpod.cloudinit.default_disk_map`, the same one
:mod:`vmpod.runtime.builder` gives the backend.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmpod.cloudinit import SeedDocuments, build_seed, default_disk_map, generate_seed
from vmpod.cloudinit.network import NetworkDescription
from vmpod.model import VMPod
from vmpod.plugins import PluginManager

__all__ = ["write_seed"]


def write_seed(pod: VMPod, dest: Path, plugins: PluginManager,
               network: NetworkDescription | None = None) -> SeedDocuments:
    """Generate ``pod``'s documents, pass them through ``vmpod_adjust_seed`` and write the ISO to ``dest``.

    ``network``: the guest's network (CNI mode), or None for DHCP.

    The file is written in place without fsync: the runtime records it before writing
    (reconcile removes an interrupted write) and syncs the filesystem once per pod.

    :raises SpecError: for bad cloud-init input in the pod.
    """
    documents = generate_seed(pod, network, default_disk_map(pod), adjust=plugins.adjust_seed)
    image = build_seed(documents)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(image)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return documents
