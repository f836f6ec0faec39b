"""Where a guest port of a pod is reached from the host, for probes (and anything else local).

* **user-mode networking** (no pod IP): the guest is reachable only through qemu's loopback
  port forwards.  At create time every TCP port a probe uses and every ``containerPort``
  without a ``hostPort`` gets a forward from a free loopback port, chosen then and recorded in
  the machine (:func:`loopback_forwards`); a ``containerPort`` with a ``hostPort`` keeps its
  own forward.  :func:`pod_endpoint` returns ``127.0.0.1:<host port>``.
* **CNI** (the pod record has a ``pod_ip``): ``<pod ip>:<port>``.

A probe's named port resolves through the ``containerPorts`` names, as in Kubernetes; a name
that no port has is a :class:`~vmpod.errors.SpecError` when the container is created.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from vmpod.errors import SpecError
from vmpod.machine import Machine, NetworkMode, PortForward
from vmpod.model import ExecAction, Probe, TCPSocketAction, VMPod
from vmpod.runtime.records import PodRecord

__all__ = ["forwarded_ports", "loopback_forwards", "pod_endpoint", "probe_ports", "resolve_port"]

_LOOPBACK = "127.0.0.1"


def resolve_port(pod: VMPod, port: int | str, field: str) -> int:
    """The port number of ``port`` (a number, or the name of a ``containerPort``).

    :raises SpecError: naming ``field`` when no ``containerPort`` has that name.
    """
    if isinstance(port, int):
        return port
    for declared in pod.container.ports:
        if declared.name == port:
            return declared.container_port
    names = ", ".join(p.name for p in pod.container.ports if p.name) or "none"
    raise SpecError(field, "the probe names a port no containerPort has", value=port,
                    accepted=f"a port number or a containerPorts name ({names})")


def _probes(pod: VMPod) -> Iterator[tuple[str, Probe]]:
    container = pod.container
    if container.readiness_probe is not None:
        yield "readinessProbe", container.readiness_probe
    if container.liveness_probe is not None:
        yield "livenessProbe", container.liveness_probe


def probe_ports(pod: VMPod) -> tuple[int, ...]:
    """The guest ports the pod's tcpSocket/httpGet probes use (names resolved); :class:`SpecError` for a bad name."""
    ports: list[int] = []
    for key, probe in _probes(pod):
        handler = probe.handler
        if isinstance(handler, ExecAction) or handler.host:
            continue  # exec needs no port; an explicit host is reached directly
        kind = "tcpSocket" if isinstance(handler, TCPSocketAction) else "httpGet"
        port = resolve_port(pod, handler.port, f"spec.containers[0].{key}.{kind}.port")
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def forwarded_ports(pod: VMPod) -> tuple[tuple[str, int], ...]:
    """``(protocol, guest port)`` pairs that get a loopback forward with a host port chosen by vmpod."""
    own = {(p.protocol.lower(), p.container_port) for p in pod.container.ports if p.host_port}
    wanted: list[tuple[str, int]] = []
    for pair in [*(("tcp", port) for port in probe_ports(pod)),
                 *((p.protocol.lower(), p.container_port) for p in pod.container.ports if not p.host_port)]:
        if pair not in own and pair not in wanted and pair[0] in ("tcp", "udp"):
            wanted.append(pair)
    return tuple(wanted)


def loopback_forwards(pod: VMPod) -> tuple[PortForward, ...]:
    """A forward from a free loopback port for each of :func:`forwarded_ports` (the ports are chosen now).

    A port is free when the kernel hands it out for an ephemeral bind; all are held until every
    one is chosen, so they differ.  Another process may still take one before the VM starts:
    the start then fails with qemu's message.
    """
    sockets: list[socket.socket] = []
    forwards: list[PortForward] = []
    try:
        for protocol, guest_port in forwarded_ports(pod):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((_LOOPBACK, 0))
            forwards.append(PortForward(guest_port=guest_port, host_port=sock.getsockname()[1], protocol=protocol,
                                        host_address=_LOOPBACK))
    finally:
        for sock in sockets:
            sock.close()
    return tuple(forwards)


def pod_endpoint(record: PodRecord, machine: Machine | None, port: int, protocol: str = "tcp") -> tuple[str, int]:
    """``(host, port)`` where guest port ``port`` of the pod is reached from this host.

    :raises SpecError: in user-mode networking, when the port has no forward (a pod created
        before vmpod forwarded probe ports: recreate it).
    """
    if record.pod_ip:  # CNI networking
        return record.pod_ip, port
    if machine is not None:
        for nic in machine.nics:
            if nic.mode is not NetworkMode.USER:
                continue
            for forward in nic.forwards:
                if forward.guest_port == port and forward.protocol == protocol:
                    return forward.host_address or _LOOPBACK, forward.host_port
    raise SpecError("spec.containers[0].ports", f"guest port {port} of pod {record.full_name} has no port forward "
                    "and the pod has no IP", value=port,
                    accepted="a port a probe uses or a containerPort (forwarded when the pod is created)")
