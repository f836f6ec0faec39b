"""The backend contract state machine against the real libvirt backend: real domains on a real libvirtd.

libvirtd and virtlogd are started for the tests when none runs (:func:`vmpod_libvirt.testing.ensure_daemons`).
The machines boot only to the firmware (the conformance machine has a blank disk), so the ACPI
power button is ignored and ``stop`` takes the forced path after its timeout.  Few lifecycles:
every start and stop is a real qemu process under libvirt (TCG when KVM does not work here).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmpod_libvirt.backend import LibvirtBackend
from vmpod_libvirt.testing import Daemons, ensure_daemons, shared_dir

from vmpod.accel import detect_accelerator
from vmpod.backend import Backend, BackendConfig
from vmpod.errors import BackendError, BackendUnavailable
from vmpod.machine import Machine
from vmpod.plugins import PluginManager
from vmpod.testing.conformance import backend_conformance, default_machine, run_conformance


@pytest.fixture(scope="module")
def libvirtd() -> Daemons:
    """libvirtd and virtlogd, started when none runs."""
    return ensure_daemons()


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """Where the state machine makes its state directories: reachable by libvirt's qemu user."""
    path = shared_dir("vmpod-libvirt-conformance-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def reachable_machine(name: str, pod_dir: Path) -> Machine:
    """The default conformance machine; its state directory (``mkdtemp``'s, mode 0700) opened to libvirt's qemu user."""
    machine = default_machine(name, pod_dir)
    pod_dir.parent.parent.chmod(0o755)
    return machine


def test_libvirt_backend_conforms(libvirtd: Daemons, base_dir: Path) -> None:
    conformance = backend_conformance(LibvirtBackend, make_machine=reachable_machine, machines=2, stop_timeout=0.3,
                                      base_dir=str(base_dir), options={"uri": libvirtd.uri})
    run_conformance(conformance, max_examples=15, stateful_step_count=15)


@pytest.mark.vmpod_entrypoints
def test_registered_through_the_vmpod_entry_point(plugin_manager: PluginManager, libvirtd: Daemons,
                                                   state_dir: Path) -> None:
    """vmpod finds the backend as a third party's: the ``vmpod`` entry point of the vmpod-libvirt distribution."""
    spec = plugin_manager.backend_spec("libvirt")
    # qemu needs no daemon, so it stays the default backend; libvirt is chosen explicitly.
    assert spec.priority < plugin_manager.backend_spec("qemu").priority, "installing libvirt keeps qemu the default"
    backend = plugin_manager.create_backend("libvirt", BackendConfig(state_dir=str(state_dir)))
    try:
        assert isinstance(backend, LibvirtBackend)
        assert isinstance(backend, Backend)
        capabilities = backend.capabilities()
        assert capabilities.accelerator == detect_accelerator()
        assert capabilities.max_disks == {"scsi": 26, "virtio": 21}
        assert f"domain type {'kvm' if detect_accelerator() == 'kvm' else 'qemu'}" in capabilities.notes
    finally:
        backend.close()
    assert sorted(p.relative_to(state_dir) for p in state_dir.rglob("*")) == [], "opening made files"


def test_unreachable_libvirtd_is_backend_unavailable(state_dir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cannot connect to qemu:///system"):
        LibvirtBackend(BackendConfig(state_dir=str(state_dir),
                                     options={"uri": "qemu:///system?socket=/nonexistent/libvirt-sock"}))
    assert time.monotonic() - started < 5, "opening must not wait for an absent libvirtd"
    with pytest.raises(BackendError, match="option accel='hvf'"):
        LibvirtBackend(BackendConfig(state_dir=str(state_dir), options={"accel": "hvf"}))
