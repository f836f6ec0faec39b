"""The runtime's side of pod networking: choosing, recording, attaching and detaching a pod's CNI network.

In the ``cni`` network mode (:class:`~vmpod.network.NetworkOptions`) creating a
pod's container follows the runtime's protocol:

1. **before the intent** (:func:`plan_network`): the backend must run machines in a
   pod network namespace (``cni`` in its capabilities' ``network_modes``), the
   configuration directory must hold a valid configuration and every plugin it
   names must exist; otherwise a clear error and nothing is made;
2. **intent**: the :class:`~vmpod.network.PodNetwork` row (namespace name, CNI
   container id, the configuration used) is committed with the ``create``
   operation, *before* the namespace is made and ``ADD`` runs;
3. **side effects** (:func:`attach_network`): namespace, ``ADD``, tap and bridge;
   the result and the pod IP are recorded; the VM's NIC is a tap in the namespace;
4. **teardown** (:func:`detach_network`, from an undone create, a delete, or reconcile
   finishing either after a crash): unplumb, ``DEL`` with the recorded result, remove
   the namespace, then forget the row.

The network lives as long as the pod's VM container: removing the container tears it down
and creating it again attaches it again.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vmpod.cloudinit.network import NetworkDescription
from vmpod.errors import SpecError
from vmpod.machine import NetworkMode, Nic
from vmpod.network import (
    NetworkError,
    PodNetwork,
    PodNetworkMode,
    attach,
    detach,
    load_network_config,
    netns_name,
    podnet,
)
from vmpod.network.plugins import find_plugin

if TYPE_CHECKING:
    from vmpod.runtime.records import PodRecord
    from vmpod.runtime.runtime import Runtime

__all__ = ["CNI_CAPABILITY", "attach_network", "detach_network", "plan_network"]

#: The ``network_modes`` entry of a backend that can run a machine inside the pod's network namespace.
CNI_CAPABILITY = "cni"


def plan_network(runtime: Runtime, record: PodRecord) -> PodNetwork | None:
    """The attachment to record for a new container of ``record`` (None in ``user`` mode).

    :raises SpecError: when the pod's backend cannot run VMs in a network namespace.
    :raises NetworkError: for a missing or bad CNI configuration or a missing plugin.
    """
    options = runtime.network
    if options.mode is not PodNetworkMode.CNI:
        return None
    if os.geteuid() != 0:
        raise SpecError("network", "the cni network mode needs root (network namespaces, CNI plugins)",
                        value="cni", accepted="network mode user (--network user) when not root")
    capabilities = runtime.capabilities(record.backend)
    if CNI_CAPABILITY not in capabilities.network_modes:
        raise SpecError("network", f"the {record.backend} backend cannot run a VM in the pod's network namespace "
                        f"(its network modes: {', '.join(capabilities.network_modes) or 'none'})", value="cni",
                        accepted="network mode user (--network user), or a backend with cni in its network modes "
                        "(qemu)")
    config = load_network_config(options.conf_dir)
    for plugin in config.plugins:
        find_plugin(str(plugin["type"]), options.bin_dirs)
    name = netns_name(runtime.store.store_id, record.uid)
    return PodNetwork(pod_uid=record.uid, netns=name, container_id=name, config=config.to_json())


def attach_network(runtime: Runtime, network: PodNetwork) -> tuple[Nic, NetworkDescription]:
    """Attach the recorded ``network`` and record the result; the VM's NIC and the guest's network.

    :raises NetworkError: for any failure (the caller's undo runs :func:`detach_network`).
    """
    try:
        attached = attach(network, runtime.network.bin_dirs)
    except NetworkError as exc:
        if exc.released:  # undone already: nothing for the caller's undo to tear down
            with runtime.store.transaction(durable=False) as tx:
                tx.delete_network(network.pod_uid)
        raise
    with runtime.store.transaction(durable=False) as tx:
        tx.put_network(attached)
    link = attached.pod_link()
    result = attached.result_data()
    assert link is not None
    assert result is not None
    nic = Nic(mac=link.vm_mac, mode=NetworkMode.TAP, mtu=link.mtu, tap=link.tap, netns=attached.netns_path)
    return nic, podnet.describe(result, link)


def detach_network(runtime: Runtime, uid: str) -> bool:
    """Tear down pod ``uid``'s recorded network, if it has one (the row stays: the caller's outcome removes it).

    :returns: whether there was one.
    :raises NetworkError: when ``DEL`` fails (the operation stays open; the next call or reconcile retries).
    """
    network = runtime.store.network(uid)
    if network is None:
        return False
    detach(network, runtime.network.bin_dirs)
    return True
