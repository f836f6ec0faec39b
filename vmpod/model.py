"""The typed description of a VM pod.

Every class here is a frozen attrs class; collections are tuples and
read-only mappings.  A :class:`VMPod` is built once, by
:mod:`vmpod.manifest` (from Kubernetes manifests) or by the CRI adapter, and
is valid by construction: consumers (cloud-init, the machine builder, the
runtime) never re-validate it.

Field names are the Python (snake_case) spelling of the Kubernetes fields;
:mod:`vmpod.convert` turns every class into plain data and back.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from vmpod.quantity import Quantity

__all__ = [
    "TARGET_RUNTIME_ANNOTATION",
    "VIRTLET_RUNTIME",
    "CPUFeature",
    "CPUModel",
    "CPUModelMode",
    "CPUTopology",
    "CephFlexOptions",
    "CloudInitImageType",
    "ConfigMapVolume",
    "Container",
    "ContainerPort",
    "DataKind",
    "DataObject",
    "DataSourceRef",
    "DiskDriver",
    "EmptyDirVolume",
    "EnvVar",
    "ExecAction",
    "FlexOptions",
    "FlexVolume",
    "HTTPGetAction",
    "HTTPHeader",
    "HostPathVolume",
    "KeyToPath",
    "LibvirtCPU",
    "PersistentVolumeClaimVolume",
    "PersistentVolumeSource",
    "Probe",
    "ProbeHandler",
    "PullPolicy",
    "Qcow2FlexOptions",
    "RawFlexOptions",
    "ResourceList",
    "Resources",
    "RestartPolicy",
    "SecretVolume",
    "SourceEncoding",
    "TCPSocketAction",
    "VMPod",
    "VMSettings",
    "Volume",
    "VolumeDevice",
    "VolumeMount",
]

#: The annotation that marks a pod as a VM pod, and its one accepted value.
TARGET_RUNTIME_ANNOTATION = "kubernetes.io/target-runtime"
VIRTLET_RUNTIME = "virtlet.cloud"


# --------------------------------------------------------------------------- enums


class DiskDriver(enum.StrEnum):
    """Bus for every disk of the VM (``VirtletDiskDriver``)."""

    SCSI = "scsi"
    VIRTIO = "virtio"


class CloudInitImageType(enum.StrEnum):
    """Layout of the cloud-init seed (``VirtletCloudInitImageType``)."""

    NOCLOUD = "nocloud"
    CONFIGDRIVE = "configdrive"


class SourceEncoding(enum.StrEnum):
    """Encoding of the user-data script taken from a source key."""

    PLAIN = "plain"
    BASE64 = "base64"


class CPUModel(enum.StrEnum):
    """``VirtletCPUModel``: ``host-model`` exposes the host CPU (with vmx) for nested virtualization."""

    HOST_MODEL = "host-model"


class DataKind(enum.StrEnum):
    """Kind of a Kubernetes object holding data (for ``*Source`` annotations)."""

    CONFIGMAP = "configmap"
    SECRET = "secret"


class PullPolicy(enum.StrEnum):
    """The container's ``imagePullPolicy``."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class RestartPolicy(enum.StrEnum):
    """The pod's ``restartPolicy``."""

    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class CPUModelMode(enum.StrEnum):
    """libvirt ``<cpu mode=...>``."""

    CUSTOM = "custom"
    HOST_MODEL = "host-model"
    HOST_PASSTHROUGH = "host-passthrough"
    MAXIMUM = "maximum"


# --------------------------------------------------------------------------- small parts


@attrs.frozen
class DataSourceRef:
    """A reference to a ConfigMap or Secret in the pod's namespace (``configmap/NAME[/KEY]``)."""

    kind: DataKind
    name: str
    key: str | None = None

    def __str__(self) -> str:
        text = f"{self.kind.value}/{self.name}"
        return f"{text}/{self.key}" if self.key is not None else text


@attrs.frozen
class DataObject:
    """A ConfigMap or Secret from the same input, kept because the pod refers to it.

    ``data`` holds text values, ``binary_data`` values that are not UTF-8
    (a Secret's decoded ``data``, a ConfigMap's ``binaryData``).
    """

    kind: DataKind
    name: str
    namespace: str = "default"
    data: Mapping[str, str] = attrs.field(factory=dict)
    binary_data: Mapping[str, bytes] = attrs.field(factory=dict)

    def get_bytes(self, key: str) -> bytes | None:
        """The value under ``key`` as bytes, or None when there is no such key."""
        if key in self.data:
            return self.data[key].encode()
        return self.binary_data.get(key)

    def key_names(self) -> tuple[str, ...]:
        """Every key, sorted."""
        return tuple(sorted({*self.data, *self.binary_data}))


@attrs.frozen
class CPUFeature:
    """One ``<feature policy=... name=.../>`` of a libvirt CPU definition."""

    name: str
    policy: str = "require"


@attrs.frozen
class CPUTopology:
    """libvirt ``<topology sockets cores threads/>``."""

    sockets: int = 1
    cores: int = 1
    threads: int = 1


@attrs.frozen
class LibvirtCPU:
    """A whole libvirt ``<cpu>`` element (``VirtletLibvirtCPUSetting``)."""

    mode: CPUModelMode | None = None
    match: str | None = None
    check: str | None = None
    model: str | None = None
    model_fallback: str | None = None
    vendor: str | None = None
    topology: CPUTopology | None = None
    features: tuple[CPUFeature, ...] = ()
    #: ``<model vendor_id=...>``: the CPU vendor the guest sees (``model: {vendorid: ...}``).
    model_vendor_id: str | None = None


# --------------------------------------------------------------------------- VM settings


@attrs.frozen
class VMSettings:
    """Typed values of every Virtlet annotation, with Virtlet's defaults.

    :mod:`vmpod.annotations` maps each field to its annotation and back.
    """

    vcpu_count: int = 1
    disk_driver: DiskDriver = DiskDriver.SCSI
    cloud_init_image_type: CloudInitImageType = CloudInitImageType.NOCLOUD
    cloud_init_meta_data: Mapping[str, Any] | None = None
    cloud_init_user_data: Mapping[str, Any] | None = None
    cloud_init_user_data_overwrite: bool = False
    cloud_init_user_data_script: str | None = None
    cloud_init_user_data_source: DataSourceRef | None = None
    cloud_init_user_data_source_key: str | None = None
    cloud_init_user_data_source_encoding: SourceEncoding = SourceEncoding.PLAIN
    ssh_keys: tuple[str, ...] = ()
    ssh_key_source: DataSourceRef | None = None
    root_volume_size: int | None = None
    cpu_model: CPUModel | None = None
    libvirt_cpu_setting: LibvirtCPU | None = None
    system_uuid: uuid.UUID | None = None
    force_dhcp_network_config: bool = False
    chown_9pfs_mounts: bool = False
    files_from_data_source: DataSourceRef | None = None


# --------------------------------------------------------------------------- container


@attrs.frozen
class EnvVar:
    """An environment variable of the VM container, its value resolved."""

    name: str
    value: str = ""


@attrs.frozen
class ResourceList:
    """CPU and memory of ``resources.limits`` or ``resources.requests``; other resources kept as-is."""

    cpu: Quantity | None = None
    memory: Quantity | None = None
    other: Mapping[str, Quantity] = attrs.field(factory=dict)


@attrs.frozen
class Resources:
    """The container's ``resources``."""

    limits: ResourceList = ResourceList()
    requests: ResourceList = ResourceList()


@attrs.frozen
class VolumeMount:
    """A ``volumeMounts`` entry: a pod volume mounted at ``mount_path`` in the guest."""

    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""


@attrs.frozen
class VolumeDevice:
    """A ``volumeDevices`` entry: a block volume seen as ``device_path`` in the guest (``/``: the root)."""

    name: str
    device_path: str


@attrs.frozen
class ContainerPort:
    """A ``ports`` entry."""

    container_port: int
    name: str = ""
    protocol: str = "TCP"
    host_port: int | None = None
    host_ip: str = ""


@attrs.frozen
class TCPSocketAction:
    """A probe that connects to a TCP port of the VM."""

    port: int | str
    host: str = ""


@attrs.frozen
class HTTPHeader:
    """An HTTP header sent by an ``httpGet`` probe."""

    name: str
    value: str


@attrs.frozen
class HTTPGetAction:
    """A probe that GETs a URL on the VM."""

    port: int | str
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    http_headers: tuple[HTTPHeader, ...] = ()


@attrs.frozen
class ExecAction:
    """A probe that runs a command (not supported for VM pods until a guest agent exists)."""

    command: tuple[str, ...] = ()


ProbeHandler = TCPSocketAction | HTTPGetAction | ExecAction


@attrs.frozen
class Probe:
    """A readiness or liveness probe with Kubernetes' timings (seconds) and defaults."""

    handler: ProbeHandler
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@attrs.frozen
class Container:
    """The single container of a VM pod: the VM itself."""

    name: str
    image: str
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    env: tuple[EnvVar, ...] = ()
    tty: bool = False
    stdin: bool = False
    resources: Resources = Resources()
    volume_mounts: tuple[VolumeMount, ...] = ()
    volume_devices: tuple[VolumeDevice, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None


# --------------------------------------------------------------------------- volumes


@attrs.frozen
class EmptyDirVolume:
    """``emptyDir``: a fresh directory (or, for a VM, a fresh disk) that lives as long as the pod."""

    name: str
    medium: str = ""
    size_limit: Quantity | None = None


@attrs.frozen
class HostPathVolume:
    """``hostPath``: a file or directory of the node."""

    name: str
    path: str
    type: str = ""


@attrs.frozen
class KeyToPath:
    """An ``items`` entry of a configMap or secret volume."""

    key: str
    path: str
    mode: int | None = None


@attrs.frozen
class ConfigMapVolume:
    """``configMap``: the keys of a ConfigMap as files (delivered through cloud-init ``write_files``)."""

    name: str
    config_map_name: str
    items: tuple[KeyToPath, ...] = ()
    default_mode: int = 0o644
    optional: bool = False


@attrs.frozen
class SecretVolume:
    """``secret``: the keys of a Secret as files (delivered through cloud-init ``write_files``)."""

    name: str
    secret_name: str
    items: tuple[KeyToPath, ...] = ()
    default_mode: int = 0o644
    optional: bool = False


@attrs.frozen
class PersistentVolumeSource:
    """Where a bound PersistentVolume from the same input lives on the node, when it says.

    ``path`` is set for ``local`` and ``hostPath`` volumes; ``kind`` names the
    PV's source (``local``, ``hostPath``, ``nfs``, ``rbd``...).
    """

    kind: str
    path: str | None = None
    volume_mode: str = "Filesystem"
    capacity: Quantity | None = None


@attrs.frozen
class PersistentVolumeClaimVolume:
    """``persistentVolumeClaim``: a claim, with its bound volume when the input contains it.

    ``volume_mode`` is the claim's ``volumeMode`` (``Filesystem`` or ``Block``),
    or empty when the claim is not part of the input.
    """

    name: str
    claim_name: str
    read_only: bool = False
    volume_mode: str = ""
    persistent_volume: PersistentVolumeSource | None = None


@attrs.frozen
class Qcow2FlexOptions:
    """Virtlet flexvolume ``type: qcow2``: an ephemeral qcow2 disk of ``capacity`` bytes."""

    capacity: int = 1024 * 1000 * 1000
    part: int | None = None


@attrs.frozen
class RawFlexOptions:
    """Virtlet flexvolume ``type: raw`` (deprecated): a host block device."""

    path: str
    part: int | None = None


@attrs.frozen
class CephFlexOptions:
    """Virtlet flexvolume ``type: ceph`` (deprecated): an RBD image."""

    monitor: str
    user: str
    secret: str
    pool: str
    volume: str
    protocol: str = "rbd"
    part: int | None = None


FlexOptions = Qcow2FlexOptions | RawFlexOptions | CephFlexOptions


@attrs.frozen
class FlexVolume:
    """``flexVolume`` with driver ``virtlet/flexvolume_driver``."""

    name: str
    options: FlexOptions
    driver: str = "virtlet/flexvolume_driver"


Volume = (
    EmptyDirVolume
    | HostPathVolume
    | ConfigMapVolume
    | SecretVolume
    | PersistentVolumeClaimVolume
    | FlexVolume
)


# --------------------------------------------------------------------------- the pod


@attrs.frozen
class VMPod:
    """One VM pod: identity, its one VM container, its volumes and typed VM settings.

    ``annotations`` keeps every annotation as written (Virtlet's included);
    ``vm`` holds the typed values parsed from them.  ``data_objects`` are
    the ConfigMaps and Secrets of the same input that the pod refers to.
    """

    name: str
    container: Container
    namespace: str = "default"
    uid: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    hostname: str | None = None
    subdomain: str | None = None
    volumes: tuple[Volume, ...] = ()
    vm: VMSettings = VMSettings()
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    termination_grace_period_seconds: int = 30
    data_objects: tuple[DataObject, ...] = ()

    @property
    def full_name(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def instance_id(self) -> str:
        """The cloud-init instance id, ``<name>.<namespace>`` as in Virtlet."""
        return f"{self.name}.{self.namespace}"

    @property
    def guest_hostname(self) -> str:
        """The hostname the guest gets: ``hostname`` when set, else the pod name."""
        return self.hostname or self.name

    @property
    def memory_limit_bytes(self) -> int | None:
        """``resources.limits.memory`` in bytes (rounded up), or None when unset."""
        memory = self.container.resources.limits.memory
        return memory.ceil() if memory is not None else None

    def volume(self, name: str) -> Volume | None:
        """The pod volume called ``name``, or None."""
        for volume in self.volumes:
            if volume.name == name:
                return volume
        return None

    def data_object(self, kind: DataKind, name: str) -> DataObject | None:
        """The referenced ConfigMap or Secret ``name``, or None."""
        for obj in self.data_objects:
            if obj.kind == kind and obj.name == name:
                return obj
        return None
