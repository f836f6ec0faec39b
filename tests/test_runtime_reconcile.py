"""Reconcile on open: adoption, state changes while vmpod was down, unfinished operations, orphans, stray files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vmpod_fake import FakeBackend

from tests.support.runtime_pods import make_pod
from vmpod import hookimpl
from vmpod.backend import BackendConfig, MachineState
from vmpod.hookspecs import BackendSpec
from vmpod.machine import MARKER_LABEL
from vmpod.plugins import get_plugin_manager
from vmpod.runtime import ContainerState, ReconcileReport, Runtime
from vmpod.runtime.builder import STORE_LABEL
from vmpod.runtime.check import check_consistency
from vmpod.runtime.records import ArtefactKind, OperationKind


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _open(state: Path) -> Runtime:
    return Runtime.open(state, backend="fake", plugin_manager=get_plugin_manager())


def _report(runtime: Runtime) -> ReconcileReport:
    report = runtime.last_reconcile
    assert isinstance(report, ReconcileReport)
    return report


@pytest.fixture
def fake(state: Path) -> Iterator[FakeBackend]:
    backend = FakeBackend(BackendConfig(str(state)))
    yield backend
    backend.close()


def test_running_machines_are_adopted_never_restarted(state: Path, image: Path) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 1))
        started = runtime.backend().status(record.machine_name).started_at
    with _open(state) as runtime:
        assert _report(runtime).adopted == ("default/vm1",)
        status = runtime.backend().status(record.machine_name)
        assert status.state is MachineState.RUNNING
        assert status.started_at == started
        assert runtime.get("vm1") == record
        assert check_consistency(runtime) == []


def test_a_guest_that_stopped_while_vmpod_was_down(state: Path, image: Path, fake: FakeBackend) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 2))
    fake.crash(record.machine_name, exit_code=139, message="kernel panic")
    with _open(state) as runtime:
        assert _report(runtime).changed == ("default/vm2",)
        container = runtime.get("vm2").container
        assert container is not None
        assert (container.state, container.exit_code, container.reason) == (ContainerState.EXITED, 139, "Crashed")
        assert check_consistency(runtime) == []


def test_a_machine_the_backend_lost_keeps_its_disks(state: Path, image: Path, fake: FakeBackend) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 3))
    fake.destroy(record.machine_name)
    with _open(state) as runtime:
        container = runtime.get("vm3").container
        assert container is not None
        assert container.reason == "MachineLost"
        assert (runtime.layout.pod_dir(record.uid) / "root.qcow2").exists()
        assert check_consistency(runtime) == []
        assert runtime.start_container(record.uid).state is ContainerState.RUNNING


def test_orphans_of_this_store_go_others_stay(state: Path, image: Path, fake: FakeBackend) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 4))
        store_id = runtime.store.store_id
        with runtime.store.transaction() as tx:  # as if a power cut lost the pod's rows
            tx.delete_pod(record.uid)
    fake.add_foreign("not-ours")
    fake.add_foreign("other-vmpod", labels={MARKER_LABEL: "true", STORE_LABEL: "another"})
    fake.add_foreign("marker-without-store", labels={MARKER_LABEL: "true"})
    with _open(state) as runtime:
        report = _report(runtime)
        assert report.orphans_removed == (f"fake:{record.machine_name}",)
        assert set(report.foreign) == {"fake:other-vmpod", "fake:marker-without-store"}
        assert {m.name for m in runtime.backend().list()} == {"not-ours", "other-vmpod", "marker-without-store"}
        assert str(runtime.layout.pod_dir(record.uid)) in report.files_removed
        assert check_consistency(runtime) == []
        assert store_id == runtime.store.store_id


def test_unfinished_create_is_undone(state: Path, image: Path) -> None:
    pod = make_pod(image, 5, volumes=True)
    with _open(state) as runtime:
        runtime.create_sandbox(pod)
        runtime.create_container(pod.uid)
        record = runtime.get("vm5")
        with runtime.store.transaction() as tx:  # back to "machine created, outcome not recorded"
            tx.delete_container(pod.uid)
            tx.begin(pod.uid, OperationKind.CREATE, "files")
    with _open(state) as runtime:
        assert _report(runtime).undone == ("default/vm5",)
        after = runtime.get("vm5")
        assert after.container is None
        assert after.operation == ""
        assert runtime.backend().list() == ()
        assert not runtime.layout.pod_dir(pod.uid).exists()
        assert check_consistency(runtime) == []
        assert runtime.run_pod(pod).container is not None
        assert record.machine_name == runtime.get("vm5").machine_name


def test_unfinished_delete_is_finished(state: Path, image: Path) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 6))
        with runtime.store.transaction() as tx:
            tx.begin(record.uid, OperationKind.DELETE, "pod")
    with _open(state) as runtime:
        assert _report(runtime).finished == ("default/vm6",)
        assert runtime.find(record.uid) is None
        assert runtime.backend().list() == ()
        assert check_consistency(runtime) == []


def test_unfinished_stop_reads_the_backend(state: Path, image: Path, fake: FakeBackend) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 7))
        with runtime.store.transaction() as tx:
            tx.begin(record.uid, OperationKind.STOP, "stop")
    fake.stop(record.machine_name, 0)
    with _open(state) as runtime:
        container = runtime.get("vm7").container
        assert container is not None
        assert container.state is ContainerState.EXITED
        assert runtime.get("vm7").operation == ""
        assert check_consistency(runtime) == []


def test_stray_files_are_swept_recorded_ones_kept(state: Path, image: Path) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 8, volumes=True))
        work = runtime.layout.pod_dir(record.uid)
        (work / ".seed.iso.x.tmp").write_bytes(b"half")
        (runtime.layout.pods / "deadbeef").mkdir()
        (runtime.layout.logs / "stray.log").write_text("x")
        (work / "volumes" / "data" / "handler-file").write_text("belongs to the volume handler")
        (work / "run" / "qemu.pid").write_text("1")
        (runtime.layout.images_tmp / "partial").write_bytes(b"x")
    with _open(state) as runtime:
        removed = set(_report(runtime).files_removed)
        assert removed == {str(work / ".seed.iso.x.tmp"), str(runtime.layout.pods / "deadbeef"),
                           str(runtime.layout.logs / "stray.log"), str(runtime.layout.images_tmp / "partial")}
        assert (work / "volumes" / "data" / "handler-file").exists()
        assert (work / "run" / "qemu.pid").exists()
        assert check_consistency(runtime) == []
        kinds = {a.kind for a in runtime.store.artefacts(record.uid)}
        assert kinds == {ArtefactKind.DIR, ArtefactKind.FILE, ArtefactKind.TREE, ArtefactKind.LOG}


def test_an_unreachable_backend_is_skipped(state: Path, image: Path) -> None:
    with _open(state) as runtime:
        record = runtime.run_pod(make_pod(image, 9))
        with runtime.store.transaction() as tx:
            tx.begin(record.uid, OperationKind.DELETE, "pod")
    plugins = get_plugin_manager()
    plugins.unregister("fake")
    plugins.register(_Broken(), name="broken")
    with Runtime.open(state, backend="fake", plugin_manager=plugins) as runtime:
        report = _report(runtime)
        assert report.unreachable == ("fake",)
        assert runtime.find(record.uid) is not None  # untouched until the backend is back
    with _open(state) as runtime:
        assert runtime.find(record.uid) is None


class _Broken:
    """A plugin whose ``fake`` backend cannot be reached."""

    @staticmethod
    def _factory(config: BackendConfig) -> FakeBackend:
        backend = FakeBackend(config)
        backend.close()  # every call now raises BackendError
        return backend

    @hookimpl
    def vmpod_backends(self) -> list[BackendSpec]:
        return [BackendSpec(name="fake", factory=self._factory)]
