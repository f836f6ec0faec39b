"""One pod's CNI attachment: what the store records, and setting it up and tearing it down.

:class:`PodNetwork` is recorded *before* anything is made (the namespace
name, the CNI container id and the network configuration), so a crash at any
point leaves enough to run ``DEL`` and remove the namespace; the ``ADD``
result and the :class:`~vmpod.network.podnet.PodLink` are added once known.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from vmpod.network import cni, netns, podnet
from vmpod.network.config import NetworkConfig
from vmpod.network.errors import CNIPluginError
from vmpod.network.plugins import Invocation

__all__ = ["PodNetwork", "attach", "detach", "netns_name"]


def netns_name(store_id: str, pod_uid: str) -> str:
    """``vmpod-<store id prefix>-<pod uid>``: unique per pod even when two state directories share a node."""
    return f"vmpod-{store_id[:8]}-{pod_uid}"


@attrs.frozen
class PodNetwork:
    """A pod's CNI attachment as the store keeps it.

    :param netns: the network namespace's name (``/run/netns/<netns>``).
    :param container_id: ``CNI_CONTAINERID`` (the namespace name: unique per node).
    :param config: the :class:`~vmpod.network.config.NetworkConfig` used for ``ADD``, as JSON, so that
        ``DEL`` runs the same plugins even if the configuration directory changed since.
    :param result: the ``ADD`` result as JSON, ``""`` until it is known.
    :param link: the :class:`~vmpod.network.podnet.PodLink` as JSON, ``""`` until it is made.
    :param pod_ip: the address the VM owns.
    """

    pod_uid: str
    netns: str
    container_id: str
    config: str
    ifname: str = "eth0"
    result: str = ""
    link: str = ""
    pod_ip: str = ""

    @property
    def netns_path(self) -> str:
        """The namespace's path."""
        return netns.path(self.netns)

    def network_config(self) -> NetworkConfig:
        """The recorded configuration list."""
        return NetworkConfig.from_json(self.config)

    def result_data(self) -> dict[str, Any] | None:
        """The recorded ``ADD`` result, or None."""
        data = json.loads(self.result) if self.result else None
        return data if isinstance(data, dict) else None

    def pod_link(self) -> podnet.PodLink | None:
        """The recorded plumbing, or None."""
        return podnet.PodLink.from_json(self.link) if self.link else None

    def invocation(self, bin_dirs: Sequence[str]) -> Invocation:
        """The CNI call parameters for this attachment."""
        return Invocation(container_id=self.container_id, netns=self.netns_path, ifname=self.ifname,
                          bin_dirs=tuple(bin_dirs))


def attach(network: PodNetwork, bin_dirs: Sequence[str]) -> PodNetwork:
    """Make the namespace, ``ADD`` the network, plumb the tap; ``network`` with result, link and pod IP.

    When a plugin's ``ADD`` fails, ``DEL`` runs at once (as the kubelet does); a plugin that rejects
    its configuration for ``DEL`` with the very error it gave for ``ADD`` made nothing, so that
    counts as undone too.  The error then has ``released`` set: nothing is left.  Otherwise the
    caller runs :func:`detach` (which tolerates every partial state), as it would after a crash.

    :raises NetworkError: for any failure.
    """
    netns.create(network.netns)
    config, invocation = network.network_config(), network.invocation(bin_dirs)
    try:
        result = cni.add(config, invocation)
    except CNIPluginError as failed:
        try:
            cni.delete(config, invocation, None)
        except CNIPluginError as again:
            if (again.plugin, again.msg) != (failed.plugin, failed.msg):
                raise failed from again
        netns.delete(network.netns)
        failed.released = True
        raise
    link = podnet.plumb(network.netns, network.ifname)
    description = podnet.describe(result, link)
    return attrs.evolve(network, result=json.dumps(result, sort_keys=True), link=link.to_json(),
                        pod_ip=podnet.pod_ip(description))


def detach(network: PodNetwork, bin_dirs: Sequence[str]) -> None:
    """Unplumb, ``DEL`` the network (with the recorded result), remove the namespace.  Idempotent.

    :raises NetworkError: when a plugin's ``DEL`` fails (the namespace is kept so that a retry can run it).
    """
    link = network.pod_link()
    if link is not None:
        podnet.unplumb(network.netns, link)
    cni.delete(network.network_config(), network.invocation(bin_dirs), network.result_data())
    netns.delete(network.netns)
