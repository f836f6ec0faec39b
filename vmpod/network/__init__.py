"""Pod networking: CNI network namespaces for VM pods, Virtlet style.

* :mod:`vmpod.network.options`: the mode (``user`` or ``cni``) and the CNI directories;
* :mod:`vmpod.network.config`: the first network configuration of the configuration directory;
* :mod:`vmpod.network.plugins`: running one plugin executable (the CNI protocol);
* :mod:`vmpod.network.cni`: ``ADD``/``DEL``/``CHECK`` of a configuration list with ``prevResult`` chaining;
* :mod:`vmpod.network.netns`: named network namespaces;
* :mod:`vmpod.network.podnet`: the tap and bridge in the pod's namespace, the CNI result as the guest's network;
* :mod:`vmpod.network.attach`: one pod's attachment as the store records it, set up and torn down.

See ``docs/networking.md``.
"""

from __future__ import annotations

from vmpod.network.attach import PodNetwork, attach, detach, netns_name
from vmpod.network.config import NetworkConfig, load_network_config
from vmpod.network.errors import CNIPluginError, NetworkError
from vmpod.network.options import NetworkOptions, PodNetworkMode

__all__ = [
    "CNIPluginError",
    "NetworkConfig",
    "NetworkError",
    "NetworkOptions",
    "PodNetwork",
    "PodNetworkMode",
    "attach",
    "detach",
    "load_network_config",
    "netns_name",
]
