"""Hypothesis strategies for vmpod's model and for raw Kubernetes manifests.

Public API: other projects (plugins, backends, tools built on vmpod) use these
in their own property tests.

Model objects
    One strategy per class of :mod:`vmpod.model` (``vm_pods()``,
    ``vm_settings()``, ``containers()``, ``volumes()``...), listed in
    :data:`MODEL_STRATEGIES`.  They build *valid* objects: names are DNS
    labels or subdomains, container mounts refer to pod volumes, a pod's
    ConfigMaps and Secrets hold what its annotations need, and
    ``vm_settings()`` survives a trip through its annotations
    (``parse_annotations(format_annotations(s)) == s``).
    :func:`register_type_strategies` makes ``st.from_type(VMPod)`` and
    friends use them.

Raw manifests
    :func:`raw_manifests` gives YAML (or JSON) text: ``valid=True`` input
    that loads without errors, ``valid=False`` input that is certainly
    refused.  :func:`hostile_manifests` gives anything at all (wrong types
    anywhere, deep nesting, huge numbers, unicode, aliases, garbage): the
    loader must return VM pods or raise :class:`~vmpod.errors.SpecError`,
    never anything else.  :func:`manifest_cases` gives valid manifests with
    what loading them must produce.

Annotation maps
    :func:`annotation_maps` (``valid=True``: what ``format_annotations``
    writes; ``valid=False``: one bad value), :func:`hostile_annotation_maps`,
    and :data:`BAD_ANNOTATION_VALUES` (known-bad values per annotation).

Example::

    from hypothesis import given
    from vmpod.testing import strategies as vs

    @given(vs.vm_pods())
    def test_my_backend_accepts_every_pod(pod):
        assert my_backend.machine_for(pod).vcpus == pod.vm.vcpu_count
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from hypothesis import assume
from hypothesis import strategies as st

from vmpod.annotations import ANNOTATIONS, format_annotations
from vmpod.manifest import WORKLOAD_KINDS
from vmpod.model import (
    TARGET_RUNTIME_ANNOTATION,
    VIRTLET_RUNTIME,
    CephFlexOptions,
    CloudInitImageType,
    ConfigMapVolume,
    Container,
    ContainerPort,
    CPUFeature,
    CPUModel,
    CPUModelMode,
    CPUTopology,
    DataKind,
    DataObject,
    DataSourceRef,
    DiskDriver,
    EmptyDirVolume,
    EnvVar,
    ExecAction,
    FlexVolume,
    HostPathVolume,
    HTTPGetAction,
    HTTPHeader,
    KeyToPath,
    LibvirtCPU,
    PersistentVolumeClaimVolume,
    PersistentVolumeSource,
    Probe,
    PullPolicy,
    Qcow2FlexOptions,
    RawFlexOptions,
    ResourceList,
    Resources,
    RestartPolicy,
    SecretVolume,
    SourceEncoding,
    TCPSocketAction,
    VMPod,
    VMSettings,
    Volume,
    VolumeDevice,
    VolumeMount,
)
from vmpod.quantity import Quantity, parse_quantity
from vmpod.yamlutil import dump_yaml, dump_yaml_all

__all__ = [
    "BAD_ANNOTATION_VALUES",
    "MODEL_STRATEGIES",
    "ManifestCase",
    "absolute_paths",
    "annotation_maps",
    "ceph_flex_options",
    "config_keys",
    "config_map_volumes",
    "container_ports",
    "containers",
    "cpu_features",
    "cpu_topologies",
    "data_objects",
    "data_source_refs",
    "dns_labels",
    "dns_subdomains",
    "empty_dir_volumes",
    "env_vars",
    "exec_actions",
    "flex_options",
    "flex_volumes",
    "host_path_volumes",
    "hostile_annotation_maps",
    "hostile_manifests",
    "http_get_actions",
    "http_headers",
    "json_maps",
    "json_values",
    "key_to_paths",
    "label_keys",
    "label_values",
    "libvirt_cpus",
    "manifest_cases",
    "persistent_volume_claim_volumes",
    "persistent_volume_sources",
    "probe_handlers",
    "probes",
    "qcow2_flex_options",
    "quantities",
    "quantity_texts",
    "raw_flex_options",
    "raw_manifests",
    "register_type_strategies",
    "resource_lists",
    "resources",
    "secret_volumes",
    "ssh_keys",
    "tcp_socket_actions",
    "vm_pods",
    "vm_settings",
    "volume_devices",
    "volume_mounts",
    "volumes",
]

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]

# --------------------------------------------------------------------------- names and scalars


_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
#: Text that every layer can carry: any Unicode scalar value except surrogates and NUL.
_TEXT = st.characters(codec="utf-8", exclude_characters="\x00")


@functools.cache
def dns_labels(max_size: int = 63) -> st.SearchStrategy[str]:
    """RFC 1123 labels: lower-case alphanumerics and ``-``, alphanumeric at both ends."""
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    size = min(max_size, 63)
    ends = st.sampled_from(_ALNUM)
    single = ends
    if size < 2:
        return single
    middle = st.text(_ALNUM + "-", max_size=size - 2)
    return single | st.tuples(ends, middle, ends).map("".join)


@functools.cache
def dns_subdomains(max_size: int = 253) -> st.SearchStrategy[str]:
    """RFC 1123 subdomains: one to four DNS labels joined by dots."""
    return st.lists(dns_labels(20), min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= max_size)


@functools.cache
def label_values() -> st.SearchStrategy[str]:
    """Kubernetes label values (possibly empty)."""
    return st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?", fullmatch=True))


@functools.cache
def label_keys() -> st.SearchStrategy[str]:
    """Kubernetes label (and annotation) keys: ``[prefix/]name``."""
    name = st.from_regex(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?", fullmatch=True)
    return st.one_of(name, st.tuples(dns_subdomains(60), name).map("/".join))


@functools.cache
def config_keys() -> st.SearchStrategy[str]:
    """ConfigMap and Secret keys: alphanumerics, ``-``, ``_`` and ``.`` (not ``.`` or ``..``)."""
    return st.from_regex(r"[-._a-zA-Z0-9]{1,20}", fullmatch=True).filter(lambda k: k not in (".", ".."))


@functools.cache
def absolute_paths() -> st.SearchStrategy[str]:
    """Absolute POSIX paths without ``..`` components."""
    part = st.from_regex(r"[a-zA-Z0-9_][-.a-zA-Z0-9_]{0,10}", fullmatch=True)
    return st.lists(part, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@functools.cache
def _relative_paths() -> st.SearchStrategy[str]:
    return absolute_paths().map(lambda path: path[1:])


@functools.cache
def quantity_texts(*, integer: bool = False, signed: bool = False) -> st.SearchStrategy[str]:
    """Texts in Kubernetes' quantity syntax (``integer=True``: whole values only, such as byte counts)."""
    sign = st.sampled_from(["", "+", "-"]) if signed else st.sampled_from(["", "+"])
    whole = st.integers(0, 10**6).map(str)
    binary = st.tuples(sign, whole, st.sampled_from(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]))
    decimal_suffix = st.tuples(sign, whole, st.sampled_from(["", "k", "M", "G", "T", "P", "E"]))
    exponent = st.tuples(sign, whole, st.integers(0, 18).map(lambda e: f"e{e}"))
    options: list[st.SearchStrategy[tuple[str, str, str]]] = [binary, decimal_suffix, exponent]
    if not integer:
        fraction = st.tuples(st.integers(0, 999).map(str), st.integers(0, 999).map(lambda n: f"{n:03d}"))
        decimal = fraction.map(lambda p: f"{p[0]}.{p[1]}")
        options += [
            st.tuples(sign, decimal, st.sampled_from(["", "m", "k", "Mi", "Gi", "e-3", "E2"])),
            st.tuples(sign, whole, st.just("m")),
        ]
    return st.one_of(*options).map("".join).filter(lambda text: not integer or parse_quantity(text).is_integer)


@functools.cache
def quantities(*, integer: bool = False, signed: bool = False) -> st.SearchStrategy[Quantity]:
    """:class:`~vmpod.quantity.Quantity` objects parsed from :func:`quantity_texts`."""
    return quantity_texts(integer=integer, signed=signed).map(parse_quantity)


@functools.cache
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """JSON data: what a YAML or JSON annotation such as ``VirtletCloudInitUserData`` can hold."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False), st.text(_TEXT, max_size=20),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(st.text(_TEXT, max_size=10), children, max_size=4)),
        max_leaves=max_leaves,
    )


@functools.cache
def json_maps(max_leaves: int = 12) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings of JSON data with string keys (user-data, meta-data)."""
    return st.dictionaries(st.text(_TEXT, max_size=12), json_values(max_leaves), max_size=5)


@functools.cache
def ssh_keys() -> st.SearchStrategy[str]:
    """Single-line SSH public keys (``ssh-ed25519 AAAA... comment``)."""
    kind = st.sampled_from(["ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256"])
    body = st.binary(min_size=8, max_size=48).map(lambda b: base64.b64encode(b).decode())
    comment = st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}", fullmatch=True)
    return st.tuples(kind, body, comment).map(" ".join)


_IMAGES = st.one_of(
    st.sampled_from(["virtlet.cloud/cirros", "virtlet.cloud/fedora",
                     "virtlet.cloud/cloud-images.ubuntu.com/xenial/current/xenial-server-cloudimg-amd64-disk1.img"]),
    st.tuples(dns_subdomains(40), st.from_regex(r"[a-z0-9][-a-z0-9./]{0,30}[a-z0-9]", fullmatch=True))
    .map(lambda p: f"virtlet.cloud/{p[0]}/{p[1]}"),
)

# --------------------------------------------------------------------------- small parts


@functools.cache
def data_source_refs(kind: DataKind | None = None, *, with_key: bool = False) -> st.SearchStrategy[DataSourceRef]:
    """References such as ``configmap/NAME`` (``with_key=True``: ``configmap/NAME/KEY``)."""
    kinds = st.just(kind) if kind is not None else st.sampled_from(DataKind)
    keys = config_keys() if with_key else st.none()
    return st.builds(DataSourceRef, kind=kinds, name=dns_subdomains(), key=keys)


@functools.cache
def data_objects(kind: DataKind | None = None, name: str | None = None,
                 namespace: str | None = None) -> st.SearchStrategy[DataObject]:
    """ConfigMaps and Secrets with text and binary values (no key in both)."""

    @st.composite
    def build(draw: st.DrawFn) -> DataObject:
        keys = draw(st.lists(config_keys(), unique=True, max_size=6))
        split = draw(st.integers(0, len(keys)))
        return DataObject(
            kind=draw(st.just(kind) if kind is not None else st.sampled_from(DataKind)),
            name=name if name is not None else draw(dns_subdomains()),
            namespace=namespace if namespace is not None else draw(dns_labels()),
            data={key: draw(st.text(_TEXT, max_size=30)) for key in keys[:split]},
            binary_data={key: draw(st.binary(max_size=30)) for key in keys[split:]},
        )

    return build()


@functools.cache
def cpu_features() -> st.SearchStrategy[CPUFeature]:
    """``<feature>`` elements of a libvirt CPU definition."""
    return st.builds(CPUFeature, name=st.from_regex(r"[a-z][a-z0-9_.-]{0,15}", fullmatch=True),
                     policy=st.sampled_from(["force", "require", "optional", "disable", "forbid"]))


@functools.cache
def cpu_topologies() -> st.SearchStrategy[CPUTopology]:
    """``<topology>`` elements (every count at least 1)."""
    counts = st.integers(1, 64)
    return st.builds(CPUTopology, sockets=counts, cores=counts, threads=counts)


@functools.cache
def libvirt_cpus() -> st.SearchStrategy[LibvirtCPU]:
    """Whole ``<cpu>`` definitions as ``VirtletLibvirtCPUSetting`` accepts them."""
    name = st.from_regex(r"[A-Za-z][-A-Za-z0-9_]{0,20}", fullmatch=True)
    return st.builds(
        LibvirtCPU,
        mode=st.none() | st.sampled_from(CPUModelMode),
        match=st.none() | st.sampled_from(["minimum", "exact", "strict"]),
        check=st.none() | st.sampled_from(["none", "partial", "full"]),
        model=st.none() | name,
        model_fallback=st.none() | st.sampled_from(["allow", "forbid"]),
        vendor=st.none() | name,
        topology=st.none() | cpu_topologies(),
        features=st.lists(cpu_features(), max_size=4).map(tuple),
        model_vendor_id=st.none() | name,
    )


# --------------------------------------------------------------------------- VM settings


@functools.cache
def vm_settings(*, sources: bool = True) -> st.SearchStrategy[VMSettings]:
    """Every Virtlet annotation's typed value, each one defaulted or set.

    With ``sources=False`` no ConfigMap or Secret is referenced (the settings
    are then valid on their own).  The values are those the annotation codec
    writes back unchanged: ``parse_annotations(format_annotations(s)) == s``.
    """
    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.none() | strategy

    plain_ref = data_source_refs() if sources else st.none()
    keyed_ref = data_source_refs(with_key=True) if sources else st.none()
    return st.builds(
        VMSettings,
        vcpu_count=st.integers(1, 255),
        disk_driver=st.sampled_from(DiskDriver),
        cloud_init_image_type=st.sampled_from(CloudInitImageType),
        cloud_init_meta_data=maybe(json_maps()),
        cloud_init_user_data=maybe(json_maps()),
        cloud_init_user_data_overwrite=st.booleans(),
        cloud_init_user_data_script=maybe(st.text(_TEXT, min_size=1, max_size=80)),
        cloud_init_user_data_source=st.none() | plain_ref,
        cloud_init_user_data_source_key=st.none() | (config_keys() if sources else st.none()),
        cloud_init_user_data_source_encoding=st.sampled_from(SourceEncoding),
        ssh_keys=st.lists(ssh_keys(), max_size=3).map(tuple),
        ssh_key_source=st.none() | keyed_ref,
        root_volume_size=maybe(st.integers(1, 2**63 - 1)),
        cpu_model=maybe(st.sampled_from(CPUModel)),
        libvirt_cpu_setting=maybe(libvirt_cpus()),
        system_uuid=maybe(st.uuids()),
        force_dhcp_network_config=st.booleans(),
        chown_9pfs_mounts=st.booleans(),
        files_from_data_source=st.none() | plain_ref,
    )


# --------------------------------------------------------------------------- container


@functools.cache
def env_vars() -> st.SearchStrategy[EnvVar]:
    """Environment variables with C-identifier names."""
    return st.builds(EnvVar, name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
                     value=st.text(_TEXT, max_size=30))


@functools.cache
def resource_lists() -> st.SearchStrategy[ResourceList]:
    """``limits``/``requests``: CPU, memory (whole bytes) and other non-negative quantities."""
    return st.builds(
        ResourceList,
        cpu=st.none() | quantities(),
        memory=st.none() | quantities(integer=True),
        other=st.dictionaries(st.sampled_from(["ephemeral-storage", "hugepages-2Mi", "example.com/gpu"]),
                              quantities(integer=True), max_size=2),
    )


@functools.cache
def resources() -> st.SearchStrategy[Resources]:
    """A container's ``resources``."""
    return st.builds(Resources, limits=resource_lists(), requests=resource_lists())


def volume_mounts(names: Sequence[str] | None = None) -> st.SearchStrategy[VolumeMount]:
    """``volumeMounts`` entries (of the volumes called ``names`` when given)."""
    return _volume_mounts(tuple(names or ()))


@functools.cache
def _volume_mounts(names: tuple[str, ...]) -> st.SearchStrategy[VolumeMount]:
    name = st.sampled_from(names) if names else dns_labels()
    return st.builds(VolumeMount, name=name, mount_path=absolute_paths(), read_only=st.booleans(),
                     sub_path=st.just("") | _relative_paths())


def volume_devices(names: Sequence[str] | None = None) -> st.SearchStrategy[VolumeDevice]:
    """``volumeDevices`` entries (of the claims called ``names`` when given)."""
    return _volume_devices(tuple(names or ()))


@functools.cache
def _volume_devices(names: tuple[str, ...]) -> st.SearchStrategy[VolumeDevice]:
    name = st.sampled_from(names) if names else dns_labels()
    return st.builds(VolumeDevice, name=name, device_path=st.just("/") | absolute_paths().map(lambda p: "/dev" + p))


@functools.cache
def _port_names() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z](?:[a-z0-9-]{0,13}[a-z0-9])?", fullmatch=True)


@functools.cache
def container_ports() -> st.SearchStrategy[ContainerPort]:
    """``ports`` entries."""
    ports = st.integers(1, 65535)
    return st.builds(ContainerPort, container_port=ports, name=st.just("") | _port_names(),
                     protocol=st.sampled_from(["TCP", "UDP", "SCTP"]), host_port=st.none() | ports,
                     host_ip=st.sampled_from(["", "127.0.0.1", "0.0.0.0"]))


@functools.cache
def _probe_ports() -> st.SearchStrategy[int | str]:
    return st.one_of(st.integers(1, 65535), _port_names())


@functools.cache
def tcp_socket_actions() -> st.SearchStrategy[TCPSocketAction]:
    """``tcpSocket`` probe handlers."""
    return st.builds(TCPSocketAction, port=_probe_ports(), host=st.sampled_from(["", "127.0.0.1"]))


@functools.cache
def http_headers() -> st.SearchStrategy[HTTPHeader]:
    """Headers of ``httpGet`` probes."""
    return st.builds(HTTPHeader, name=st.from_regex(r"[A-Za-z][-A-Za-z0-9]{0,15}", fullmatch=True),
                     value=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))


@functools.cache
def http_get_actions() -> st.SearchStrategy[HTTPGetAction]:
    """``httpGet`` probe handlers."""
    return st.builds(HTTPGetAction, port=_probe_ports(), path=absolute_paths(), host=st.sampled_from(["", "h"]),
                     scheme=st.sampled_from(["HTTP", "HTTPS"]),
                     http_headers=st.lists(http_headers(), max_size=2).map(tuple))


@functools.cache
def exec_actions() -> st.SearchStrategy[ExecAction]:
    """``exec`` probe handlers."""
    return st.builds(ExecAction, command=st.lists(st.text(_TEXT, max_size=10), max_size=3).map(tuple))


@functools.cache
def probe_handlers() -> st.SearchStrategy[TCPSocketAction | HTTPGetAction | ExecAction]:
    """Any probe handler."""
    return st.one_of(tcp_socket_actions(), http_get_actions(), exec_actions())


@functools.cache
def probes() -> st.SearchStrategy[Probe]:
    """Readiness and liveness probes with Kubernetes' bounds on the timings."""
    return st.builds(Probe, handler=probe_handlers(), initial_delay_seconds=st.integers(0, 3600),
                     period_seconds=st.integers(1, 3600), timeout_seconds=st.integers(1, 3600),
                     success_threshold=st.integers(1, 10), failure_threshold=st.integers(1, 10))


def containers(volume_names: Sequence[str] = (), claim_names: Sequence[str] = ()) -> st.SearchStrategy[Container]:
    """VM containers whose mounts use ``volume_names`` and whose devices use ``claim_names``."""
    return _containers(tuple(volume_names), tuple(claim_names))


@functools.cache
def _containers(volume_names: tuple[str, ...], claim_names: tuple[str, ...]) -> st.SearchStrategy[Container]:

    @st.composite
    def build(draw: st.DrawFn) -> Container:
        mounts = draw(st.lists(volume_mounts(volume_names), max_size=3)) if volume_names else []
        devices = draw(st.lists(volume_devices(claim_names), max_size=3)) if claim_names else []
        roots = [d for d in devices if d.device_path == "/"]
        devices = [d for d in devices if d.device_path != "/"] + roots[:1]
        return Container(
            name=draw(dns_labels()),
            image=draw(_IMAGES),
            image_pull_policy=draw(st.sampled_from(PullPolicy)),
            env=tuple(draw(st.lists(env_vars(), max_size=3))),
            tty=draw(st.booleans()),
            stdin=draw(st.booleans()),
            resources=draw(resources()),
            volume_mounts=tuple(mounts),
            volume_devices=tuple(devices),
            ports=tuple(draw(st.lists(container_ports(), max_size=2))),
            readiness_probe=draw(st.none() | probes()),
            liveness_probe=draw(st.none() | probes()),
        )

    return build()


# --------------------------------------------------------------------------- volumes


@functools.cache
def empty_dir_volumes() -> st.SearchStrategy[EmptyDirVolume]:
    """``emptyDir`` volumes."""
    return st.builds(EmptyDirVolume, name=dns_labels(), medium=st.sampled_from(["", "Memory"]),
                     size_limit=st.none() | quantities(integer=True))


@functools.cache
def host_path_volumes() -> st.SearchStrategy[HostPathVolume]:
    """``hostPath`` volumes."""
    return st.builds(HostPathVolume, name=dns_labels(), path=absolute_paths(),
                     type=st.sampled_from(["", "Directory", "DirectoryOrCreate", "File", "BlockDevice"]))


@functools.cache
def key_to_paths() -> st.SearchStrategy[KeyToPath]:
    """``items`` entries of configMap and secret volumes."""
    return st.builds(KeyToPath, key=config_keys(), path=_relative_paths(), mode=st.none() | st.integers(0, 0o777))


@functools.cache
def config_map_volumes() -> st.SearchStrategy[ConfigMapVolume]:
    """``configMap`` volumes (``optional``, so they need no ConfigMap)."""
    return st.builds(ConfigMapVolume, name=dns_labels(), config_map_name=dns_subdomains(),
                     items=st.lists(key_to_paths(), max_size=2).map(tuple), default_mode=st.integers(0, 0o777),
                     optional=st.booleans())


@functools.cache
def secret_volumes() -> st.SearchStrategy[SecretVolume]:
    """``secret`` volumes."""
    return st.builds(SecretVolume, name=dns_labels(), secret_name=dns_subdomains(),
                     items=st.lists(key_to_paths(), max_size=2).map(tuple), default_mode=st.integers(0, 0o777),
                     optional=st.booleans())


@functools.cache
def persistent_volume_sources() -> st.SearchStrategy[PersistentVolumeSource]:
    """Bound PersistentVolumes, as far as vmpod records them."""
    with_path = st.builds(PersistentVolumeSource, kind=st.sampled_from(["local", "hostPath"]), path=absolute_paths(),
                          volume_mode=st.sampled_from(["Filesystem", "Block"]),
                          capacity=st.none() | quantities(integer=True))
    remote = st.builds(PersistentVolumeSource, kind=st.sampled_from(["nfs", "rbd", "iscsi", "csi", "unknown"]),
                       path=st.none(), volume_mode=st.sampled_from(["Filesystem", "Block"]),
                       capacity=st.none() | quantities(integer=True))
    return with_path | remote


@functools.cache
def persistent_volume_claim_volumes() -> st.SearchStrategy[PersistentVolumeClaimVolume]:
    """``persistentVolumeClaim`` volumes, with or without their claim and volume."""
    return st.builds(PersistentVolumeClaimVolume, name=dns_labels(), claim_name=dns_subdomains(),
                     read_only=st.booleans(), volume_mode=st.sampled_from(["", "Filesystem", "Block"]),
                     persistent_volume=st.none() | persistent_volume_sources())


@functools.cache
def qcow2_flex_options() -> st.SearchStrategy[Qcow2FlexOptions]:
    """Virtlet ``qcow2`` flexvolume options."""
    return st.builds(Qcow2FlexOptions, capacity=st.integers(1, 2**50), part=st.none() | st.integers(0, 999))


@functools.cache
def raw_flex_options() -> st.SearchStrategy[RawFlexOptions]:
    """Virtlet ``raw`` flexvolume options."""
    return st.builds(RawFlexOptions, path=absolute_paths().map(lambda p: "/dev" + p),
                     part=st.none() | st.integers(0, 999))


@functools.cache
def ceph_flex_options() -> st.SearchStrategy[CephFlexOptions]:
    """Virtlet ``ceph`` flexvolume options."""
    ip = st.tuples(*(st.integers(0, 255) for _ in range(4))).map(lambda t: ".".join(map(str, t)))
    word = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
    return st.builds(CephFlexOptions, monitor=st.tuples(ip, st.integers(1, 65535)).map(lambda p: f"{p[0]}:{p[1]}"),
                     user=word, secret=st.binary(min_size=1, max_size=20).map(lambda b: base64.b64encode(b).decode()),
                     pool=word, volume=word, protocol=st.just("rbd"), part=st.none() | st.integers(0, 999))


@functools.cache
def flex_options() -> st.SearchStrategy[Qcow2FlexOptions | RawFlexOptions | CephFlexOptions]:
    """Any Virtlet flexvolume options."""
    return st.one_of(qcow2_flex_options(), raw_flex_options(), ceph_flex_options())


@functools.cache
def flex_volumes() -> st.SearchStrategy[FlexVolume]:
    """``flexVolume`` volumes of Virtlet's driver."""
    return st.builds(FlexVolume, name=dns_labels(), options=flex_options(),
                     driver=st.just("virtlet/flexvolume_driver"))


@functools.cache
def volumes() -> st.SearchStrategy[Volume]:
    """Any pod volume kind."""
    return st.one_of(empty_dir_volumes(), host_path_volumes(), config_map_volumes(), secret_volumes(),
                     persistent_volume_claim_volumes(), flex_volumes())


# --------------------------------------------------------------------------- the pod


def _with_name(volume: Volume, name: str) -> Volume:
    return attrs.evolve(volume, name=name)


_ENTRY_NAMES = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


def _source_objects(draw: st.DrawFn, settings: VMSettings, namespace: str) -> tuple[VMSettings, list[DataObject]]:
    """Objects holding what the settings' sources need (and settings fixed up to need it)."""
    objects: dict[tuple[DataKind, str], DataObject] = {}
    files = settings.files_from_data_source
    others = [(r.kind, r.name) for r in (settings.cloud_init_user_data_source, settings.ssh_key_source) if r]
    if files is not None and (files.kind, files.name) in others:
        # Every key of a files source is a file to inject: it cannot double as another source.
        settings = attrs.evolve(settings, files_from_data_source=attrs.evolve(files, name=files.name + "-files"))

    def holder(ref: DataSourceRef) -> DataObject:
        key = (ref.kind, ref.name)
        if key not in objects:
            objects[key] = DataObject(kind=ref.kind, name=ref.name, namespace=namespace)
        return objects[key]

    def put(ref: DataSourceRef, values: Mapping[str, str]) -> None:
        obj = holder(ref)
        objects[(ref.kind, ref.name)] = attrs.evolve(obj, data={**obj.data, **values})

    source = settings.cloud_init_user_data_source
    script_key = settings.cloud_init_user_data_source_key
    if source is not None:
        # Each value is YAML for one top-level user-data key.
        values = draw(st.dictionaries(config_keys(), json_values(6).map(dump_yaml), max_size=3))
        put(source, values)
    if script_key is not None and settings.cloud_init_user_data_script is None:
        script = draw(st.text(_TEXT, min_size=1, max_size=40))
        if settings.cloud_init_user_data_source_encoding is SourceEncoding.BASE64:
            script = base64.b64encode(script.encode()).decode()
        if source is not None and not settings.cloud_init_user_data_overwrite:
            put(source, {script_key: script})
        else:
            # The script comes from the annotation's user-data instead.
            user_data = dict(settings.cloud_init_user_data or {})
            user_data[script_key] = script
            settings = attrs.evolve(settings, cloud_init_user_data=user_data)
    if settings.ssh_key_source is not None:
        keys = draw(st.lists(ssh_keys(), max_size=3))
        put(settings.ssh_key_source, {settings.ssh_key_source.key or "authorized_keys": "\n".join(keys)})
    if settings.files_from_data_source is not None:
        entries = draw(st.lists(_ENTRY_NAMES, unique=True, max_size=3))
        injected: dict[str, str] = {}
        for entry in entries:
            content = draw(st.binary(max_size=30))
            injected[entry] = base64.b64encode(content).decode()
            injected[f"{entry}_path"] = draw(absolute_paths())
            if draw(st.booleans()):
                injected[f"{entry}_encoding"] = "base64"
        put(settings.files_from_data_source, injected)
    return settings, list(objects.values())


@functools.cache
def _other_annotation_keys() -> st.SearchStrategy[str]:
    return label_keys().filter(lambda k: not k.startswith("Virtlet"))


@functools.cache
def vm_pods() -> st.SearchStrategy[VMPod]:
    """Valid VM pods: unique volume names, mounts and devices that refer to them, and the
    ConfigMaps and Secrets the annotations refer to, holding the keys they need."""

    @st.composite
    def build(draw: st.DrawFn) -> VMPod:
        namespace = draw(st.just("default") | dns_labels())
        pod_volumes = draw(st.lists(volumes(), max_size=4))
        names = draw(st.lists(dns_labels(), min_size=len(pod_volumes), max_size=len(pod_volumes), unique=True))
        pod_volumes = [_with_name(v, n) for v, n in zip(pod_volumes, names, strict=True)]
        claims = [v.name for v in pod_volumes if isinstance(v, PersistentVolumeClaimVolume)]
        settings = draw(vm_settings())
        settings, objects = _source_objects(draw, settings, namespace)
        files_source = settings.files_from_data_source
        for index, volume in enumerate(pod_volumes):
            if not isinstance(volume, ConfigMapVolume | SecretVolume):
                continue
            kind = DataKind.CONFIGMAP if isinstance(volume, ConfigMapVolume) else DataKind.SECRET
            name = volume.config_map_name if isinstance(volume, ConfigMapVolume) else volume.secret_name
            existing = next((o for o in objects if o.kind == kind and o.name == name), None)
            wanted = {item.key: "" for item in volume.items}
            if existing is None:
                objects.append(DataObject(kind=kind, name=name, namespace=namespace, data=wanted))
            elif files_source is not None and (files_source.kind, files_source.name) == (kind, name):
                # Extra keys would be files to inject: the volume takes what is there instead.
                pod_volumes[index] = attrs.evolve(volume, optional=True)
            else:
                objects[objects.index(existing)] = attrs.evolve(
                    existing, data={**wanted, **existing.data},
                    binary_data={k: v for k, v in existing.binary_data.items() if k not in wanted})
        annotations = {TARGET_RUNTIME_ANNOTATION: VIRTLET_RUNTIME, **format_annotations(settings),
                       **draw(st.dictionaries(_other_annotation_keys(),
                                              st.text(_TEXT, max_size=20), max_size=2))}
        annotations[TARGET_RUNTIME_ANNOTATION] = VIRTLET_RUNTIME
        return VMPod(
            name=draw(dns_subdomains()),
            container=draw(containers([v.name for v in pod_volumes], claims)),
            namespace=namespace,
            uid=draw(st.just("") | st.uuids().map(str)),
            labels=draw(st.dictionaries(label_keys(), label_values(), max_size=3)),
            annotations=annotations,
            hostname=draw(st.none() | dns_labels()),
            subdomain=draw(st.none() | dns_labels()),
            volumes=tuple(pod_volumes),
            vm=settings,
            restart_policy=draw(st.sampled_from(RestartPolicy)),
            termination_grace_period_seconds=draw(st.integers(0, 3600)),
            data_objects=tuple(sorted(objects, key=lambda o: (o.kind, o.name))),
        )

    return build()


#: A strategy factory for every attrs class of :mod:`vmpod.model` (``Quantity`` included; the tests
#: check none is missing).
MODEL_STRATEGIES: Mapping[type, Callable[[], st.SearchStrategy[Any]]] = {
    DataSourceRef: data_source_refs,
    DataObject: data_objects,
    CPUFeature: cpu_features,
    CPUTopology: cpu_topologies,
    LibvirtCPU: libvirt_cpus,
    VMSettings: vm_settings,
    EnvVar: env_vars,
    ResourceList: resource_lists,
    Resources: resources,
    VolumeMount: volume_mounts,
    VolumeDevice: volume_devices,
    ContainerPort: container_ports,
    TCPSocketAction: tcp_socket_actions,
    HTTPHeader: http_headers,
    HTTPGetAction: http_get_actions,
    ExecAction: exec_actions,
    Probe: probes,
    Container: containers,
    EmptyDirVolume: empty_dir_volumes,
    HostPathVolume: host_path_volumes,
    KeyToPath: key_to_paths,
    ConfigMapVolume: config_map_volumes,
    SecretVolume: secret_volumes,
    PersistentVolumeSource: persistent_volume_sources,
    PersistentVolumeClaimVolume: persistent_volume_claim_volumes,
    Qcow2FlexOptions: qcow2_flex_options,
    RawFlexOptions: raw_flex_options,
    CephFlexOptions: ceph_flex_options,
    FlexVolume: flex_volumes,
    VMPod: vm_pods,
    Quantity: quantities,
}


def register_type_strategies() -> None:
    """Make ``st.from_type(cls)`` use these strategies for every model class (and the unions)."""
    for cls, factory in MODEL_STRATEGIES.items():
        st.register_type_strategy(cls, factory())


# --------------------------------------------------------------------------- annotation maps

#: Values each annotation refuses (at least one per annotation; the tests check every key has some).
BAD_ANNOTATION_VALUES: Mapping[str, tuple[str, ...]] = {
    "VirtletVCPUCount": ("two", "0", "-1", "256", "1.5", "1_0", "\u0663"),
    "VirtletDiskDriver": ("ide", "Virtio", "SCSI", "virtio-blk"),
    "VirtletCloudInitImageType": ("iso", "config-drive", "cidata"),
    "VirtletCloudInitMetaData": ("[1, 2]", "just text", "{a: [1, 2}", "a: .nan"),
    "VirtletCloudInitUserData": ("- one\n- two", "42", "{a: b", "a: 1\na: 2"),
    "VirtletCloudInitUserDataOverwrite": ("yes", "True", "1", "on"),
    "VirtletCloudInitUserDataSource": ("configmap", "volume/x", "configmap/Bad_Name", "configmap/a/b"),
    "VirtletCloudInitUserDataSourceEncoding": ("base32", "BASE64", "gzip"),
    "VirtletRootVolumeSize": ("4GB", "big", "-1Gi", "1.5", "1e100"),
    "VirtletCPUModel": ("host-passthrough", "Westmere", "HOST-MODEL"),
    "VirtletLibvirtCPUSetting": ("mode: turbo", "just text", "features: [{policy: disable}]", "flags: 1"),
    "VirtletSystemUUID": ("not-a-uuid", "1234", "g23e4567-e89b-12d3-a456-426614174000"),
    "VirtletForceDHCPNetworkConfig": ("yes", "TRUE", "1"),
    "VirtletChown9pfsMounts": ("yes", "True", "0"),
    "VirtletFilesFromDataSource": ("secret", "pvc/x", "configmap/a/b", "configmap/UPPER"),
    "VirtletSSHKeySource": ("secret", "volume/x/y", "configmap/x/", "secret/a/b/c"),
    # These take any text; a value that is not a string is what they refuse.
    "VirtletCloudInitUserDataScript": (),
    "VirtletCloudInitUserDataSourceKey": (),
    "VirtletSSHKeys": (),
}


@functools.cache
def annotation_maps(*, valid: bool = True) -> st.SearchStrategy[dict[str, str]]:
    """Annotation maps: what ``format_annotations`` writes (``valid=True``), or one bad value added."""
    good = vm_settings().map(format_annotations)
    if valid:
        return good
    bad = st.sampled_from([(k, v) for k, values in BAD_ANNOTATION_VALUES.items() for v in values])
    return st.tuples(good, bad).map(lambda p: {**p[0], p[1][0]: p[1][1]})


@functools.cache
def hostile_annotation_maps() -> st.SearchStrategy[dict[Any, Any]]:
    """Annotation maps with any keys (Virtlet's and others) and values of any type."""
    keys = st.one_of(st.sampled_from([spec.key for spec in ANNOTATIONS]), st.text(_TEXT, max_size=10))
    values = st.one_of(
        st.text(_TEXT, max_size=60),
        st.sampled_from([v for values in BAD_ANNOTATION_VALUES.values() for v in values]),
        st.sampled_from(["", "true", "false", "1", "0", "-0", "+3", " 2 ", "[", "{}", "null", "~", "&a [*a]",
                         "!!binary aGk=", "!!python/object:os.system x", "a: 2020-01-01", "1e400", "9" * 5000,
                         "configmap/x", "secret/x/y", "host-model", "virtio", "base64", "\ufeff", "\u2028"]),
        json_values(8),
        st.integers(),
        st.booleans(),
    )
    return st.dictionaries(keys, values, max_size=8)


# --------------------------------------------------------------------------- raw manifests


@attrs.frozen
class ManifestCase:
    """A valid manifest and what loading it gives.

    :param documents: the Kubernetes objects, in input order.
    :param pod_names: the names of the VM pods it expands to, in order.
    :param vm: the typed settings every pod gets.
    """

    documents: tuple[dict[str, Any], ...]
    pod_names: tuple[str, ...]
    vm: VMSettings

    def text(self, *, style: str = "yaml") -> str:
        """The documents as a YAML stream (``style="json"``: one JSON document per object)."""
        if style == "json":
            return "\n".join(json.dumps(doc, ensure_ascii=False, indent=1) for doc in self.documents)
        return dump_yaml_all(self.documents)


def _object(kind: str, name: str, namespace: str, **rest: Any) -> dict[str, Any]:
    api = "v1" if kind in ("Pod", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service") else "apps/v1"
    api = "batch/v1" if kind in ("Job", "CronJob") else api
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}, **rest}


@st.composite
def _pod_spec(draw: st.DrawFn, namespace: str) -> tuple[dict[str, Any], list[dict[str, Any]], VMSettings]:
    """A pod template (metadata + spec), the extra objects it needs, and its VM settings."""
    settings = draw(vm_settings())
    settings, data = _source_objects(draw, settings, namespace)
    extra: list[dict[str, Any]] = []
    for obj in data:
        if obj.kind is DataKind.CONFIGMAP:
            extra.append(_object("ConfigMap", obj.name, namespace, data=dict(obj.data)))
        else:
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in obj.data.items()}
            extra.append(_object("Secret", obj.name, namespace, data=encoded))
    annotations = {TARGET_RUNTIME_ANNOTATION: VIRTLET_RUNTIME, **format_annotations(settings)}
    volume_specs: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    names = draw(st.lists(dns_labels(12), unique=True, max_size=3))
    for index, name in enumerate(names):
        choice = draw(st.sampled_from(["emptyDir", "hostPath", "configMap", "secret", "flexVolume", "pvc"]))
        if choice == "emptyDir":
            volume_specs.append({"name": name, "emptyDir": {}})
        elif choice == "hostPath":
            volume_specs.append({"name": name, "hostPath": {"path": draw(absolute_paths())}})
        elif choice == "configMap":
            cm = f"{name}-cm"
            extra.append(_object("ConfigMap", cm, namespace, data={"file.txt": draw(st.text(_TEXT, max_size=20))}))
            volume_specs.append({"name": name, "configMap": {"name": cm}})
        elif choice == "secret":
            secret = f"{name}-secret"
            extra.append(_object("Secret", secret, namespace, stringData={"key": "value"}))
            volume_specs.append({"name": name, "secret": {"secretName": secret}})
        elif choice == "flexVolume":
            volume_specs.append({"name": name, "flexVolume": {"driver": "virtlet/flexvolume_driver", "options": {
                "type": "qcow2", "capacity": draw(st.sampled_from(["40MB", "1GiB", "2048MB", "100", "512 KiB"]))}}})
        else:
            volume_specs.append({"name": name, "persistentVolumeClaim": {"claimName": f"{name}-claim"}})
        if choice != "pvc":
            mounts.append({"name": name, "mountPath": f"/mnt/{index}"})
    container: dict[str, Any] = {"name": draw(dns_labels(20)), "image": draw(_IMAGES)}
    if draw(st.booleans()):
        container["resources"] = {"limits": {"memory": draw(quantity_texts(integer=True)),
                                             "cpu": draw(quantity_texts())}}
    if draw(st.booleans()):
        container.update(tty=True, stdin=True)
    if mounts:
        container["volumeMounts"] = mounts
    if draw(st.booleans()):
        container["env"] = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "GREETING", "value": draw(st.text(_TEXT, max_size=10))}]
    spec: dict[str, Any] = {"containers": [container]}
    if volume_specs:
        spec["volumes"] = volume_specs
    return {"metadata": {"annotations": annotations, "labels": {"app": "vm"}}, "spec": spec}, extra, settings


@st.composite
def _manifest_case(draw: st.DrawFn) -> ManifestCase:
    namespace = draw(st.just("default") | dns_labels(20))
    kind = draw(st.sampled_from(WORKLOAD_KINDS))
    name = draw(dns_labels(30))
    template, extra, settings = draw(_pod_spec(namespace))
    replicas = draw(st.integers(0, 4))
    if kind == "Pod":
        document = _object("Pod", name, namespace, spec=template["spec"])
        document["metadata"].update(template["metadata"])
        names: tuple[str, ...] = (name,)
    elif kind == "StatefulSet":
        document = _object(kind, name, namespace, spec={"serviceName": name, "replicas": replicas,
                                                        "template": template})
        names = tuple(f"{name}-{i}" for i in range(replicas))
    elif kind in ("Job", "CronJob"):
        template["spec"]["restartPolicy"] = draw(st.sampled_from(["Never", "OnFailure"]))
        job: dict[str, Any] = {"parallelism": replicas, "template": template}
        spec: dict[str, Any] = job if kind == "Job" else {"schedule": "*/5 * * * *", "jobTemplate": {"spec": job}}
        document = _object(kind, name, namespace, spec=spec)
        names = tuple(f"?{i}" for i in range(replicas))
    else:
        count = 1 if kind == "DaemonSet" else replicas
        spec = {"template": template} if kind == "DaemonSet" else {"replicas": replicas, "template": template}
        document = _object(kind, name, namespace, spec=spec)
        names = tuple(f"?{i}" for i in range(count))
    claims = [v["persistentVolumeClaim"]["claimName"] for v in template["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v]
    extra += [_object("PersistentVolumeClaim", claim, namespace, spec={"volumeMode": "Filesystem"})
              for claim in claims]
    kept = [(d["kind"], d["metadata"]["name"]) for d in extra]
    assume(len(set(kept)) == len(kept))  # two objects of one name would shadow each other
    service = _object("Service", name, namespace, spec={"clusterIP": "None", "ports": [{"port": 22}]})
    documents = [*extra, document, service] if draw(st.booleans()) else [document, *extra]
    return ManifestCase(documents=tuple(documents), pod_names=names, vm=settings)


@functools.cache
def manifest_cases() -> st.SearchStrategy[ManifestCase]:
    """Valid manifests (a workload of any kind plus the objects it needs) with what they load to.

    Pod names that Kubernetes would generate (Deployment, ReplicaSet, DaemonSet,
    Job, CronJob) are given as ``"?<index>"``: only their number is known.
    """
    return _manifest_case()


def _break(case: ManifestCase, draw: st.DrawFn) -> list[Any]:
    """The case's documents with one change that makes them certainly invalid."""
    documents: list[Any] = json.loads(json.dumps(list(case.documents)))
    workload = next(d for d in documents if d["kind"] in WORKLOAD_KINDS)
    if workload["kind"] == "Pod":
        pod = workload
    elif workload["kind"] == "CronJob":
        pod = workload["spec"]["jobTemplate"]["spec"]["template"]
    else:
        pod = workload["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    annotations = pod["metadata"]["annotations"]
    how = draw(st.sampled_from(["annotation", "runtime", "containers", "init", "configmap", "image", "memory",
                                "volume", "mount", "replicas", "name", "kind", "not-a-mapping"]))
    if how == "annotation":
        key, value = draw(st.sampled_from([(k, v) for k, vs in BAD_ANNOTATION_VALUES.items() for v in vs]))
        annotations[key] = value
    elif how == "runtime":
        if draw(st.booleans()):
            del annotations[TARGET_RUNTIME_ANNOTATION]
        else:
            annotations[TARGET_RUNTIME_ANNOTATION] = draw(st.sampled_from(["runc", "Virtlet.cloud", ""]))
    elif how == "containers":
        spec["containers"].append({"name": "sidecar", "image": "busybox"})
    elif how == "init":
        spec["initContainers"] = [{"name": "init", "image": "busybox"}]
    elif how == "configmap":
        spec.setdefault("volumes", []).append({"name": "missing-cm", "configMap": {"name": "no-such-configmap"}})
    elif how == "image":
        container["image"] = draw(st.sampled_from([42, None, "", ["a"], {"a": 1}]))
        if container["image"] is None:
            del container["image"]
    elif how == "memory":
        container.setdefault("resources", {})["limits"] = {"memory": draw(st.sampled_from(["lots", "1.5", "-1Gi",
                                                                                           "1e", "100m"]))}
    elif how == "volume":
        spec.setdefault("volumes", []).append({"name": "bad", "nfs": {"server": "x", "path": "/"}})
    elif how == "mount":
        container.setdefault("volumeMounts", []).append({"name": "nowhere", "mountPath": "/nowhere"})
    elif how == "replicas":
        if workload["kind"] in ("Pod", "DaemonSet", "Job", "CronJob"):
            container["tty"] = "yes"
        else:
            workload["spec"]["replicas"] = draw(st.sampled_from([-1, "3", 1.5, MAX_TEST_REPLICAS]))
    elif how == "name":
        workload["metadata"]["name"] = draw(st.sampled_from(["Bad_Name", "-x", "a" * 300, "", 7]))
    elif how == "kind":
        workload.pop("kind")
    else:
        documents.append(draw(st.sampled_from([[1, 2], "text", 42, True])))
    return documents


MAX_TEST_REPLICAS = 10**9  # above vmpod's limit of replicas


@functools.cache
def raw_manifests(valid: bool = True) -> st.SearchStrategy[str]:
    """Manifest text: ``valid=True`` loads without errors; ``valid=False`` is certainly refused.

    Invalid input is a valid manifest with one mistake (a bad annotation value,
    a missing runtime annotation, two containers, an init container, a missing
    ConfigMap, a bad quantity, an unsupported volume, a bad name, replicas of
    the wrong type...) or text that is not a manifest at all (broken YAML,
    nesting deeper than vmpod accepts, a non-UTF-8-safe control character).
    """
    if valid:
        return st.tuples(manifest_cases(), st.sampled_from(["yaml", "json"])).map(lambda p: p[0].text(style=p[1]))

    @st.composite
    def broken(draw: st.DrawFn) -> str:
        documents = _break(draw(manifest_cases()), draw)
        return dump_yaml_all(documents)

    not_yaml = st.sampled_from([
        "kind: Pod\nmetadata: {name: x\n",
        "\tkind: Pod",
        "a: 1\na: 2\n",
        "[" * 300 + "]" * 300,
        "- " * 300 + "x",
        "kind: Pod\nmetadata:\n  name: x\n\x07\n",
        "key: !!binary aGVsbG8=\n",
        "%YAML 9.9\n--- {}\n",
    ])
    return st.one_of(broken(), not_yaml)


_HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**200), 2**200),
    st.floats(), st.text(_TEXT, max_size=30),
    st.sampled_from(["", "-", "0", "1e309", "4Gi", "virtlet.cloud", "configmap/x", "true", "/", "..", "a" * 300,
                     "\u202e", "\ufeff", "\uff21", "x" * 70, "$(rm -rf /)", "{{ template }}"]),
)


@functools.cache
def _hostile_tree(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(_TEXT, max_size=8), st.sampled_from(
        ["kind", "metadata", "spec", "name", "annotations", "containers", "volumes", "template", "replicas",
         "items", "data", "image", "resources"]), st.integers(), st.booleans())
    return st.recursive(_HOSTILE_SCALARS, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)), max_leaves=max_leaves)


def _replace_somewhere(data: Any, draw: st.DrawFn, junk: st.SearchStrategy[Any]) -> Any:
    """``data`` with one node (found by a random walk) replaced by something drawn from ``junk``."""
    if not isinstance(data, dict | list) or not data or draw(st.integers(0, 4)) == 0:
        return draw(junk)
    if isinstance(data, dict):
        key = draw(st.sampled_from(sorted(data, key=repr)))
        return {**data, key: _replace_somewhere(data[key], draw, junk)}
    index = draw(st.integers(0, len(data) - 1))
    return [*data[:index], _replace_somewhere(data[index], draw, junk), *data[index + 1:]]


@functools.cache
def hostile_manifests() -> st.SearchStrategy[str]:
    """Any text at all, most of it almost a manifest: the loader must answer with pods or a SpecError.

    Wrong types anywhere in a valid manifest, random trees under Kubernetes
    keys, deep nesting, huge numbers, unicode, YAML aliases and anchors
    (including an alias bomb), duplicate keys, and plain garbage.
    """

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        documents = list(draw(manifest_cases()).documents)
        index = draw(st.integers(0, len(documents) - 1))
        documents[index] = _replace_somewhere(documents[index], draw, _hostile_tree())
        return dump_yaml_all(documents)

    @st.composite
    def aliased(draw: st.DrawFn) -> str:
        text = draw(manifest_cases()).text()
        anchor = "base: &b {kind: Pod, metadata: {name: x}}\n"
        tail = draw(st.sampled_from(["---\n*b\n", "---\n<<: *b\n", "---\nkind: List\nitems: [*b, *b]\n",
                                     "---\n&r [*r]\n", "---\nx: *undefined\n"]))
        return f"{anchor}{tail}---\n{text}"

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(7))
    deep = st.integers(150, 5000).flatmap(lambda n: st.sampled_from([
        "[" * n + "]" * n, "{a: " * n + "1" + "}" * n, "- " * n + "x",
        "kind: Pod\nspec:\n" + "".join(" " * (i + 2) + "a:\n" for i in range(min(n, 400))),
    ]))
    numbers = st.sampled_from(["kind: Deployment\nmetadata: {name: x}\nspec: {replicas: " + "9" * 5000 + "}\n",
                               "kind: Pod\nspec: {terminationGracePeriodSeconds: 1e400}\n",
                               "kind: StatefulSet\nmetadata: {name: s}\nspec: {replicas: 99999999999999999999}\n"])
    garbage = st.one_of(st.text(_TEXT, max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
    trees = _hostile_tree(30).map(dump_yaml)
    return st.one_of(mutated(), aliased(), st.just(bomb), deep, numbers, garbage, trees)
