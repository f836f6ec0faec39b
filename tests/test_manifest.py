"""Manifests to VM pods: every Virtlet example, every kind, references, notes and errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, VIRTLET_EXAMPLES
from vmpod import convert, datasources
from vmpod.errors import SpecError, SpecErrors
from vmpod.manifest import KEPT_KINDS, WORKLOAD_KINDS, LoadResult, load_manifest_files, load_manifest_text
from vmpod.model import (
    CPUFeature,
    CPUModel,
    CPUModelMode,
    DataKind,
    DiskDriver,
    LibvirtCPU,
    PullPolicy,
    RestartPolicy,
    TCPSocketAction,
    VMPod,
    Volume,
    VolumeDevice,
    VolumeMount,
)

VMKEY = (VIRTLET_EXAMPLES / "vmkey.pub").read_text().strip()
CIRROS = "virtlet.cloud/cirros"
XENIAL = "virtlet.cloud/cloud-images.ubuntu.com/xenial/current/xenial-server-cloudimg-amd64-disk1.img"
MI = 1024**2


def _errors(error: SpecError) -> list[SpecError]:
    return list(error.errors) if isinstance(error, SpecErrors) else [error]


def _load(text: str, **kwargs: Any) -> LoadResult:
    return load_manifest_text(textwrap.dedent(text), "test.yaml", **kwargs)


def _load_errors(text: str, **kwargs: Any) -> list[SpecError]:
    with pytest.raises(SpecError) as info:
        _load(text, **kwargs)
    return _errors(info.value)


def _pvc(name: str, claim: str, mode: str, kind: str, *, path: str | None, capacity: str) -> dict[str, Any]:
    return {
        "kind": "persistentVolumeClaim",
        "name": name,
        "claim_name": claim,
        "read_only": False,
        "volume_mode": mode,
        "persistent_volume": {"kind": kind, "path": path, "volume_mode": mode, "capacity": capacity},
    }


def _qcow2(name: str, capacity: int) -> dict[str, Any]:
    return {
        "kind": "flexVolume",
        "name": name,
        "driver": "virtlet/flexvolume_driver",
        "options": {"kind": "qcow2", "capacity": capacity, "part": None},
    }


TESTUSER = {
    "name": "testuser",
    "gecos": "User",
    "primary-group": "testuser",
    "groups": "users",
    "lock_passwd": False,
    "shell": "/bin/bash",
    "sudo": "ALL=(ALL) NOPASSWD:ALL",
    "passwd": "$6$rounds=4096$wPs4Hz4tfs$a8ssMnlvH.3GX88yxXKF2cKMlVULsnydoOKgkuStTErTq2dzKZiIx9R/"
    "pPWWh5JLxzoZEx7lsSX5T2jW5WISi1",
}

#: What each Virtlet example sets.  Keys: pods, image, memory (bytes), vcpus, disk, root (bytes), ssh (keys),
#: user_data (the parsed VirtletCloudInitUserData), volumes (unstructured), mounts, devices, and extra checks.
EXPECTED: dict[str, dict[str, Any]] = {
    "cirros-vm-deployment.yaml": {
        "pods": 1,
        "image": CIRROS,
        "memory": 160 * MI,
        "disk": DiskDriver.VIRTIO,
        "ssh": (VMKEY,),
    },
    "cirros-vm-persistent-rootfs-local.yaml": {
        "pods": ["cirros-vm-pl"],
        "image": CIRROS,
        "disk": DiskDriver.VIRTIO,
        "ssh": (VMKEY,),
        "volumes": [_pvc("testpvc", "local-block-pvc", "Block", "local", path="/dev/rootdev", capacity="100Mi")],
        "devices": (VolumeDevice("testpvc", "/"),),
        "grace": 120,
    },
    "cirros-vm-persistent-rootfs-rbd.yaml": {
        "pods": ["cirros-vm-pr"],
        "image": "virtlet.cloud/download.cirros-cloud.net/0.3.5/cirros-0.3.5-x86_64-disk.img",
        "disk": DiskDriver.VIRTIO,
        "ssh": (VMKEY,),
        "volumes": [_pvc("testpvc", "ceph-block-pvc", "Block", "rbd", path=None, capacity="10Mi")],
        "devices": (VolumeDevice("testpvc", "/"),),
        "grace": 120,
    },
    "cirros-vm-raw-device.yaml": {
        "pods": ["cirros-vm-raw-device"],
        "image": CIRROS,
        "volumes": [
            {
                "kind": "flexVolume",
                "name": "raw",
                "driver": "virtlet/flexvolume_driver",
                "options": {"kind": "raw", "path": "/dev/loop0", "part": None},
            }
        ],
    },
    "cirros-vm-volume-mount.yaml": {
        "pods": ["cirros-vm-volume-mount"],
        "image": CIRROS,
        "memory": 160 * MI,
        "vcpus": 1,
        "disk": DiskDriver.VIRTIO,
        "ssh": (VMKEY,),
        "script": "@virtlet-mount-script@",
        "volumes": [_qcow2("somevol", 40 * 10**6)],
        "mounts": (VolumeMount("somevol", "/somevol"),),
    },
    "cirros-vm-with-additional-annotations.yaml": {
        "pods": ["cirros-vm-with-additional-annotations"],
        "image": CIRROS,
        "memory": 160 * MI,
        "vcpus": 1,
        "disk": DiskDriver.VIRTIO,
        "ssh": (VMKEY,),
        "script": '#!/bin/sh\necho "Hi there"\n',
    },
    "cirros-vm.yaml": {
        "pods": ["cirros-vm"],
        "image": CIRROS,
        "memory": 160 * MI,
        "disk": DiskDriver.VIRTIO,
        "root": 1024**3,
        "ssh": (VMKEY,),
    },
    "debian-vm.yaml": {
        "pods": ["debian-vm"],
        "image": "virtlet.cloud/cdimage.debian.org/cdimage/openstack/archive/9.8.0/debian-9.8.0-openstack-amd64.qcow2",
        "root": 4 * 1024**3,
        "ssh": (VMKEY,),
        "force_dhcp": True,
        "grace": 120,
    },
    "fedora-vm-with-testuser.yaml": {
        "pods": ["fedora-vm-with-testuser"],
        "image": "virtlet.cloud/fedora",
        "memory": 256 * MI,
        "ssh": (VMKEY,),
        "user_data": {"ssh_pwauth": True, "users": [{**TESTUSER, "ssh-authorized-keys": VMKEY}]},
        "grace": 120,
    },
    "fedora-vm.yaml": {
        "pods": ["fedora-vm"],
        "image": "virtlet.cloud/fedora",
        "memory": 256 * MI,
        "ssh": (VMKEY,),
        "grace": 120,
    },
    "k8s.yaml": {
        "pods": ["k8s-0", "k8s-1", "k8s-2"],
        "image": XENIAL,
        "vcpus": 2,
        "root": 4 * 1024**3,
        "user_data_keys": {"write_files", "users", "runcmd"},
    },
    "ubuntu-multi-cni.yaml": {
        "pods": ["ubuntu-multi-cni"],
        "image": XENIAL,
        "user_data": {"ssh_pwauth": True, "users": [TESTUSER]},
        "grace": 120,
        "annotations": {"cni": "calico,flannel"},
    },
    "ubuntu-vm-hostpath-pv.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-hostpath-dir-pv"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "volumes": [
            _pvc(
                "hostpathpvc",
                "hostpath-dir-pvc",
                "Filesystem",
                "hostPath",
                path="/var/lib/virtlet/hostpath",
                capacity="100Mi",
            )
        ],
        "mounts": (VolumeMount("hostpathpvc", "/home/ubuntu/hostpath"),),
    },
    "ubuntu-vm-local-block-pv.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-local-block-pv"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "user_data": {"mounts": [["/dev/testpvc", "/mnt"]]},
        "volumes": [
            _pvc("testpvc", "local-block-pvc", "Block", "local", path="/var/lib/virtlet/looptest", capacity="100Mi")
        ],
        "devices": (VolumeDevice("testpvc", "/dev/testpvc"),),
    },
    "ubuntu-vm-nfs-pv.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-nfs-dir-pv"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "volumes": [_pvc("nfspvc", "nfs-dir-pvc", "Filesystem", "nfs", path=None, capacity="100Mi")],
        "mounts": (VolumeMount("nfspvc", "/home/ubuntu/nfspath"),),
    },
    "ubuntu-vm-rbd-block-pv.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-rdb-block-pv"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "user_data": {"mounts": [["/dev/testpvc", "/mnt"]]},
        "volumes": [_pvc("ceph-block-pvc", "ceph-block-pvc", "Block", "rbd", path=None, capacity="10Mi")],
        "devices": (VolumeDevice("ceph-block-pvc", "/dev/testpvc"),),
    },
    "ubuntu-vm-with-libvirt-cpusetting.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-with-nested-virtualization"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "cpu_model": CPUModel.HOST_MODEL,
        "libvirt_cpu": LibvirtCPU(mode=CPUModelMode.CUSTOM, model="Westmere", features=(CPUFeature("avx", "disable"),)),
    },
    "ubuntu-vm-with-nested-virtualization.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-with-nested-virtualization"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "cpu_model": CPUModel.HOST_MODEL,
    },
    "ubuntu-vm-with-testuser.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-with-testuser"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "user_data": {"ssh_pwauth": True, "users": [{**TESTUSER, "ssh-authorized-keys": VMKEY}]},
    },
    "ubuntu-vm-with-volume.yaml": {
        "grace": 120,
        "pods": ["ubuntu-vm-with-volume"],
        "image": XENIAL,
        "ssh": (VMKEY,),
        "volumes": [_qcow2("docker", 2048 * 10**6)],
        "mounts": (VolumeMount("docker", "/var/lib/docker"),),
    },
    "ubuntu-vm.yaml": {"grace": 120, "pods": ["ubuntu-vm"], "image": XENIAL, "root": 4 * 1024**3, "ssh": (VMKEY,)},
}


def test_every_virtlet_example_has_expectations() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in VIRTLET_EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_virtlet_example(name: str) -> None:
    want = EXPECTED[name]
    result = load_manifest_files([VIRTLET_EXAMPLES / name])
    pods = result.pods
    if isinstance(want["pods"], int):
        assert len(pods) == want["pods"]
    else:
        assert [p.name for p in pods] == want["pods"]
    for pod in pods:
        vm = pod.vm
        assert pod.annotations["kubernetes.io/target-runtime"] == "virtlet.cloud"
        assert pod.container.image == want["image"]
        assert pod.container.image_pull_policy is PullPolicy.IF_NOT_PRESENT
        assert pod.container.tty
        assert pod.container.stdin
        assert pod.memory_limit_bytes == want.get("memory")
        assert vm.vcpu_count == want.get("vcpus", 1)
        assert vm.disk_driver is want.get("disk", DiskDriver.SCSI)
        assert vm.root_volume_size == want.get("root")
        assert vm.ssh_keys == want.get("ssh", ())
        assert datasources.ssh_keys(pod) == want.get("ssh", ())
        if "user_data_keys" in want:
            assert set(vm.cloud_init_user_data or {}) == want["user_data_keys"]
        else:
            assert vm.cloud_init_user_data == want.get("user_data")
        assert vm.cloud_init_user_data_script == want.get("script")
        assert datasources.user_data_script(pod) == want.get("script")
        assert [convert.unstructure(v, Volume) for v in pod.volumes] == want.get("volumes", [])
        assert pod.container.volume_mounts == want.get("mounts", ())
        assert pod.container.volume_devices == want.get("devices", ())
        assert vm.cpu_model == want.get("cpu_model")
        assert vm.libvirt_cpu_setting == want.get("libvirt_cpu")
        assert vm.force_dhcp_network_config is want.get("force_dhcp", False)
        assert pod.termination_grace_period_seconds == want.get("grace", 30)
        for key, value in want.get("annotations", {}).items():
            assert pod.annotations[key] == value
        assert convert.structure(convert.unstructure(pod), VMPod) == pod


def test_deployment_example_names_and_labels() -> None:
    (pod,) = load_manifest_files([VIRTLET_EXAMPLES / "cirros-vm-deployment.yaml"]).pods
    prefix, template_hash, suffix = pod.name.rsplit("-", 2)
    assert prefix == "cirros-deployment"
    assert len(template_hash) == 10
    assert len(suffix) == 5
    assert pod.labels == {"app": "cirros", "pod-template-hash": template_hash}
    assert load_manifest_files([VIRTLET_EXAMPLES / "cirros-vm-deployment.yaml"]).pods[0].name == pod.name


# --------------------------------------------------------------------------- kinds

POD_TEMPLATE = """
      metadata:
        labels: {app: vm}
        annotations:
          kubernetes.io/target-runtime: virtlet.cloud
          VirtletVCPUCount: "2"
      spec:
        RESTART
        containers:
        - name: vm
          image: virtlet.cloud/cirros
          env:
          - name: MY_NAME
            valueFrom: {fieldRef: {fieldPath: metadata.name}}
          - name: MY_INDEX
            valueFrom: {fieldRef: {fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']"}}
"""


def _workload(kind: str, spec: str, restart: str = "") -> str:
    template = textwrap.indent(textwrap.dedent(POD_TEMPLATE).replace("RESTART", restart), "    ")
    return (
        f"apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: w, namespace: ns}}\nspec:\n{spec}  template:{template}"
    )


@pytest.mark.parametrize(
    ("kind", "spec", "count"),
    [
        ("Deployment", "  replicas: 3\n", 3),
        ("Deployment", "", 1),
        ("ReplicaSet", "  replicas: 2\n", 2),
        ("DaemonSet", "  selector: {matchLabels: {app: vm}}\n", 1),
        ("Job", "  parallelism: 4\n  completions: 2\n", 2),
        ("Job", "", 1),
    ],
)
def test_workload_kinds(kind: str, spec: str, count: int) -> None:
    restart = "restartPolicy: Never" if kind == "Job" else ""
    pods = _load(_workload(kind, spec, restart)).pods
    assert len(pods) == count
    assert len({p.name for p in pods}) == count
    assert len({p.uid for p in pods}) == count
    for pod in pods:
        assert pod.name.startswith("w-")
        assert pod.namespace == "ns"
        assert pod.vm.vcpu_count == 2
        assert pod.hostname is None
        assert pod.container.env[0].name == "MY_NAME"
        assert pod.container.env[0].value == pod.name


def test_statefulset_replicas_hostnames_and_subdomain() -> None:
    text = _workload("StatefulSet", "  serviceName: svc\n  replicas: 3\n")
    pods = _load(text).pods
    assert [p.name for p in pods] == ["w-0", "w-1", "w-2"]
    assert [p.hostname for p in pods] == ["w-0", "w-1", "w-2"]
    assert {p.subdomain for p in pods} == {"svc"}
    assert [p.labels["statefulset.kubernetes.io/pod-name"] for p in pods] == ["w-0", "w-1", "w-2"]
    assert [[(e.name, e.value) for e in p.container.env] for p in pods] == [
        [("MY_NAME", f"w-{i}"), ("MY_INDEX", str(i))] for i in range(3)
    ]
    assert pods[0].guest_hostname == "w-0"


def test_cronjob_gives_the_pods_of_one_run() -> None:
    template = textwrap.indent(textwrap.dedent(POD_TEMPLATE).replace("RESTART", "restartPolicy: OnFailure"), "        ")
    text = (
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '0 3 * * *'\n"
        f"  jobTemplate:\n    spec:\n      template:{template}"
    )
    (pod,) = _load(text).pods
    assert pod.name.startswith("nightly-")
    assert pod.restart_policy is RestartPolicy.ON_FAILURE


def test_job_needs_a_restart_policy() -> None:
    errors = _load_errors(_workload("Job", ""))
    assert [(e.path, e.accepted) for e in errors] == [("spec.template.spec.restartPolicy", '"OnFailure" or "Never"')]


def test_list_items_are_expanded() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "annotations": {"kubernetes.io/target-runtime": "virtlet.cloud"}},
        "spec": {"containers": [{"name": "vm", "image": "i"}]},
    }
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            pod,
            {**pod, "metadata": {**pod["metadata"], "name": "b"}},
            {"kind": "PodList", "items": [{**pod, "metadata": {**pod["metadata"], "name": "c"}}]},
        ],
    }
    assert [p.name for p in load_manifest_text(json.dumps(listing)).pods] == ["a", "b", "c"]


def test_every_workload_kind_is_tested() -> None:
    source = Path(__file__).read_text()
    for kind in WORKLOAD_KINDS:
        assert f'"{kind}"' in source or f"kind: {kind}" in source, kind


def test_zero_replicas_give_a_note() -> None:
    result = _load(_workload("Deployment", "  replicas: 0\n"))
    assert result.pods == ()
    assert result.notes == ("test.yaml: Deployment w: no pods (replicas: 0)",)


def test_services_and_other_kinds_are_skipped_with_a_note() -> None:
    result = _load("""
        apiVersion: v1
        kind: Service
        metadata: {name: svc}
        ---
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        ---
        kind: Pod
        metadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}
        spec: {containers: [{name: vm, image: i}]}
    """)
    assert [p.name for p in result.pods] == ["p"]
    assert result.notes == (
        "test.yaml (document 1): skipped Service svc: not a pod or pod workload",
        "test.yaml (document 2): skipped Widget w: not a pod or pod workload",
    )


def test_kept_kinds_are_not_noted() -> None:
    docs = "\n---\n".join(f"kind: {kind}\nmetadata: {{name: x}}" for kind in KEPT_KINDS)
    assert _load(docs) == LoadResult()


# --------------------------------------------------------------------------- ConfigMaps and Secrets

DATA_OBJECTS = """
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: ud}
    data:
      runcmd: |
        - echo from-configmap
      hello: world
      script: |
        #!/bin/sh
        echo hi
        echo there
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: keys}
    data:
      authorized_keys: c3NoLXJzYSBBQUFBIGFAYgpzc2gtZWQyNTUxOSBCQkJCIGNAZAo=
    ---
"""


def test_user_data_and_ssh_keys_from_configmap_and_secret() -> None:
    (pod,) = _load(
        DATA_OBJECTS
        + """
    kind: Pod
    metadata:
      name: p
      annotations:
        kubernetes.io/target-runtime: virtlet.cloud
        VirtletCloudInitUserDataSource: configmap/ud
        VirtletCloudInitUserData: |
          runcmd: [echo from-annotation]
        VirtletSSHKeySource: secret/keys
        VirtletSSHKeys: ssh-rsa CCCC e@f
    spec: {containers: [{name: vm, image: i}]}
    """
    ).pods
    assert {(o.kind, o.name) for o in pod.data_objects} == {(DataKind.CONFIGMAP, "ud"), (DataKind.SECRET, "keys")}
    merged = datasources.merged_user_data(pod)
    assert merged["runcmd"] == ["echo from-configmap", "echo from-annotation"]
    assert merged["hello"] == "world"
    assert datasources.ssh_keys(pod) == ("ssh-rsa AAAA a@b", "ssh-ed25519 BBBB c@d", "ssh-rsa CCCC e@f")


def test_source_key_script_is_kept_verbatim() -> None:
    (pod,) = _load(
        DATA_OBJECTS
        + """
    kind: Pod
    metadata:
      name: p
      annotations:
        kubernetes.io/target-runtime: virtlet.cloud
        VirtletCloudInitUserDataSource: configmap/ud
        VirtletCloudInitUserDataSourceKey: script
    spec: {containers: [{name: vm, image: i}]}
    """
    ).pods
    assert datasources.user_data_script(pod) == "#!/bin/sh\necho hi\necho there\n"


def test_volumes_and_env_use_the_objects() -> None:
    (pod,) = _load(
        DATA_OBJECTS
        + """
    kind: Pod
    metadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}
    spec:
      containers:
      - name: vm
        image: i
        env:
        - {name: HELLO, valueFrom: {configMapKeyRef: {name: ud, key: hello}}}
        envFrom:
        - {secretRef: {name: keys}, prefix: S_}
        volumeMounts: [{name: cfg, mountPath: /etc/cfg}]
      volumes:
      - {name: cfg, configMap: {name: ud, items: [{key: hello, path: hello.txt}]}}
    """
    ).pods
    assert [(e.name, e.value.splitlines()[0]) for e in pod.container.env] == [
        ("S_authorized_keys", "ssh-rsa AAAA a@b"),
        ("HELLO", "world"),
    ]
    assert pod.data_object(DataKind.CONFIGMAP, "ud") is not None


@pytest.mark.parametrize(
    ("snippet", "path", "name"),
    [
        (
            "annotations: {VirtletCloudInitUserDataSource: configmap/nope}",
            "metadata.annotations.VirtletCloudInitUserDataSource",
            "configmap 'nope'",
        ),
        (
            "annotations: {VirtletSSHKeySource: secret/nope/key}",
            "metadata.annotations.VirtletSSHKeySource",
            "secret 'nope'",
        ),
        (
            "annotations: {VirtletFilesFromDataSource: secret/nope}",
            "metadata.annotations.VirtletFilesFromDataSource",
            "secret 'nope'",
        ),
        ("volumes: [{name: v, configMap: {name: nope}}]", "spec.volumes[0].configMap.name", "configmap 'nope'"),
        ("volumes: [{name: v, secret: {secretName: nope}}]", "spec.volumes[0].secret.secretName", "secret 'nope'"),
        (
            "env: [{name: E, valueFrom: {secretKeyRef: {name: nope, key: k}}}]",
            "spec.containers[0].env[0].valueFrom.secretKeyRef.name",
            "secret 'nope'",
        ),
        (
            "envFrom: [{configMapRef: {name: nope}}]",
            "spec.containers[0].envFrom[0].configMapRef.name",
            "configmap 'nope'",
        ),
    ],
)
def test_missing_configmap_or_secret_is_an_error_naming_it(snippet: str, path: str, name: str) -> None:
    annotations = {"kubernetes.io/target-runtime": "virtlet.cloud"}
    container: dict[str, Any] = {"name": "vm", "image": "i"}
    spec: dict[str, Any] = {"containers": [container]}
    part = yaml.safe_load(snippet)
    if "annotations" in part:
        annotations.update(part["annotations"])
    elif "volumes" in part:
        spec["volumes"] = part["volumes"]
    else:
        container.update(part)
    doc = {"kind": "Pod", "metadata": {"name": "p", "annotations": annotations}, "spec": spec}
    with pytest.raises(SpecError) as info:
        load_manifest_text(json.dumps(doc), "m.json")
    (error,) = _errors(info.value)
    assert error.path == path
    assert f"{name} not found" in error.message
    assert str(error).startswith(f"m.json: {path}: ")


def test_optional_references_may_be_missing() -> None:
    (pod,) = _load("""
    kind: Pod
    metadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}
    spec:
      containers:
      - {name: vm, image: i, env: [{name: E, valueFrom: {configMapKeyRef: {name: x, key: k, optional: true}}}]}
      volumes: [{name: v, secret: {secretName: nope, optional: true}}]
    """).pods
    assert pod.container.env == ()


def test_missing_key_and_bad_source_values_are_errors() -> None:
    errors = _load_errors("""
    kind: ConfigMap
    metadata: {name: ud}
    data: {good: "a: 1", bad: "a: [1"}
    ---
    kind: Pod
    metadata:
      name: p
      annotations:
        kubernetes.io/target-runtime: virtlet.cloud
        VirtletCloudInitUserDataSource: configmap/ud
        VirtletSSHKeySource: configmap/ud/missing
    spec: {containers: [{name: vm, image: i}]}
    """)
    messages = {e.path: e.message for e in errors}
    assert "invalid YAML" in messages["metadata.annotations.VirtletCloudInitUserDataSource"]
    assert "has no key 'missing'" in messages["metadata.annotations.VirtletSSHKeySource"]


# --------------------------------------------------------------------------- VM pod rules


def test_pod_without_the_runtime_annotation_is_not_a_vm_pod() -> None:
    text = """
    kind: Pod
    metadata: {name: web}
    spec: {containers: [{name: nginx, image: nginx}]}
    """
    (error,) = _load_errors(text)
    assert error.path == "metadata.annotations.kubernetes.io/target-runtime"
    assert error.message.startswith("not a VM pod")
    assert "--accept-non-vm" in error.message
    assert error.accepted == "virtlet.cloud"
    (pod,) = _load(text, accept_non_vm=True).pods
    assert pod.container.image == "nginx"


def test_other_runtime_is_not_a_vm_pod() -> None:
    (error,) = _load_errors("""
    kind: Deployment
    metadata: {name: d}
    spec:
      template:
        metadata: {annotations: {kubernetes.io/target-runtime: runc}}
        spec: {containers: [{name: c, image: i}]}
    """)
    assert error.path == "spec.template.metadata.annotations.kubernetes.io/target-runtime"
    assert error.value == "runc"
    assert "not a VM pod" in error.message


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("containers: [{name: a, image: i}, {name: b, image: i}]", "spec.containers"),
        ("containers: []", "spec.containers"),
        ("initContainers: [{name: init, image: busybox}]\n  containers: [{name: a, image: i}]", "spec.initContainers"),
    ],
)
def test_vm_pods_have_exactly_one_container(spec: str, path: str) -> None:
    errors = _load_errors(f"""
kind: Pod
metadata: {{name: p, annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}}}
spec:
  {spec}
""")
    assert [e.path for e in errors] == [path]
    assert "VM pods have exactly one container" in errors[0].message


def test_all_errors_of_all_documents_are_reported() -> None:
    errors = _load_errors("""
    kind: Pod
    metadata:
      name: a
      annotations: {kubernetes.io/target-runtime: virtlet.cloud, VirtletVCPUCount: "0", VirtletDiskDriver: ide}
    spec:
      containers:
      - name: vm
        image: i
        resources: {limits: {memory: 1.5}}
        volumeMounts: [{name: nope, mountPath: relative}]
      volumes: [{name: v, nfs: {server: s, path: /}}]
    ---
    kind: StatefulSet
    metadata: {name: s}
    spec:
      replicas: many
      template:
        metadata: {annotations: {kubernetes.io/target-runtime: virtlet.cloud, VirtletRootVolumeSize: huge}}
        spec: {containers: [{name: vm, image: 3}]}
    """)
    where = sorted((str(e).split(": ")[0], e.path) for e in errors)
    assert where == sorted(
        [
            ("test.yaml (document 1)", "metadata.annotations.VirtletVCPUCount"),
            ("test.yaml (document 1)", "metadata.annotations.VirtletDiskDriver"),
            ("test.yaml (document 1)", "spec.containers[0].resources.limits.memory"),
            ("test.yaml (document 1)", "spec.containers[0].volumeMounts[0].name"),
            ("test.yaml (document 1)", "spec.containers[0].volumeMounts[0].mountPath"),
            ("test.yaml (document 1)", "spec.volumes[0].nfs"),
            ("test.yaml (document 2)", "spec.replicas"),
            ("test.yaml (document 2)", "spec.template.metadata.annotations.VirtletRootVolumeSize"),
            ("test.yaml (document 2)", "spec.template.spec.containers[0].image"),
        ]
    )


def test_errors_of_several_files_are_all_reported(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "kind: Pod\nmetadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}\n"
        "spec: {containers: [{name: vm, image: i}]}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: {name: Bad}\n")
    with pytest.raises(SpecError) as info:
        load_manifest_files([good, bad, tmp_path / "missing.yaml", tmp_path])
    sources = [e.source for e in _errors(info.value)]
    assert str(bad) in sources
    assert str(tmp_path / "missing.yaml") in sources
    assert str(tmp_path) in sources
    assert str(good) not in sources


def test_duplicate_pod_names() -> None:
    pod = (
        "kind: Pod\nmetadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}\n"
        "spec: {containers: [{name: vm, image: i}]}\n"
    )
    (error,) = _load_errors(pod + "---\n" + pod)
    assert error.message == "duplicate pod name in the input"


def test_duplicate_pod_names_across_files(tmp_path: Path) -> None:
    pod = (
        "kind: Pod\nmetadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}\n"
        "spec: {containers: [{name: vm, image: i}]}\n"
    )
    (tmp_path / "a.yaml").write_text(pod)
    (tmp_path / "b.yaml").write_text(pod)
    with pytest.raises(SpecError) as info:
        load_manifest_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    (error,) = _errors(info.value)
    assert error.source == str(tmp_path / "b.yaml")
    assert str(tmp_path / "a.yaml") in error.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("kind: Pod\nx: !!binary aGk=\n", "not supported"),
        ("kind: [", "invalid YAML"),
        pytest.param("[" * 1000 + "]" * 1000, "nested too deeply", id="deep"),
        pytest.param(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(7)
            ),
            "too large after expanding aliases",
            id="alias-bomb",
        ),
        ("- 1\n- 2\n", "must be a mapping"),
        ("kind: 5\n", "missing or invalid kind"),
    ],
)
def test_unreadable_input(text: str, message: str) -> None:
    errors = _load_errors(text)
    assert any(message in e.message for e in errors), [e.message for e in errors]


def test_json_input_is_read_as_json() -> None:
    doc = {
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "annotations": {"kubernetes.io/target-runtime": "virtlet.cloud", "note": "\x85\u2028 fine in JSON"},
        },
        "spec": {"containers": [{"name": "vm", "image": "i"}]},
    }
    text = (
        json.dumps(doc, ensure_ascii=False) + "\n" + json.dumps({**doc, "metadata": {**doc["metadata"], "name": "q"}})
    )
    assert [p.name for p in load_manifest_text(text).pods] == ["p", "q"]
    assert load_manifest_text(text).pods[0].annotations["note"] == "\x85\u2028 fine in JSON"


def test_dates_stay_strings() -> None:
    (pod,) = _load("""
    kind: Pod
    metadata:
      name: p
      annotations: {kubernetes.io/target-runtime: virtlet.cloud, VirtletCloudInitUserData: "day: 2024-01-01"}
    spec: {containers: [{name: vm, image: i}]}
    """).pods
    assert pod.vm.cloud_init_user_data == {"day": "2024-01-01"}


@pytest.mark.parametrize(
    ("kind", "name", "replicas", "message"),
    [
        ("StatefulSet", "a.b", 1, "must be DNS labels"),
        ("StatefulSet", "x" * 62, 10, "must be DNS labels"),
        ("Deployment", "Upper", 1, "invalid name"),
    ],
)
def test_workload_names(kind: str, name: str, replicas: int, message: str) -> None:
    text = _workload(kind, f"  replicas: {replicas}\n").replace("name: w,", f"name: '{name}',")
    errors = _load_errors(text)
    assert [e.path for e in errors] == ["metadata.name"]
    assert message in errors[0].message


@pytest.mark.parametrize(
    ("container", "path", "message"),
    [
        ("{name: vm, image: ''}", "spec.containers[0].image", "must not be empty"),
        ("{name: VM, image: i}", "spec.containers[0].name", "invalid container name"),
        (
            "{name: vm, image: i, readinessProbe: {grpc: {port: 1}}}",
            "spec.containers[0].readinessProbe.grpc",
            "grpc probes are not supported",
        ),
        (
            "{name: vm, image: i, ports: [{containerPort: 70000}]}",
            "spec.containers[0].ports[0].containerPort",
            "at most 65535",
        ),
        (
            "{name: vm, image: i, volumeDevices: [{name: v, devicePath: /dev/x}]}",
            "spec.containers[0].volumeDevices[0].name",
            "need a persistentVolumeClaim",
        ),
    ],
)
def test_container_errors(container: str, path: str, message: str) -> None:
    errors = _load_errors(f"""
kind: Pod
metadata: {{name: p, annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}}}
spec:
  containers: [{container}]
  volumes: [{{name: v, emptyDir: {{}}}}]
""")
    assert [(e.path, message in e.message) for e in errors] == [(path, True)]


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ("{type: qcow2, capacity: 0}", "capacity", "must not be zero"),
        ("{type: qcow2, capacity: 10 parsecs}", "capacity", "invalid capacity"),
        ("{type: qcow2, part: '\u00b2'}", "part", "invalid partition number"),
        ("{type: raw, path: /tmp/x}", "path", "must start with /dev/"),
        ("{type: lvm}", "type", "unsupported flexvolume type"),
    ],
)
def test_flexvolume_errors(options: str, path: str, message: str) -> None:
    errors = _load_errors(f"""
kind: Pod
metadata: {{name: p, annotations: {{kubernetes.io/target-runtime: virtlet.cloud}}}}
spec:
  containers: [{{name: vm, image: i}}]
  volumes: [{{name: f, flexVolume: {{driver: virtlet/flexvolume_driver, options: {options}}}}}]
""")
    assert [(e.path, message in e.message) for e in errors] == [(f"spec.volumes[0].flexVolume.options.{path}", True)]


def test_probe_and_defaults() -> None:
    (pod,) = load_manifest_files([VIRTLET_EXAMPLES / "k8s.yaml"]).pods[:1]
    assert pod.container.readiness_probe is not None
    assert pod.container.readiness_probe.handler == TCPSocketAction(port=22)
    assert pod.container.readiness_probe.initial_delay_seconds == 5
    assert pod.restart_policy is RestartPolicy.ALWAYS


def test_load_result_lookup() -> None:
    result = load_manifest_files([VIRTLET_EXAMPLES / "k8s.yaml"])
    assert result.pod("k8s-1").name == "k8s-1"
    with pytest.raises(SpecError, match="no pod named"):
        result.pod("k8s-9")


def test_our_examples_validate() -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    result = load_manifest_files(examples)
    assert {"minimal-vm", "web-0", "web-1", "web-2", "debian-from-configmap", "vm-with-volumes"} <= {
        p.name for p in result.pods
    }
    (web,) = [p for p in result.pods if p.name == "web-2"]
    assert web.container.env[0].value == "web-2"
    (debian,) = [p for p in result.pods if p.name == "debian-from-configmap"]
    assert len(datasources.ssh_keys(debian)) == 2
    assert datasources.merged_user_data(debian)["runcmd"] == [
        ["systemctl", "enable", "--now", "ssh"],
        ["touch", "/var/lib/first-boot-done"],
    ]
    (volumes,) = [p for p in result.pods if p.name == "vm-with-volumes"]
    assert [convert.unstructure(v, Volume)["kind"] for v in volumes.volumes] == [
        "flexVolume",
        "hostPath",
        "emptyDir",
        "configMap",
        "persistentVolumeClaim",
    ]
