"""vmpod's qemu backend: VMs as daemonized qemu processes, driven over QMP, with no hypervisor daemon.

Registered under the ``vmpod`` entry-point group as ``qemu`` (see :mod:`vmpod_qemu.plugin`).
Modules: :mod:`~vmpod_qemu.argv` (the pure Machine -> argv function),
:mod:`~vmpod_qemu.backend` (:class:`~vmpod_qemu.backend.QemuBackend`),
:mod:`~vmpod_qemu.supervisor` (the per-machine process that starts qemu and keeps the pod log),
:mod:`~vmpod_qemu.process` (the supervisor's lock, qemu's resource use) and :mod:`~vmpod_qemu.qmp`
(QMP calls).  The serial console -> pod log writer and the process identities are vmpod's
(:mod:`vmpod.consolelog`, :mod:`vmpod.procutil`).

This module imports nothing, so that the supervisor starts fast.
"""

__version__ = "0.1.0"
