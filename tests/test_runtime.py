"""The runtime on the fake backend: CRI lifecycle, idempotency, states and timestamps, builder, volumes, logs."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import attrs
import pytest
from vmpod_fake import FakeBackend, Faults

from tests.support.runtime_pods import make_pod
from vmpod import hookimpl
from vmpod.backend import BackendConfig, Capabilities, MachineState
from vmpod.errors import BackendError, ConflictError, InvalidTransition, NotFoundError, SpecError
from vmpod.hookspecs import VolumeAttachment
from vmpod.machine import MARKER_LABEL, Disk, DiskFormat, DiskRole, Filesystem, Machine
from vmpod.manifest import load_manifest_text
from vmpod.model import VMPod
from vmpod.plugins import get_plugin_manager
from vmpod.runtime import ContainerState, Runtime, SandboxState
from vmpod.runtime.builder import (
    DEFAULT_MEMORY,
    STORE_LABEL,
    VIRTLET_CONTAINER_NAMESPACE,
    build_machine,
    machine_name,
    machine_uuid,
    root_disk_size,
)
from vmpod.runtime.check import check_consistency
from vmpod.runtime.logs import LogWriter, follow, format_record, read_lines
from vmpod.runtime.selectors import parse_selector


def _fake(runtime: Runtime) -> FakeBackend:
    return FakeBackend(BackendConfig(str(runtime.layout.root)))


# ---------------------------------------------------------------------------------------------- lifecycle


def test_run_pod_then_the_same_again(runtime: Runtime, image: Path) -> None:
    pod = make_pod(image, 1)
    before = time.time_ns()
    record = runtime.run_pod(pod)
    container = record.container
    assert container is not None
    assert record.state is SandboxState.READY
    assert container.state is ContainerState.RUNNING
    assert before <= record.created_at <= container.created_at <= container.started_at <= time.time_ns()
    assert container.id == str(uuid.uuid5(VIRTLET_CONTAINER_NAMESPACE, pod.uid))
    assert container.image_ref.startswith("sha256:")
    assert runtime.run_pod(pod) == record
    assert [e.reason for e in runtime.events(record)] == ["SandboxReady", "Created", "Started"]
    assert check_consistency(runtime) == []


def test_a_different_pod_with_the_same_name_conflicts(runtime: Runtime, image: Path) -> None:
    pod = make_pod(image, 1)
    runtime.run_pod(pod)
    with pytest.raises(ConflictError, match="different spec"):
        runtime.run_pod(attrs.evolve(pod, labels={"changed": "yes"}))
    with pytest.raises(ConflictError, match="another uid"):
        runtime.run_pod(attrs.evolve(pod, uid="ffffffff-0000-4000-8000-000000000001"))


def test_cri_steps_and_their_states(runtime: Runtime, image: Path) -> None:
    pod = make_pod(image, 2)
    sandbox = runtime.create_sandbox(pod)
    assert sandbox.container is None
    assert runtime.create_sandbox(pod) == sandbox
    with pytest.raises(NotFoundError):
        runtime.start_container(pod.uid)
    created = runtime.create_container(pod.uid)
    assert created.state is ContainerState.CREATED
    assert created.started_at == 0
    assert runtime.create_container(pod.uid) == created
    running = runtime.start_container(pod.uid)
    assert running.state is ContainerState.RUNNING
    assert running.started_at >= created.created_at
    assert runtime.start_container(pod.uid) == running
    exited = runtime.stop_container(pod.uid, timeout=0)
    assert exited.state is ContainerState.EXITED
    assert exited.finished_at >= exited.started_at
    assert exited.exit_code == 0
    assert exited.reason == "Stopped"
    assert runtime.stop_container(pod.uid, timeout=0) == exited
    again = runtime.start_container(pod.uid)
    assert again.state is ContainerState.RUNNING
    assert again.restart_count == 1
    assert again.finished_at == 0
    runtime.stop_sandbox(pod.uid)
    record = runtime.get(pod.name)
    assert record.state is SandboxState.NOTREADY
    assert record.container is not None
    assert record.container.state is ContainerState.EXITED
    with pytest.raises(InvalidTransition):
        runtime.start_container(pod.uid)
    runtime.stop_sandbox(pod.uid)
    runtime.remove_container(pod.uid)
    record = runtime.get(pod.name)
    assert record.container is None
    assert Path(record.log_path).exists()  # the log stays with the sandbox
    assert not (runtime.layout.pod_dir(pod.uid) / "root.qcow2").exists()
    runtime.remove_container(pod.uid)
    runtime.remove_sandbox(pod.uid)
    runtime.remove_sandbox(pod.uid)
    runtime.stop_sandbox(pod.uid)
    assert runtime.find(pod.uid) is None
    assert not Path(record.log_path).exists()
    assert check_consistency(runtime) == []


def test_delete_removes_every_artefact(runtime: Runtime, image: Path) -> None:
    pod = make_pod(image, 3, volumes=True)
    record = runtime.run_pod(pod)
    work = runtime.layout.pod_dir(pod.uid)
    assert (work / "root.qcow2").exists()
    assert (work / "seed.iso").exists()
    assert (work / "volumes" / "data" / "disk.qcow2").exists()
    assert (work / "volumes" / "scratch" / "data").is_dir()
    runtime.delete_pod(record)
    assert not work.exists()
    assert not Path(record.log_path).exists()
    assert sorted(p.name for p in runtime.layout.pods.iterdir()) == []
    assert sorted(p.name for p in runtime.layout.logs.iterdir()) == []
    assert runtime.store.artefacts() == []
    assert [m.name for m in runtime.backend().list()] == []
    with pytest.raises(NotFoundError):
        runtime.delete_pod(record)


def test_delete_can_keep_the_log(runtime: Runtime, image: Path) -> None:
    record = runtime.run_pod(make_pod(image, 4))
    runtime.delete_pod(record, keep_log=True)
    assert Path(record.log_path).read_text().count("stdout F") >= 3
    assert check_consistency(runtime) == []
    runtime.close()
    with Runtime.open(runtime.layout.root, backend="fake", plugin_manager=get_plugin_manager()) as again:
        assert Path(record.log_path).exists()  # reconcile does not sweep a retained log
        assert check_consistency(again) == []


def test_guest_power_off_is_seen_with_its_reason(runtime: Runtime, image: Path) -> None:
    record = runtime.run_pod(make_pod(image, 5))
    _fake(runtime).power_off(record.machine_name, exit_code=3, message="bye")
    refreshed = runtime.refresh(record.uid)
    container = refreshed.container
    assert container is not None
    assert (container.state, container.exit_code, container.reason, container.message) == \
        (ContainerState.EXITED, 3, "Completed", "bye")
    assert container.finished_at >= container.started_at > 0
    assert runtime.events(refreshed)[-1].reason == "Completed"


def test_failed_create_leaves_nothing(tmp_path: Path, image: Path) -> None:
    options = {"fail_create": "*"}
    with Runtime.open(tmp_path / "s", backend="fake", backend_options=options,
                      plugin_manager=get_plugin_manager()) as runtime:
        pod = make_pod(image, 6, volumes=True)
        with pytest.raises(BackendError, match="injected"):
            runtime.run_pod(pod)
        assert runtime.find(pod.uid) is None  # run_pod made the sandbox, so it takes it away again
        assert check_consistency(runtime) == []
        runtime.create_sandbox(pod)
        with pytest.raises(BackendError):
            runtime.create_container(pod.uid)
        record = runtime.get(pod.name)
        assert record.container is None
        assert record.operation == ""
        assert runtime.events(record)[-1].reason == "Failed"
        assert check_consistency(runtime) == []


def test_failed_start_is_recorded(runtime: Runtime, image: Path) -> None:
    pod = make_pod(image, 7)
    runtime.create_sandbox(pod)
    runtime.create_container(pod.uid)
    _fake(runtime).set_faults(Faults(fail_start=("*",)))
    with pytest.raises(BackendError):
        runtime.start_container(pod.uid)
    container = runtime.get(pod.name).container
    assert container is not None
    assert container.state is ContainerState.EXITED
    assert container.reason == "StartError"
    _fake(runtime).clear_faults()
    assert runtime.start_container(pod.uid).state is ContainerState.RUNNING


def test_a_lost_machine_is_defined_again_from_its_disks(runtime: Runtime, image: Path) -> None:
    record = runtime.run_pod(make_pod(image, 8))
    runtime.backend().destroy(record.machine_name)  # the hypervisor forgot it (host reboot, reset)
    lost = runtime.refresh(record.uid).container
    assert lost is not None
    assert lost.state is ContainerState.EXITED
    assert lost.reason == "MachineLost"
    assert (runtime.layout.pod_dir(record.uid) / "root.qcow2").exists()
    assert runtime.start_container(record.uid).state is ContainerState.RUNNING
    assert runtime.backend().status(record.machine_name).state is MachineState.RUNNING


def test_bad_image_is_a_spec_error_and_leaves_nothing(runtime: Runtime, image: Path, tmp_path: Path) -> None:
    text = tmp_path / "not-an-image"
    text.write_text("hello\n")
    pod = attrs.evolve(make_pod(image, 9), container=attrs.evolve(make_pod(image, 9).container, image=str(text)))
    with pytest.raises(SpecError, match="not a disk image"):
        runtime.run_pod(pod)
    assert runtime.find(pod.uid) is None
    assert check_consistency(runtime) == []


def test_list_with_selectors_and_namespaces(runtime: Runtime, image: Path) -> None:
    runtime.run_pod(make_pod(image, 10, app="web"))
    runtime.run_pod(make_pod(image, 11, app="db"))
    runtime.run_pod(make_pod(image, 12, app="web", namespace="other"))
    assert [p.name for p in runtime.list({"app": "web"})] == ["vm10", "vm12"]
    assert [p.name for p in runtime.list("app=web", namespace="default")] == ["vm10"]
    assert [p.name for p in runtime.list("app!=web")] == ["vm11"]
    assert [p.name for p in runtime.list("app in (db, cache),index")] == ["vm11"]
    assert [p.name for p in runtime.list("!app")] == []
    assert runtime.get("vm12", "other").namespace == "other"
    with pytest.raises(NotFoundError):
        runtime.get("vm12")


def test_readonly_runtime_reads_while_another_writes(runtime: Runtime, image: Path) -> None:
    record = runtime.run_pod(make_pod(image, 13))
    with pytest.raises(ConflictError, match="another vmpod process"):
        Runtime.open(runtime.layout.root, backend="fake", lock_timeout=0.1, plugin_manager=get_plugin_manager())
    with Runtime.open(runtime.layout.root, backend="fake", readonly=True,
                      plugin_manager=get_plugin_manager()) as reader:
        assert reader.get(record.name) == record
        with pytest.raises(Exception, match="read-only"):
            reader.run_pod(make_pod(image, 14))


def test_pod_events_reach_plugins(tmp_path: Path, image: Path) -> None:
    seen: list[str] = []

    class Plugin:
        @hookimpl
        def vmpod_pod_event(self, event: object) -> None:
            seen.append(getattr(event, "reason", ""))

    plugins = get_plugin_manager()
    plugins.register(Plugin(), name="observer")
    with Runtime.open(tmp_path / "s", backend="fake", plugin_manager=plugins) as runtime:
        record = runtime.run_pod(make_pod(image, 15))
        runtime.delete_pod(record)
    assert seen == ["SandboxReady", "Created", "Started", "Killing", "Deleted"]


# ---------------------------------------------------------------------------------------------- builder


def _build(pod: VMPod, attachments: dict[str, VolumeAttachment] | None = None,
           capabilities: Capabilities | None = None) -> Machine:
    return build_machine(pod, root_disk=Path("/s/root.qcow2"), seed=Path("/s/seed.iso"),
                         attachments=attachments or {}, serial_log=Path("/s/log"), runtime_dir=Path("/s/run"),
                         store_id="store-1", capabilities=capabilities or Capabilities(filesystems=("9p",)))


def _pod_from(text: str) -> VMPod:
    return load_manifest_text(text).pods[0]


BASE = """
apiVersion: v1
kind: Pod
metadata:
  name: p
  uid: 0123456789abcdef-0000
  annotations: {{kubernetes.io/target-runtime: virtlet.cloud{annotations}}}
spec:
  containers:
  - name: vm
    image: /i.qcow2
{extra}
"""


def test_machine_identity_memory_cpu() -> None:
    pod = _pod_from(BASE.format(annotations=", VirtletVCPUCount: '2'", extra="""    resources:
      limits: {memory: 512Mi, cpu: '1'}
      requests: {cpu: 250m}"""))
    machine = _build(pod)
    assert machine.name == "vmpod-0123456789abc-vm" == machine_name(pod)
    assert machine.uuid == machine_uuid(pod) == uuid.uuid5(VIRTLET_CONTAINER_NAMESPACE, pod.uid)
    assert machine.memory_bytes == 512 << 20
    assert machine.vcpus == 2
    tune = machine.cpu_tune
    assert tune is not None
    assert (tune.period, tune.quota, tune.shares) == (100_000, 50_000, 256)
    labels = machine.labels
    assert labels[MARKER_LABEL] == "true"
    assert labels[STORE_LABEL] == "store-1"
    assert [d.role for d in machine.disks] == [DiskRole.ROOT, DiskRole.SEED]


def test_defaults_and_system_uuid() -> None:
    fixed = "8fbd4ff5-6e6e-4b63-8ae8-9cb7e8ffc4a1"
    pod = _pod_from(BASE.format(annotations=f", VirtletSystemUUID: {fixed}", extra=""))
    machine = _build(pod)
    assert machine.memory_bytes == DEFAULT_MEMORY
    assert machine.cpu_tune is None
    assert str(machine.uuid) == fixed


def test_root_disk_size() -> None:
    pod = _pod_from(BASE.format(annotations=", VirtletRootVolumeSize: 2Gi", extra=""))
    assert root_disk_size(pod, 1 << 30) == 2 << 30
    assert root_disk_size(pod, 3 << 30) == 3 << 30
    assert root_disk_size(_pod_from(BASE.format(annotations="", extra="")), 1000) == 1024


def test_disk_order_and_limits(tmp_path: Path, image: Path) -> None:
    flex = "\n".join(f"""  - name: f{i:02d}
    flexVolume: {{driver: virtlet/flexvolume_driver, options: {{type: qcow2, capacity: 1MB}}}}""" for i in range(24))
    pod = _pod_from(BASE.format(annotations=", VirtletDiskDriver: virtio", extra="  volumes:\n" + flex))
    with pytest.raises(SpecError, match="too many virtio"):
        _build(pod)
    scsi = _pod_from(BASE.format(annotations="", extra="  volumes:\n" + flex))
    attachments = {f"f{i:02d}": VolumeAttachment(disks=(Disk(name=f"f{i:02d}", path=f"/d{i}", format=DiskFormat.QCOW2,
                                                             role=DiskRole.VOLUME),)) for i in range(24)}
    machine = _build(scsi, attachments)
    names = [d.name for d in machine.disks]
    assert names == ["root", *sorted(attachments), "seed"]
    assert machine.disks[1].serial == "f00"


def test_persistent_rootfs_needs_a_block_device_volume() -> None:
    """A root volume the handlers did not attach as a raw disk (tests/test_persistentroot.py has the rest)."""
    pod = _pod_from(BASE.format(annotations="", extra="""    volumeDevices:
    - {name: root, devicePath: /}
  volumes:
  - name: root
    persistentVolumeClaim: {claimName: rootclaim}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: rootclaim}
spec: {volumeMode: Block, resources: {requests: {storage: 1Gi}}}"""))
    with pytest.raises(SpecError, match=r"volumeDevices\[0\].name: a persistent root needs a raw block device volume"):
        _build(pod)


def test_shares_need_a_backend_with_9p(runtime: Runtime, image: Path) -> None:
    pod = make_pod(image, 20, volumes=True)
    share = VolumeAttachment(filesystems=(Filesystem(tag="x", source="/tmp"),))
    with pytest.raises(SpecError, match="cannot share"):
        _build(pod, {"scratch": share}, Capabilities(filesystems=()))


# ---------------------------------------------------------------------------------------------- volumes


def test_host_path_directory_block_device_and_pvc(runtime: Runtime, image: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 1024 * 1024)
    pvdir = tmp_path / "pv"
    pvdir.mkdir()
    text = f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv1}}
spec:
  capacity: {{storage: 1Mi}}
  volumeMode: Block
  local: {{path: {disk}}}
  claimRef: {{name: claim1, namespace: default}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: claim1}}
spec: {{volumeMode: Block, resources: {{requests: {{storage: 1Mi}}}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: vols
  annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}
spec:
  containers:
  - name: vm
    image: {image}
    volumeMounts:
    - {{name: host, mountPath: /host, readOnly: true}}
    - {{name: made, mountPath: /made}}
    volumeDevices:
    - {{name: blk, devicePath: /dev/testpvc}}
  volumes:
  - name: host
    hostPath: {{path: {shared}}}
  - name: made
    hostPath: {{path: {tmp_path / "new-dir"}, type: DirectoryOrCreate}}
  - name: blk
    persistentVolumeClaim: {{claimName: claim1}}
"""
    pod = load_manifest_text(text).pods[0]
    record = runtime.run_pod(pod)
    machine = runtime.machine(record)
    assert machine is not None
    volume = [d for d in machine.disks if d.role is DiskRole.VOLUME]
    assert [(d.name, d.path, d.block, d.serial) for d in volume] == [("blk", str(disk), False, "blk")]
    assert [(f.tag, f.source, f.read_only) for f in machine.filesystems] == [
        ("m0-host", str(shared), True), ("m1-made", str(tmp_path / "new-dir"), False)]
    runtime.delete_pod(record)
    assert shared.is_dir()
    assert disk.exists()
    assert (tmp_path / "new-dir").is_dir()


def test_missing_host_path_is_a_spec_error(runtime: Runtime, image: Path, tmp_path: Path) -> None:
    text = f"""
apiVersion: v1
kind: Pod
metadata:
  name: bad
  annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}
spec:
  containers:
  - name: vm
    image: {image}
    volumeMounts: [{{name: host, mountPath: /host}}]
  volumes:
  - name: host
    hostPath: {{path: {tmp_path / "nope"}}}
"""
    with pytest.raises(SpecError, match=r"spec.volumes\[0\].hostPath.path"):
        runtime.run_pod(load_manifest_text(text).pods[0])
    assert check_consistency(runtime) == []


def test_seed_is_a_real_nocloud_iso(runtime: Runtime, image: Path) -> None:
    record = runtime.run_pod(make_pod(image, 21, volumes=True))
    seed = runtime.layout.pod_dir(record.uid) / "seed.iso"
    out = subprocess.run(["isoinfo", "-d", "-i", str(seed)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in out
    files = subprocess.run(["isoinfo", "-R", "-f", "-i", str(seed)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert {"/meta-data", "/user-data"} <= set(files)
    user_data = subprocess.run(["isoinfo", "-R", "-x", "/user-data", "-i", str(seed)], capture_output=True,
                               check=True).stdout.decode()
    assert user_data.startswith("#cloud-config")
    machine = runtime.machine(record)
    assert machine is not None
    assert [f.tag for f in machine.filesystems] == ["m0-scratch"]  # the tag the seed mounts
    assert "m0-scratch" in user_data
    assert "/data" in user_data


# ---------------------------------------------------------------------------------------------- logs


def test_writer_splits_and_reader_joins(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    writer = LogWriter(path)
    long = b"x" * (40 * 1024)
    writer.write(b"first\r\nsec")
    writer.write(b"ond\n" + long + b"\nthird")
    writer.flush()
    raw = path.read_bytes().splitlines()
    assert sum(1 for r in raw if b" P " in r[:40]) == 3  # two chunks of the long line and the unfinished third
    lines = [line.content for line in read_lines(path)]
    assert lines == [b"first\n", b"second\n", long + b"\n"]  # "third" is still partial
    # --tail counts records, as crictl does: the last two are the long line's final chunk and "third".
    assert [line.content for line in read_lines(path, tail=2)] == [long[-8192:] + b"\n"]
    assert [line.content for line in read_lines(path, tail=1)] == []
    assert read_lines(tmp_path / "missing.log") == []


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(format_record(f"line {i}".encode(), ns=i) for i in range(1000)))
    assert [line.content for line in read_lines(path, tail=3)] == [b"line 997\n", b"line 998\n", b"line 999\n"]
    assert len(read_lines(path, tail=5000)) == 1000
    assert read_lines(path, tail=0) == []


def test_follow_sees_new_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(format_record(b"one"))
    running = threading.Event()
    running.set()
    got: list[bytes] = []

    def reader() -> None:
        for line in follow(path, keep_going=running.is_set, poll=0.01):
            got.append(line.content)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.05)
    with path.open("ab") as f:
        f.write(format_record(b"two"))
    time.sleep(0.05)
    os.rename(path, tmp_path / "0.log.20260101-000000")
    path.write_bytes(format_record(b"three"))
    time.sleep(0.1)
    running.clear()
    thread.join(timeout=5)
    assert got == [b"one\n", b"two\n", b"three\n"]


def test_selector_syntax_errors() -> None:
    assert parse_selector(None)({})
    assert parse_selector("")({"a": "b"})
    with pytest.raises(SpecError):
        parse_selector("a=b,!c=d")
