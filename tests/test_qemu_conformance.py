"""The backend contract state machine against real qemu processes (TCG when KVM does not work here).

Every example starts and stops real, daemonized qemu processes under their supervisors; the
machines boot only to the firmware (the conformance machine has a blank disk), so the ACPI
power-off is ignored and ``stop`` exercises the forced path after its timeout.
"""

from __future__ import annotations

from vmpod_qemu.backend import QemuBackend

from vmpod.testing.conformance import make_conformance_test

test_qemu_backend_conforms = make_conformance_test(
    QemuBackend, max_examples=40, stateful_step_count=25, machines=2, stop_timeout=0.3)
