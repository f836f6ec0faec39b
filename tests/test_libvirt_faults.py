"""The libvirt backend under faults and bad input: libvirtd killed while domains run, somebody else's domain
next to vmpod's, machines libvirt must not get.

The domains here boot only to the firmware (blank disks): cheap, and what matters is the domain's
life, not the guest's.  libvirtd and virtlogd are started for the tests when none runs.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from vmpod_libvirt import connection as lv
from vmpod_libvirt.backend import LibvirtBackend
from vmpod_libvirt.records import backend_files
from vmpod_libvirt.testing import (
    Daemons,
    ensure_daemons,
    kill_libvirtd,
    libvirtd_started_by_tests,
    shared_dir,
    start_libvirtd,
)

from tests.support.qemu import pids_mentioning
from vmpod.backend import BackendConfig, MachineState
from vmpod.errors import BackendError, BackendUnavailable, ConflictError, SpecError
from vmpod.machine import MARKER_LABEL, Disk, DiskFormat, DiskRole, Machine
from vmpod.model import DiskDriver
from vmpod.runtime.builder import STORE_LABEL
from vmpod.runtime.runtime import Runtime
from vmpod.testing.conformance import default_machine


@pytest.fixture(scope="module")
def libvirtd() -> Daemons:
    return ensure_daemons()


@pytest.fixture
def base(libvirtd: Daemons) -> Iterator[Path]:
    path = shared_dir("vmpod-libvirt-faults-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def prefix() -> str:
    return f"vmpodft{uuid.uuid4().hex[:6]}"


@pytest.fixture
def backend(base: Path, libvirtd: Daemons, prefix: str) -> Iterator[LibvirtBackend]:
    opened = LibvirtBackend(BackendConfig(state_dir=str(base / "state"), options={"uri": libvirtd.uri}))
    yield opened
    for info in opened.list():
        if info.name.startswith(prefix):
            opened.destroy(info.name)
    opened.close()


def machine(base: Path, name: str, **labels: str) -> Machine:
    return attrs.evolve(default_machine(name, base / "state" / "pods" / name),
                        labels={MARKER_LABEL: "true", **labels})


def qemu_of(name: str) -> list[int]:
    """The qemu process of domain ``name`` (libvirt names the guest on qemu's command line)."""
    return pids_mentioning(f"guest={name},")


def test_libvirtd_killed_and_restarted_while_domains_run(backend: LibvirtBackend, base: Path, libvirtd: Daemons,
                                                         prefix: str) -> None:
    if not libvirtd_started_by_tests():
        pytest.skip("the running libvirtd was not started by vmpod's test tooling: the test does not kill it")
    running, stopped, created = (f"{prefix}-{n}" for n in ("run", "stop", "new"))
    for name in (running, stopped, created):
        backend.create(machine(base, name))
    for name in (running, stopped):
        backend.start(name)
    backend.stop(stopped, 0.2)
    before = {name: backend.status(name) for name in (running, stopped, created)}
    listed_before = {i.name: i for i in backend.list() if i.name.startswith(prefix)}
    (qemu,) = qemu_of(running)
    impatient = LibvirtBackend(BackendConfig(state_dir=str(base / "state"),
                                             options={"uri": libvirtd.uri, "reconnect_timeout": "0.5"}))

    kill_libvirtd()
    time.sleep(0.5)
    assert qemu_of(running) == [qemu], "the domain's qemu died with libvirtd"
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        impatient.status(running)
    impatient.close()

    # libvirtd comes back while the backend is waiting for it: the call succeeds on the new connection.
    restarter = threading.Thread(target=lambda: (time.sleep(1.0), start_libvirtd(
        libvirtd.uri, stop_at_exit="libvirtd" in libvirtd.started)))
    restarter.start()
    try:
        again = backend.status(running)
    finally:
        restarter.join()
    assert backend.connection.reconnects >= 1
    assert again == before[running], "the running domain changed across the libvirtd restart"
    assert again.state is MachineState.RUNNING
    assert {name: backend.status(name) for name in (running, stopped, created)} == before
    listed = {i.name: i for i in backend.list() if i.name.startswith(prefix)}
    assert listed == listed_before
    assert qemu_of(running) == [qemu], "the domain was restarted"
    assert backend.start(running).started_at == before[running].started_at

    stopped_now = backend.stop(running, 0.2)
    assert stopped_now.state is MachineState.STOPPED
    assert stopped_now.exit_reason == "Killed"  # a firmware-only guest ignores the power button
    assert qemu_of(running) == []


FOREIGN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><memballoon model='none'/></devices>
</domain>
"""


@pytest.fixture
def foreign(libvirtd: Daemons, prefix: str) -> Iterator[str]:
    """A running domain somebody else defined (no vmpod metadata)."""
    name = f"{prefix}-theirs"
    conn = lv.open_connection(libvirtd.uri)
    domain = conn.defineXML(FOREIGN_XML.format(name=name))
    domain.create()
    yield name
    try:
        domain = conn.lookupByName(name)
        if domain.isActive():
            domain.destroy()
        domain.undefineFlags(0)
    finally:
        lv.close_quietly(conn)


def test_a_domain_that_is_not_vmpods_survives_every_path(backend: LibvirtBackend, base: Path, libvirtd: Daemons,
                                                          foreign: str, prefix: str) -> None:
    conn = lv.open_connection(libvirtd.uri)
    try:
        xml_before = conn.lookupByName(foreign).XMLDesc(0)
        (info,) = [i for i in backend.list() if i.name == foreign]
        assert (info.owned, dict(info.labels), info.state) == (False, {}, MachineState.RUNNING)
        for action, call in (("destroy", lambda: backend.destroy(foreign)),
                             ("stop", lambda: backend.stop(foreign, 0)),
                             ("start", lambda: backend.start(foreign)),
                             ("create", lambda: backend.create(machine(base, foreign)))):
            with pytest.raises(ConflictError, match=r"not (created by vmpod|vmpod's)"):
                call()
            assert conn.lookupByName(foreign).isActive(), f"{action} touched somebody else's domain"

        # vmpod's garbage collection (the runtime's reconcile) with vmpod machines around it.
        state = base / "runtime"
        with Runtime.open(state, backend="libvirt", backend_options={"uri": libvirtd.uri}) as runtime:
            store_id = runtime.store.store_id
        libvirt_backend = LibvirtBackend(BackendConfig(state_dir=str(state), options={"uri": libvirtd.uri}))
        names = {"orphan": f"{prefix}-orphan", "other-store": f"{prefix}-other", "unmarked": f"{prefix}-nomark"}
        libvirt_backend.create(machine(state, names["orphan"], **{STORE_LABEL: store_id}))
        libvirt_backend.create(machine(state, names["other-store"], **{STORE_LABEL: "another-store"}))
        libvirt_backend.create(attrs.evolve(machine(state, names["unmarked"]), labels={"app": "mine"}))
        libvirt_backend.start(names["other-store"])
        try:
            with Runtime.open(state, backend="libvirt", backend_options={"uri": libvirtd.uri}) as runtime:
                report = runtime.last_reconcile
            assert report is not None
            assert f"libvirt:{names['orphan']}" in report.orphans_removed, "the GC did not run (positive control)"
            assert f"libvirt:{names['other-store']}" in report.foreign
            left = {i.name: i.state for i in libvirt_backend.list()}
            assert names["orphan"] not in left
            assert left[names["other-store"]] is MachineState.RUNNING
            assert left[names["unmarked"]] is MachineState.CREATED
            assert left[foreign] is MachineState.RUNNING
            assert conn.lookupByName(foreign).XMLDesc(0) == xml_before
        finally:
            for name in names.values():
                libvirt_backend.destroy(name)
            libvirt_backend.close()
    finally:
        lv.close_quietly(conn)


def test_bad_input_is_refused_before_anything_is_defined(backend: LibvirtBackend, base: Path, prefix: str,
                                                         libvirtd: Daemons) -> None:
    def assert_nothing_made(the_machine: Machine) -> None:
        assert the_machine.name not in {i.name for i in backend.list()}, "a domain was defined"
        leftovers = [p for p in backend_files(Path(the_machine.runtime_dir)) if p.exists()]
        assert leftovers == [], f"files were made: {leftovers}"

    plain = machine(base, f"{prefix}-bad")
    volume = Path(plain.runtime_dir).parent / "vol.img"
    volume.write_bytes(b"")
    extra = Disk(name="vol", path=str(volume), format=DiskFormat.RAW, role=DiskRole.VOLUME)
    for bus, limit in ((DiskDriver.SCSI, 26), (DiskDriver.VIRTIO, 21)):
        too_many = attrs.evolve(plain, disk_bus=bus, disks=(*plain.disks, *[extra] * limit))
        with pytest.raises(BackendError, match=f"too many {bus.value} block devices: {limit + 1} .*at most {limit}"):
            backend.create(too_many)
        assert_nothing_made(too_many)

    raw = Disk(name="raw", path="/dev/zero", format=DiskFormat.RAW, role=DiskRole.VOLUME, block=True)
    outside = attrs.evolve(plain, disks=(*plain.disks, raw))
    with pytest.raises(SpecError, match=r"machine.disks\[1\].path: block device of volume 'raw' is not one the "
                                        r"libvirt backend may use: '/dev/zero' \(accepted: block devices matching "
                                        r"/dev/loop\*"):
        backend.create(outside)
    assert_nothing_made(outside)

    # Allowed by the option, but not a block device.
    options = {"uri": libvirtd.uri, "allowed_devices": "/dev/zero, /dev/loop*"}
    permissive = LibvirtBackend(BackendConfig(state_dir=str(base / "state"), options=options))
    try:
        with pytest.raises(SpecError, match="volume 'raw' is not a block device"):
            permissive.create(outside)
        assert_nothing_made(outside)
    finally:
        permissive.close()

    missing = attrs.evolve(plain, disks=(attrs.evolve(plain.disks[0], path=str(base / "nowhere.img")),))
    with pytest.raises(BackendError, match=r"nowhere\.img is not a file"):
        backend.create(missing)
    assert_nothing_made(missing)
