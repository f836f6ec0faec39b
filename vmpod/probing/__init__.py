"""Readiness and liveness probes of VM pods, evaluated by vmpod itself (no kubelet).

* :mod:`vmpod.probing.checks`: running one probe (``tcpSocket``, ``httpGet``; ``exec`` is
  reported unsupported) against a ``(host, port)`` endpoint, with Kubernetes' semantics;
* :mod:`vmpod.probing.tracker`: kubelet's state machine per probe (initial delay, period,
  success and failure thresholds), pure, driven by an injected clock;
* :mod:`vmpod.probing.status`: the per-pod status file (``pods/<uid>/probes/status.json``), written
  atomically by the prober and read by ``vmpod get`` and ``describe``;
* :mod:`vmpod.probing.prober`: the detached per-pod process that runs the probes on schedule
  and restarts the VM when its liveness probe fails (as the pod's ``restartPolicy`` says);
* :mod:`vmpod.probing.process`: starting, finding and stopping that process.
"""

__all__ = ["LOCK_FILE", "LOG_FILE", "PROBER_FILE", "PROBES_DIR"]

#: The pod's probe directory (``pods/<uid>/probes``) and the prober's files in it.
PROBES_DIR = "probes"
LOCK_FILE = "prober.lock"
PROBER_FILE = "prober.json"
LOG_FILE = "prober.log"
