"""Kubernetes manifests to :class:`~vmpod.model.VMPod`.

Reads multi-document YAML (or JSON) with ``Pod``, ``Deployment``,
``ReplicaSet``, ``StatefulSet``, ``DaemonSet``, ``Job``, ``CronJob`` and
``List`` objects and expands each workload into its pods:

* StatefulSet replicas are ``<name>-0`` .. ``<name>-<N-1>``, each with
  ``hostname`` = its name and ``subdomain`` = ``serviceName``;
* Deployment, ReplicaSet, Job and CronJob pods get Kubernetes-style names
  with deterministic suffixes (the same input always gives the same names);
  a DaemonSet gives one pod (this node).

``ConfigMap``, ``Secret``, ``PersistentVolumeClaim`` and
``PersistentVolume`` documents are kept and used where a pod refers to them.
Other kinds (``Service``...) are skipped with a note.  Every problem in the
input is reported, each as a :class:`~vmpod.errors.SpecError` with its path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from vmpod import datasources
from vmpod.annotations import ANNOTATIONS, is_vm_pod, parse_annotations
from vmpod.errors import ErrorCollector, SpecError, join_path
from vmpod.model import (
    TARGET_RUNTIME_ANNOTATION,
    VIRTLET_RUNTIME,
    CephFlexOptions,
    ConfigMapVolume,
    Container,
    ContainerPort,
    DataKind,
    DataObject,
    EmptyDirVolume,
    EnvVar,
    ExecAction,
    FlexVolume,
    HostPathVolume,
    HTTPGetAction,
    HTTPHeader,
    KeyToPath,
    PersistentVolumeClaimVolume,
    PersistentVolumeSource,
    Probe,
    ProbeHandler,
    PullPolicy,
    Qcow2FlexOptions,
    RawFlexOptions,
    ResourceList,
    Resources,
    RestartPolicy,
    SecretVolume,
    TCPSocketAction,
    VMPod,
    Volume,
    VolumeDevice,
    VolumeMount,
)
from vmpod.names import is_dns_label, is_dns_subdomain, is_label_key, is_label_value
from vmpod.quantity import ACCEPTED_QUANTITY, Quantity, parse_quantity
from vmpod.yamlutil import safe_load_all_limited

__all__ = [
    "FLEXVOLUME_DRIVER",
    "FLEXVOLUME_TYPES",
    "KEPT_KINDS",
    "VOLUME_KINDS",
    "WORKLOAD_KINDS",
    "LoadResult",
    "load_manifest_files",
    "load_manifest_text",
    "parse_flex_capacity",
]

FLEXVOLUME_DRIVER = "virtlet/flexvolume_driver"
WORKLOAD_KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")
#: Kinds kept from the input and used where a pod refers to them (other kinds are skipped with a note).
KEPT_KINDS = ("ConfigMap", "Secret", "PersistentVolumeClaim", "PersistentVolume")
_KEPT_KINDS = KEPT_KINDS
_POD_UID_NAMESPACE = uuid.UUID("0b7d7b5e-5b0c-4f4e-9a57-6a1f7c5d3e21")
# Kubernetes' alphabet for generated name suffixes (no vowels, no confusable digits).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_REPLICAS = 100_000


@attrs.frozen
class LoadResult:
    """What a manifest input holds: its VM pods and notes about what was skipped."""

    pods: tuple[VMPod, ...] = ()
    notes: tuple[str, ...] = ()

    def pod(self, name: str) -> VMPod:
        """The pod called ``name``; :class:`SpecError` listing the names when absent."""
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise SpecError("", f"no pod named {name!r} in the input", value=name,
                        accepted=", ".join(p.name for p in self.pods) or "(the input has no VM pods)")


# --------------------------------------------------------------------------- field reader

_T = TypeVar("_T")


class _Fields:
    """Typed access to one object of raw YAML, collecting errors with their paths."""

    def __init__(self, data: Mapping[str, Any], path: str, errors: ErrorCollector) -> None:
        self.data = data
        self.path = path
        self.errors = errors

    def at(self, key: object) -> str:
        return join_path(self.path, key if isinstance(key, str) else repr(key))

    def fail(self, key: object, message: str, value: object = None, accepted: str | None = None,
             *, has_value: bool = True) -> None:
        if has_value:
            self.errors.add(SpecError(self.at(key), message, value=value, accepted=accepted))
        else:
            self.errors.add(SpecError(self.at(key), message, accepted=accepted))

    def _typed(self, key: str, kinds: tuple[type, ...], what: str, default: Any, required: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "required field is missing", accepted=what, has_value=False)
            return default
        value = self.data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.fail(key, f"expected {what}", value)
            return default
        return value

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        value: str = self._typed(key, (str,), "a string", default, required)
        if required and value == "" and self.data.get(key) == "":
            self.fail(key, "must not be empty", value, "a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        value: str | None = self._typed(key, (str,), "a string", None, False)
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value: bool = self._typed(key, (bool,), "true or false", default, False)
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value: int = self._typed(key, (int,), "an integer", default, False)
        if minimum is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}", value, f"an integer of at least {minimum}")
            return default
        if maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}", value, f"an integer up to {maximum}")
            return default
        return value

    def mapping(self, key: str, *, required: bool = False) -> dict[str, Any]:
        value: dict[str, Any] = self._typed(key, (dict,), "a mapping", {}, required)
        return value

    def sub(self, key: str, *, required: bool = False) -> _Fields:
        return _Fields(self.mapping(key, required=required), self.at(key), self.errors)

    def items(self, key: str) -> list[_Fields]:
        raw: list[Any] = self._typed(key, (list,), "a list", [], False)
        result = []
        for index, item in enumerate(raw):
            where = f"{self.at(key)}[{index}]"
            if not isinstance(item, dict):
                self.errors.add(SpecError(where, "expected a mapping", value=item))
                continue
            result.append(_Fields(item, where, self.errors))
        return result

    def string_map(self, key: str) -> dict[str, str]:
        raw: dict[Any, Any] = self.mapping(key)
        result: dict[str, str] = {}
        for name, value in raw.items():
            if not isinstance(name, str):
                self.fail(key, "keys must be strings", name)
            elif not isinstance(value, str):
                self.errors.add(SpecError(join_path(self.at(key), name), "values must be strings",
                                          value=value, accepted="a string (quote numbers and booleans)"))
            else:
                result[name] = value
        return result

    def choice(self, key: str, enum_type: Callable[[str], _T], choices: Sequence[str], default: _T) -> _T:
        text = self._typed(key, (str,), "a string", None, False)
        if text is None:
            return default
        if text not in choices:
            self.fail(key, "unsupported value", text, " or ".join(choices))
            return default
        return enum_type(text)


# --------------------------------------------------------------------------- input objects


@attrs.frozen
class _Objects:
    """The ConfigMaps, Secrets, PVCs and PVs of one input, keyed by (namespace, name)."""

    data: Mapping[tuple[DataKind, str, str], DataObject]
    claims: Mapping[tuple[str, str], Mapping[str, Any]]
    volumes: Mapping[str, Mapping[str, Any]]
    #: PersistentVolumes by the (namespace, name) of the claim in their ``claimRef``, first one first.
    claimed: Mapping[tuple[str, str], Mapping[str, Any]] = attrs.field(factory=dict)


def _decode_data_object(kind: DataKind, doc: _Fields, namespace: str, name: str) -> DataObject:
    text: dict[str, str] = {}
    binary: dict[str, bytes] = {}
    if kind is DataKind.SECRET:
        for key, value in doc.string_map("data").items():
            try:
                raw = base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                doc.errors.add(SpecError(join_path(doc.at("data"), key), "invalid base64 in Secret data",
                                         value=value, accepted="standard base64"))
                continue
            try:
                text[key] = raw.decode()
            except UnicodeDecodeError:
                binary[key] = raw
        text.update(doc.string_map("stringData"))
    else:
        text.update(doc.string_map("data"))
        for key, value in doc.string_map("binaryData").items():
            try:
                binary[key] = base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                doc.errors.add(SpecError(join_path(doc.at("binaryData"), key), "invalid base64",
                                         value=value, accepted="standard base64"))
    return DataObject(kind=kind, name=name, namespace=namespace, data=text, binary_data=binary)


# --------------------------------------------------------------------------- pods


def _pod_uid(namespace: str, name: str) -> str:
    return str(uuid.uuid5(_POD_UID_NAMESPACE, f"{namespace}/{name}"))


def _suffix(seed: str, length: int = 5) -> str:
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:16], "big")
    chars = []
    for _ in range(length):
        digest, index = divmod(digest, len(_SUFFIX_ALPHABET))
        chars.append(_SUFFIX_ALPHABET[index])
    return "".join(chars)


def _default_pull_policy(image: str) -> PullPolicy:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return PullPolicy.IF_NOT_PRESENT
    tag = last.partition(":")[2]
    return PullPolicy.ALWAYS if tag in ("", "latest") else PullPolicy.IF_NOT_PRESENT


def _quantity(fields: _Fields, key: str, raw: Any) -> Quantity | None:
    try:
        return parse_quantity(raw)
    except SpecError:
        fields.fail(key, "not a quantity", raw, ACCEPTED_QUANTITY)
        return None


def _resource_list(fields: _Fields) -> ResourceList:
    cpu = memory = None
    other: dict[str, Quantity] = {}
    for name, raw in fields.data.items():
        quantity = _quantity(fields, str(name), raw)
        if quantity is None:
            continue
        if quantity.value < 0:
            fields.fail(str(name), "must not be negative", raw, "a non-negative quantity")
            continue
        if name == "cpu":
            cpu = quantity
        elif name == "memory":
            if not quantity.is_integer:
                fields.fail("memory", "not a whole number of bytes", raw, "a whole number of bytes")
                continue
            memory = quantity
        else:
            other[str(name)] = quantity
    return ResourceList(cpu=cpu, memory=memory, other=other)


def _port_value(fields: _Fields, key: str) -> int | str:
    raw = fields.data.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 65535:
        return raw
    if isinstance(raw, str) and is_dns_label(raw) and len(raw) <= 15:
        return raw
    fields.fail(key, "invalid port", raw, "a port number from 1 to 65535 or a port name")
    return 1


def _probe(fields: _Fields) -> Probe | None:
    handler: ProbeHandler | None = None
    kinds = [k for k in ("tcpSocket", "httpGet", "exec", "grpc") if k in fields.data]
    if len(kinds) != 1:
        fields.fail("", "a probe needs exactly one of tcpSocket, httpGet, exec", _key_list(fields.data),
                    "tcpSocket, httpGet or exec")
        return None
    kind = kinds[0]
    sub = fields.sub(kind)
    if kind == "tcpSocket":
        handler = TCPSocketAction(port=_port_value(sub, "port"), host=sub.string("host"))
    elif kind == "httpGet":
        headers = tuple(HTTPHeader(h.string("name", required=True), h.string("value"))
                        for h in sub.items("httpHeaders"))
        scheme = sub.string("scheme", "HTTP")
        if scheme not in ("HTTP", "HTTPS"):
            sub.fail("scheme", "unsupported scheme", scheme, '"HTTP" or "HTTPS"')
        handler = HTTPGetAction(port=_port_value(sub, "port"), path=sub.string("path", "/"),
                                host=sub.string("host"), scheme=scheme, http_headers=headers)
    elif kind == "exec":
        command = sub.data.get("command") or []
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            sub.fail("command", "expected a list of strings", command)
            command = []
        handler = ExecAction(command=tuple(command))
    else:
        fields.fail(kind, "grpc probes are not supported for VM pods", accepted="tcpSocket, httpGet or exec",
                    has_value=False)
        return None
    return Probe(
        handler=handler,
        initial_delay_seconds=fields.integer("initialDelaySeconds", 0, minimum=0),
        period_seconds=fields.integer("periodSeconds", 10, minimum=1),
        timeout_seconds=fields.integer("timeoutSeconds", 1, minimum=1),
        success_threshold=fields.integer("successThreshold", 1, minimum=1),
        failure_threshold=fields.integer("failureThreshold", 3, minimum=1),
    )


def _key_to_paths(fields: _Fields) -> tuple[KeyToPath, ...]:
    result = []
    for item in fields.items("items"):
        path = item.string("path", required=True)
        if path.startswith("/") or ".." in path.split("/"):
            item.fail("path", "must be a relative path without '..'", path, "a relative path")
        mode = item.data.get("mode")
        result.append(KeyToPath(key=item.string("key", required=True), path=path,
                                mode=item.integer("mode", 0, minimum=0, maximum=0o777) if mode is not None
                                else None))
    return tuple(result)


_FLEX_CAPACITY_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1000, "kib": 1024,
    "mb": 1000**2, "m": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1000**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1000**4, "tib": 1024**4,
    "pb": 1000**5, "p": 1000**5, "pib": 1024**5,
    "eb": 1000**6, "e": 1000**6, "eib": 1024**6,
}
_FLEX_CAPACITY_ACCEPTED = "a number with an optional unit B, KB, K, KiB, MB, M, MiB, GB, G, GiB, TB, T, TiB, " \
    "PB, P, PiB, EB, E, EiB (no unit: MB)"


_FLEX_CAPACITY_RE = re.compile(r"\s*([0-9]+)\s*(\S*)\s*", re.ASCII)


def parse_flex_capacity(text: str) -> int:
    """A Virtlet qcow2 flexvolume ``capacity`` in bytes (libvirt units; no unit means MB = 10^6)."""
    # Virtlet's regexp: ^\s*(\d+)\s*(\S*)\s*$ (Go's \d is ASCII only).
    match = _FLEX_CAPACITY_RE.fullmatch(text)
    unit = (match[2] if match else "").lower() or "mb"
    if match is None or unit not in _FLEX_CAPACITY_UNITS:
        raise SpecError("", "invalid capacity", value=text, accepted=_FLEX_CAPACITY_ACCEPTED)
    if len(match[1]) > 30:
        raise SpecError("", "capacity too large", value=text, accepted=_FLEX_CAPACITY_ACCEPTED)
    capacity = int(match[1]) * _FLEX_CAPACITY_UNITS[unit]
    if capacity == 0:
        raise SpecError("", "capacity must not be zero", value=text, accepted=_FLEX_CAPACITY_ACCEPTED)
    return capacity


def _flex_part(options: _Fields) -> int | None:
    raw = options.data.get("part")
    if raw is None:
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 3:
        return int(raw)
    options.fail("part", "invalid partition number", raw,
                 'a string holding a number from 0 to 999 ("0": the whole disk)')
    return None


def _flex_volume(name: str, fields: _Fields) -> FlexVolume | None:
    driver = fields.string("driver", required=True)
    if driver != FLEXVOLUME_DRIVER:
        fields.fail("driver", "unsupported flexVolume driver", driver, f'"{FLEXVOLUME_DRIVER}"')
        return None
    options = fields.sub("options", required=True)
    kind = options.string("type", required=True)
    part = _flex_part(options)
    if kind == "qcow2":
        capacity = 1024 * 1000 * 1000
        raw = options.data.get("capacity")
        if raw is not None:
            try:
                capacity = parse_flex_capacity(str(raw))
            except SpecError as exc:
                options.fail("capacity", exc.message, raw, exc.accepted)
        return FlexVolume(name=name, options=Qcow2FlexOptions(capacity=capacity, part=part))
    if kind == "raw":
        path = options.string("path", required=True)
        if path and not path.startswith("/dev/"):
            options.fail("path", "raw device path must start with /dev/", path, "a /dev/... block device")
        return FlexVolume(name=name, options=RawFlexOptions(path=path, part=part))
    if kind == "ceph":
        monitor = options.string("monitor", required=True)
        if monitor and len(monitor.split(":")) != 2:
            options.fail("monitor", "invalid monitor address", monitor, "IP:PORT")
        return FlexVolume(name=name, options=CephFlexOptions(
            monitor=monitor, user=options.string("user", required=True),
            secret=options.string("secret", required=True), pool=options.string("pool", required=True),
            volume=options.string("volume", required=True), protocol=options.string("protocol", "rbd"),
            part=part))
    if kind:
        options.fail("type", "unsupported flexvolume type", kind, '"qcow2", "raw" or "ceph"')
    return None


#: Pod volume sources a VM pod may use.
VOLUME_KINDS = ("emptyDir", "hostPath", "configMap", "secret", "persistentVolumeClaim", "flexVolume")
_VOLUME_KINDS = VOLUME_KINDS
#: ``options.type`` values of Virtlet's flexvolume driver.
FLEXVOLUME_TYPES = ("qcow2", "raw", "ceph")


def _volume(fields: _Fields, namespace: str, objects: _Objects) -> Volume | None:
    name = fields.string("name", required=True)
    if name and not is_dns_label(name):
        fields.fail("name", "invalid volume name", name, "a DNS label (lower-case alphanumerics and '-')")
    kinds = [k for k in fields.data if k != "name"]
    if len(kinds) != 1:
        fields.fail("", "a volume needs exactly one source", _key_list(kinds), ", ".join(_VOLUME_KINDS))
        return None
    kind = kinds[0]
    if kind not in _VOLUME_KINDS:
        fields.fail(kind, "volume type not supported for VM pods", kind, ", ".join(_VOLUME_KINDS),
                    has_value=False)
        return None
    sub = fields.sub(kind)
    if kind == "emptyDir":
        size = sub.data.get("sizeLimit")
        return EmptyDirVolume(name=name, medium=sub.string("medium"),
                              size_limit=_quantity(sub, "sizeLimit", size) if size is not None else None)
    if kind == "hostPath":
        path = sub.string("path", required=True)
        if path and not path.startswith("/"):
            sub.fail("path", "must be an absolute path", path, "an absolute path")
        return HostPathVolume(name=name, path=path, type=sub.string("type"))
    if kind in ("configMap", "secret"):
        default_mode = sub.integer("defaultMode", 0o644, minimum=0, maximum=0o777)
        optional = sub.boolean("optional")
        items = _key_to_paths(sub)
        if kind == "configMap":
            source = sub.string("name", required=True)
            data_kind = DataKind.CONFIGMAP
        else:
            source = sub.string("secretName", required=True)
            data_kind = DataKind.SECRET
        obj = objects.data.get((data_kind, namespace, source))
        if source and obj is None and not optional:
            sub.fail("name" if kind == "configMap" else "secretName",
                     f"{data_kind.value} {source!r} not found in namespace {namespace!r}", source,
                     f"a {data_kind.value} defined in the same input (or optional: true)")
        elif obj is not None:
            for item in items:
                if obj.get_bytes(item.key) is None and not optional:
                    sub.fail("items", f"{data_kind.value} {source!r} has no key {item.key!r}", item.key,
                             ", ".join(obj.key_names()))
        if kind == "configMap":
            return ConfigMapVolume(name=name, config_map_name=source, items=items,
                                   default_mode=default_mode, optional=optional)
        return SecretVolume(name=name, secret_name=source, items=items, default_mode=default_mode,
                            optional=optional)
    if kind == "persistentVolumeClaim":
        claim = sub.string("claimName", required=True)
        return _claim_volume(name, claim, sub.boolean("readOnly"), namespace, objects)
    return _flex_volume(name, sub)


def _key_list(keys: Iterable[Any]) -> list[str]:
    return sorted(k if isinstance(k, str) else repr(k) for k in keys)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _claim_volume(name: str, claim: str, read_only: bool, namespace: str,
                  objects: _Objects) -> PersistentVolumeClaimVolume:
    pvc = objects.claims.get((namespace, claim))
    if pvc is None:
        return PersistentVolumeClaimVolume(name=name, claim_name=claim, read_only=read_only)
    spec = _dict(pvc.get("spec"))
    mode = spec.get("volumeMode") if isinstance(spec.get("volumeMode"), str) else "Filesystem"
    volume_name = spec.get("volumeName")
    candidates = [objects.volumes[volume_name]] if isinstance(volume_name, str) and \
        volume_name in objects.volumes else []
    if not candidates:
        pv = objects.claimed.get((namespace, claim))
        if pv is not None:
            candidates.append(pv)
    bound = None
    if candidates:
        pv_spec = _dict(candidates[0].get("spec"))
        source_kind = next((k for k in pv_spec if k in ("local", "hostPath", "nfs", "rbd", "iscsi", "csi",
                                                         "cephfs", "fc")), "unknown")
        path = _dict(pv_spec.get(source_kind)).get("path") if source_kind in ("local", "hostPath") else None
        capacity = None
        raw_capacity = _dict(pv_spec.get("capacity")).get("storage")
        if raw_capacity is not None:
            try:
                capacity = parse_quantity(raw_capacity)
            except SpecError:
                capacity = None
        pv_mode = pv_spec.get("volumeMode")
        bound = PersistentVolumeSource(kind=source_kind, path=path if isinstance(path, str) else None,
                                       volume_mode=pv_mode if isinstance(pv_mode, str) else str(mode),
                                       capacity=capacity)
    return PersistentVolumeClaimVolume(name=name, claim_name=claim, read_only=read_only,
                                       volume_mode=str(mode), persistent_volume=bound)


@attrs.frozen
class _FieldRef:
    """An env value from the pod's own fields, known only once the replica is named."""

    path: str


_FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.serviceAccountName")
_FIELD_TABLES = ("metadata.labels", "metadata.annotations")


def _resolve_field(path: str, pod: VMPod) -> str:
    simple = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "metadata.uid": pod.uid,
              "spec.serviceAccountName": "default"}
    if path in simple:
        return simple[path]
    table = pod.labels if path.startswith("metadata.labels") else pod.annotations
    return table.get(path.partition("['")[2][:-2], "")


def _env(container: _Fields, namespace: str, objects: _Objects,
         field_refs: list[tuple[int, str]]) -> tuple[EnvVar, ...]:
    """The container's environment; ``fieldRef`` entries are recorded in ``field_refs`` for :func:`_stamp`."""
    result: list[EnvVar] = []
    for source in container.items("envFrom"):
        prefix = source.string("prefix")
        for key, kind in (("configMapRef", DataKind.CONFIGMAP), ("secretRef", DataKind.SECRET)):
            if key not in source.data:
                continue
            ref = source.sub(key)
            name = ref.string("name", required=True)
            obj = objects.data.get((kind, namespace, name))
            if obj is None:
                if not ref.boolean("optional"):
                    ref.fail("name", f"{kind.value} {name!r} not found in namespace {namespace!r}", name,
                             f"a {kind.value} defined in the same input")
                continue
            result.extend(EnvVar(prefix + k, v) for k, v in sorted(obj.data.items()))
    for item in container.items("env"):
        name = item.string("name", required=True)
        if "valueFrom" not in item.data:
            result.append(EnvVar(name, item.string("value")))
            continue
        value_from = item.sub("valueFrom")
        value = _env_value_from(value_from, namespace, objects)
        if isinstance(value, _FieldRef):
            field_refs.append((len(result), value.path))
            result.append(EnvVar(name, ""))
        elif value is not None:
            result.append(EnvVar(name, value))
    return tuple(result)


def _env_value_from(fields: _Fields, namespace: str, objects: _Objects) -> str | _FieldRef | None:
    for key, kind in (("configMapKeyRef", DataKind.CONFIGMAP), ("secretKeyRef", DataKind.SECRET)):
        if key in fields.data:
            ref = fields.sub(key)
            name = ref.string("name", required=True)
            wanted = ref.string("key", required=True)
            obj = objects.data.get((kind, namespace, name))
            optional = ref.boolean("optional")
            if obj is None:
                if not optional:
                    ref.fail("name", f"{kind.value} {name!r} not found in namespace {namespace!r}", name,
                             f"a {kind.value} defined in the same input")
                return None
            raw = obj.get_bytes(wanted)
            if raw is None:
                if not optional:
                    ref.fail("key", f"{kind.value} {name!r} has no key {wanted!r}", wanted, ", ".join(obj.key_names()))
                return None
            return raw.decode(errors="replace")
    if "fieldRef" in fields.data:
        ref = fields.sub("fieldRef")
        path = ref.string("fieldPath", required=True)
        if path in _FIELD_PATHS or any(path.startswith(f"{table}['") and path.endswith("']")
                                       and len(path) > len(table) + 4 for table in _FIELD_TABLES):
            return _FieldRef(path)
        if not path:
            return None
        ref.fail("fieldPath", "unsupported field for a VM pod", path,
                 "metadata.name, metadata.namespace, metadata.uid, metadata.labels['K'], "
                 "metadata.annotations['K']")
        return None
    fields.fail("", "unsupported valueFrom", _key_list(fields.data), "configMapKeyRef, secretKeyRef or fieldRef")
    return None


def _container(fields: _Fields, pod_volumes: Mapping[str, Volume], namespace: str, objects: _Objects,
               field_refs: list[tuple[int, str]]) -> Container:
    name = fields.string("name", required=True)
    if name and not is_dns_label(name):
        fields.fail("name", "invalid container name", name, "a DNS label (lower-case alphanumerics and '-')")
    image = fields.string("image", required=True)
    if image and not image.strip():
        fields.fail("image", "image must not be empty", image, "a VM disk image name or URL")
    policy = fields.choice("imagePullPolicy", PullPolicy, [p.value for p in PullPolicy],
                           _default_pull_policy(image))
    resources = fields.sub("resources")
    mounts = []
    for item in fields.items("volumeMounts"):
        mount = VolumeMount(name=item.string("name", required=True),
                            mount_path=item.string("mountPath", required=True),
                            read_only=item.boolean("readOnly"), sub_path=item.string("subPath"))
        if mount.name and mount.name not in pod_volumes:
            item.fail("name", "no pod volume with this name", mount.name, ", ".join(pod_volumes) or "(none)")
        if mount.mount_path and not mount.mount_path.startswith("/"):
            item.fail("mountPath", "must be an absolute path", mount.mount_path, "an absolute path")
        mounts.append(mount)
    devices = []
    for item in fields.items("volumeDevices"):
        device = VolumeDevice(name=item.string("name", required=True),
                              device_path=item.string("devicePath", required=True))
        volume = pod_volumes.get(device.name)
        if device.name and volume is None:
            item.fail("name", "no pod volume with this name", device.name, ", ".join(pod_volumes) or "(none)")
        elif volume is not None and not isinstance(volume, PersistentVolumeClaimVolume):
            item.fail("name", "volumeDevices need a persistentVolumeClaim volume", device.name,
                      "the name of a persistentVolumeClaim volume with volumeMode: Block")
        elif isinstance(volume, PersistentVolumeClaimVolume) and volume.volume_mode != "Block" and \
                _claim_known(objects, namespace, volume.claim_name):
            item.fail("name", f"claim {volume.claim_name!r} has volumeMode {volume.volume_mode}",
                      device.name, "a claim with volumeMode: Block")
        if device.device_path and not device.device_path.startswith("/"):
            item.fail("devicePath", "must be an absolute path", device.device_path, "an absolute path")
        devices.append(device)
    if sum(1 for d in devices if d.device_path == "/") > 1:
        fields.fail("volumeDevices", "only one volumeDevice may be the root (devicePath: /)",
                    [d.name for d in devices if d.device_path == "/"], "at most one devicePath: /")
    ports = []
    for item in fields.items("ports"):
        host_port = item.data.get("hostPort")
        ports.append(ContainerPort(
            container_port=item.integer("containerPort", 1, minimum=1, maximum=65535),
            name=item.string("name"),
            protocol=item.choice("protocol", str, ("TCP", "UDP", "SCTP"), "TCP"),
            host_port=item.integer("hostPort", 0, minimum=1, maximum=65535) if host_port is not None else None,
            host_ip=item.string("hostIP"),
        ))
    for ignored in ("command", "args", "workingDir", "securityContext", "lifecycle"):
        if fields.data.get(ignored):
            pass  # Not applicable to a VM: accepted and ignored, as Virtlet does.
    return Container(
        name=name,
        image=image.strip(),
        image_pull_policy=policy,
        env=_env(fields, namespace, objects, field_refs),
        tty=fields.boolean("tty"),
        stdin=fields.boolean("stdin"),
        resources=Resources(limits=_resource_list(resources.sub("limits")),
                            requests=_resource_list(resources.sub("requests"))),
        volume_mounts=tuple(mounts),
        volume_devices=tuple(devices),
        ports=tuple(ports),
        readiness_probe=_probe(fields.sub("readinessProbe")) if fields.data.get("readinessProbe") else None,
        liveness_probe=_probe(fields.sub("livenessProbe")) if fields.data.get("livenessProbe") else None,
    )


def _claim_known(objects: _Objects, namespace: str, claim: str) -> bool:
    return (namespace, claim) in objects.claims


@attrs.frozen
class _Template:
    """A pod template, parsed once and stamped out for every replica.

    ``field_refs`` are the container env entries (index, fieldPath) whose
    value depends on the replica (``metadata.name``...), filled by :func:`_stamp`.
    """

    pod: VMPod
    field_refs: tuple[tuple[int, str], ...] = ()


_ANNOTATION_KEYS = frozenset(spec.key for spec in ANNOTATIONS)
_QUALIFIED_NAME = "[prefix/]name: name up to 63 alphanumerics, '-', '_' or '.', prefix a DNS subdomain"


def _metadata_maps(meta: _Fields) -> tuple[dict[str, str], dict[str, str], dict[str, object]]:
    """Labels, annotations (string values only) and the raw values of Virtlet's annotation keys."""
    labels = meta.string_map("labels")
    for key, value in labels.items():
        if not is_label_key(key):
            meta.fail("labels", "invalid label key", key, _QUALIFIED_NAME)
        elif not is_label_value(value):
            meta.errors.add(SpecError(join_path(meta.at("labels"), key), "invalid label value", value=value,
                                      accepted="up to 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends"))
    annotations: dict[str, str] = {}
    virtlet: dict[str, object] = {}
    raw: dict[Any, Any] = meta.mapping("annotations")
    for key, value in raw.items():
        if not isinstance(key, str):
            meta.fail("annotations", "keys must be strings", key)
        elif not is_label_key(key):
            meta.fail("annotations", "invalid annotation key", key, _QUALIFIED_NAME)
        elif key in _ANNOTATION_KEYS:
            # parse_annotations reports a value that is not a string with what the annotation accepts.
            virtlet[key] = value
            if isinstance(value, str):
                annotations[key] = value
        elif not isinstance(value, str):
            meta.errors.add(SpecError(join_path(meta.at("annotations"), key), "annotation values must be strings",
                                      value=value, accepted="a string (quote numbers and booleans)"))
        else:
            annotations[key] = value
    return labels, annotations, virtlet


def _not_vm_pod(meta: _Fields, found: object) -> SpecError:
    where = join_path(meta.at("annotations"), TARGET_RUNTIME_ANNOTATION)
    hint = (f"vmpod runs only pods annotated {TARGET_RUNTIME_ANNOTATION}: {VIRTLET_RUNTIME} "
            "(--accept-non-vm runs it anyway)")
    if found is None:
        return SpecError(where, f"not a VM pod: the annotation is missing; {hint}", accepted=VIRTLET_RUNTIME)
    return SpecError(where, f"not a VM pod: {hint}", value=found, accepted=VIRTLET_RUNTIME)


def _parse_template(meta: _Fields, spec: _Fields, namespace: str, objects: _Objects,
                    accept_non_vm: bool) -> _Template | None:
    errors_before = len(meta.errors.errors)
    labels, annotations, virtlet = _metadata_maps(meta)
    if not is_vm_pod(annotations) and not accept_non_vm:
        meta.errors.add(_not_vm_pod(meta, meta.mapping("annotations").get(TARGET_RUNTIME_ANNOTATION)))
        return None
    try:
        vm = parse_annotations(virtlet, meta.at("annotations"))
    except SpecError as exc:
        meta.errors.add(exc)
        vm = None
    volumes: dict[str, Volume] = {}
    for item in spec.items("volumes"):
        volume = _volume(item, namespace, objects)
        if volume is None:
            continue
        if volume.name in volumes:
            item.fail("name", "duplicate volume name", volume.name, "unique volume names")
        volumes[volume.name] = volume
    containers = spec.data.get("containers")
    for extra in ("initContainers", "ephemeralContainers"):
        if spec.data.get(extra):
            spec.fail(extra, f"VM pods have exactly one container and no {extra}",
                      len(spec.data[extra]) if isinstance(spec.data[extra], list) else spec.data[extra],
                      "a single entry in containers")
    if not isinstance(containers, list) or len(containers) != 1 or not isinstance(containers[0], dict):
        count = len(containers) if isinstance(containers, list) else containers
        spec.fail("containers", "VM pods have exactly one container", count,
                  "a list with exactly one container (the VM)")
        return None
    field_refs: list[tuple[int, str]] = []
    container = _container(_Fields(containers[0], spec.at("containers[0]"), spec.errors), volumes,
                           namespace, objects, field_refs)
    if spec.data.get("hostNetwork"):
        spec.fail("hostNetwork", "hostNetwork is not supported for VM pods", True, "false")
    hostname = spec.optional_string("hostname")
    subdomain = spec.optional_string("subdomain")
    for key, value in (("hostname", hostname), ("subdomain", subdomain)):
        if value is not None and not is_dns_label(value):
            spec.fail(key, "invalid name", value, "a DNS label")
    restart = spec.choice("restartPolicy", RestartPolicy, [p.value for p in RestartPolicy], RestartPolicy.ALWAYS)
    grace = spec.integer("terminationGracePeriodSeconds", 30, minimum=0)
    if vm is None or len(meta.errors.errors) > errors_before:
        return None
    refs = [(DataKind.CONFIGMAP, v.config_map_name) for v in volumes.values() if isinstance(v, ConfigMapVolume)]
    refs += [(DataKind.SECRET, v.secret_name) for v in volumes.values() if isinstance(v, SecretVolume)]
    refs += [(r.kind, r.name) for r in (vm.cloud_init_user_data_source, vm.ssh_key_source,
                                        vm.files_from_data_source) if r is not None]
    data_objects = tuple(objects.data[(kind, namespace, name)] for kind, name in sorted(set(refs))
                         if (kind, namespace, name) in objects.data)
    pod = VMPod(name="template", container=container, namespace=namespace, labels=labels,
                annotations=annotations, hostname=hostname, subdomain=subdomain,
                volumes=tuple(volumes.values()), vm=vm, restart_policy=restart,
                termination_grace_period_seconds=grace, data_objects=data_objects)
    # Resolve every reference now, so that a VMPod that exists is valid.
    for check in (datasources.merged_user_data, datasources.user_data_script, datasources.ssh_keys,
                  datasources.injected_files):
        try:
            check(pod)
        except SpecError as exc:
            meta.errors.add(exc.located(_meta_prefix(meta.path)))
    if len(meta.errors.errors) > errors_before:
        return None
    return _Template(pod, tuple(field_refs))


def _meta_prefix(meta_path: str) -> str:
    # datasources report "metadata.annotations.X"; re-root it under the template's metadata.
    return meta_path.removesuffix("metadata").rstrip(".")


def _stamp(template: _Template, name: str, *, uid: str | None = None, hostname: str | None = None,
           subdomain: str | None = None, labels: Mapping[str, str] | None = None) -> VMPod:
    base = template.pod
    pod = attrs.evolve(
        base, name=name, uid=uid or _pod_uid(base.namespace, name),
        hostname=hostname if hostname is not None else base.hostname,
        subdomain=subdomain if subdomain is not None else base.subdomain,
        labels=dict(labels) if labels is not None else base.labels,
    )
    if template.field_refs:
        env = list(pod.container.env)
        for index, path in template.field_refs:
            env[index] = EnvVar(env[index].name, _resolve_field(path, pod))
        pod = attrs.evolve(pod, container=attrs.evolve(pod.container, env=tuple(env)))
    return pod


_JOB_RESTART = (RestartPolicy.ON_FAILURE, RestartPolicy.NEVER)


def _expand(kind: str, doc: _Fields, objects: _Objects, accept_non_vm: bool) -> list[VMPod]:
    meta = doc.sub("metadata", required=True)
    name = meta.string("name", required=True)
    namespace = meta.string("namespace", "default") or "default"
    # A bad name or namespace gives no pods, but the rest is still checked so every error is reported.
    if name and not is_dns_subdomain(name):
        meta.fail("name", "invalid name", name, "a DNS subdomain (lower-case alphanumerics, '-' and '.')")
        name = ""
    if not is_dns_label(namespace):
        meta.fail("namespace", "invalid namespace", namespace, "a DNS label")
        namespace = "default"
    if kind == "Pod":
        template = _parse_template(meta, doc.sub("spec", required=True), namespace, objects, accept_non_vm)
        if template is None or not name:
            return []
        return [_stamp(template, name, uid=meta.string("uid") or None)]
    spec = doc.sub("spec", required=True)
    if kind == "CronJob":
        spec = spec.sub("jobTemplate", required=True).sub("spec", required=True)
    if kind in ("Job", "CronJob"):
        # Kubernetes runs min(parallelism, completions) pods of a Job at once.
        replicas = spec.integer("parallelism", 1, minimum=0, maximum=MAX_REPLICAS)
        if spec.data.get("completions") is not None:
            replicas = min(replicas, spec.integer("completions", 1, minimum=0, maximum=MAX_REPLICAS))
    elif kind == "DaemonSet":
        replicas = 1  # one node: this one
    else:
        replicas = spec.integer("replicas", 1, minimum=0, maximum=MAX_REPLICAS)
    service = spec.optional_string("serviceName") if kind == "StatefulSet" else None
    if kind == "StatefulSet":
        if service is not None and not is_dns_label(service):
            spec.fail("serviceName", "invalid service name", service, "a DNS label")
        last = f"{name}-{max(replicas - 1, 0)}"
        if name and not is_dns_label(last):
            meta.fail("name", "StatefulSet pod names are their hostnames and must be DNS labels", name,
                      f"a DNS label short enough for {last!r} (at most 63 characters)")
            name = ""
    template_fields = spec.sub("template", required=True)
    template_meta = template_fields.sub("metadata")
    template = _parse_template(template_meta, template_fields.sub("spec", required=True), namespace, objects,
                               accept_non_vm)
    if template is None or not name:
        return []
    if kind in ("Job", "CronJob") and template.pod.restart_policy not in _JOB_RESTART:
        template_fields.fail("spec.restartPolicy", f"a {kind} needs a restartPolicy",
                             template.pod.restart_policy.value, '"OnFailure" or "Never"')
        return []
    labels = dict(template.pod.labels)
    if kind == "StatefulSet":
        pods = []
        for index in range(replicas):
            pod_name = f"{name}-{index}"
            pod_labels = {**labels, "statefulset.kubernetes.io/pod-name": pod_name,
                          "apps.kubernetes.io/pod-index": str(index)}
            pods.append(_stamp(template, pod_name, hostname=pod_name, subdomain=service, labels=pod_labels))
        return pods
    template_hash = _suffix(f"{namespace}/{kind}/{name}", 10)
    if kind == "Deployment":
        base = f"{name}-{template_hash}"
        labels["pod-template-hash"] = template_hash
    elif kind == "CronJob":
        base = f"{name}-{template_hash[:8]}"
    else:
        base = name
    if len(base) + 6 > 253:
        meta.fail("name", f"too long for the names of the {kind}'s pods", name,
                  f"a name of at most {253 - 6 - (len(base) - len(name))} characters")
        return []
    return [_stamp(template, f"{base}-{_suffix(f'{namespace}/{kind}/{name}/{i}')}", labels=labels)
            for i in range(replicas)]


def _collect_objects(documents: list[tuple[_Fields, str]]) -> _Objects:
    data: dict[tuple[DataKind, str, str], DataObject] = {}
    claims: dict[tuple[str, str], Mapping[str, Any]] = {}
    volumes: dict[str, Mapping[str, Any]] = {}
    for doc, kind in documents:
        if kind not in _KEPT_KINDS:
            continue
        meta = doc.sub("metadata", required=True)
        name = meta.string("name", required=True)
        namespace = meta.string("namespace", "default") or "default"
        if name and not is_dns_subdomain(name):
            meta.fail("name", "invalid name", name, "a DNS subdomain (lower-case alphanumerics, '-' and '.')")
            continue
        if kind in ("ConfigMap", "Secret"):
            data_kind = DataKind.CONFIGMAP if kind == "ConfigMap" else DataKind.SECRET
            data[(data_kind, namespace, name)] = _decode_data_object(data_kind, doc, namespace, name)
        elif kind == "PersistentVolumeClaim":
            claims[(namespace, name)] = doc.data
        else:
            volumes[name] = doc.data
    claimed: dict[tuple[str, str], Mapping[str, Any]] = {}
    for pv in volumes.values():
        ref = _dict(_dict(pv.get("spec")).get("claimRef"))
        key = (ref.get("namespace", "default"), ref.get("name"))
        if isinstance(key[0], str) and isinstance(key[1], str):
            claimed.setdefault((key[0], key[1]), pv)
    return _Objects(data=data, claims=claims, volumes=volumes, claimed=claimed)


def _flatten(raw_documents: Iterable[Any], errors: ErrorCollector) -> list[tuple[_Fields, str]]:
    result: list[tuple[_Fields, str]] = []

    def visit(document: Any, path: str) -> None:
        if document is None:
            return
        if not isinstance(document, dict):
            errors.add(SpecError(path, "a Kubernetes object must be a mapping", value=document,
                                 accepted="a mapping with apiVersion, kind, metadata"))
            return
        kind = document.get("kind")
        if not isinstance(kind, str) or not kind:
            errors.add(SpecError(join_path(path, "kind"), "missing or invalid kind", value=kind,
                                 accepted=", ".join((*WORKLOAD_KINDS, "List", *_KEPT_KINDS))))
            return
        if kind == "List" or (kind.endswith("List") and "items" in document):
            items = document.get("items")
            if not isinstance(items, list):
                errors.add(SpecError(join_path(path, "items"), "expected a list", value=items))
                return
            for index, item in enumerate(items):
                visit(item, join_path(path, f"items[{index}]"))
            return
        result.append((_Fields(document, path, errors), kind))

    for document in raw_documents:
        visit(document, "")
    return result


def load_manifest_text(text: str, source: str = "<input>", *, accept_non_vm: bool = False) -> LoadResult:
    """Read every VM pod from manifest ``text`` (one or more YAML/JSON documents).

    :param source: where the text came from, put on every error and note.
    :param accept_non_vm: treat pods without the target-runtime annotation as VM pods.
    :raises SpecError: (a :class:`~vmpod.errors.SpecErrors` for several) with every problem found.
    """
    errors = ErrorCollector()
    notes: list[str] = []
    try:
        raw = list(safe_load_all_limited(text))
    except SpecError as exc:
        raise exc.located(source=source) from None
    multi = len(raw) > 1
    per_document: list[tuple[str, ErrorCollector, list[tuple[_Fields, str]]]] = []
    for number, document in enumerate(raw, start=1):
        collector = ErrorCollector()
        where = f"{source} (document {number})" if multi else source
        per_document.append((where, collector, _flatten([document], collector)))
    objects = _collect_objects([item for _, _, flat in per_document for item in flat])
    pods: list[VMPod] = []
    seen: set[tuple[str, str]] = set()
    for where, collector, flat in per_document:
        for fields, kind in flat:
            meta = fields.data.get("metadata")
            label = f"{kind} {meta.get('name', '?')}" if isinstance(meta, dict) else kind
            if kind in _KEPT_KINDS:
                continue
            if kind not in WORKLOAD_KINDS:
                notes.append(f"{where}: skipped {label}: not a pod or pod workload")
                continue
            before = len(collector.errors)
            expanded = _expand(kind, fields, objects, accept_non_vm)
            for pod in expanded:
                key = (pod.namespace, pod.name)
                if key in seen:
                    collector.add(SpecError(fields.at("metadata.name"), "duplicate pod name in the input",
                                            value=pod.name, accepted="unique pod names per namespace"))
                    continue
                seen.add(key)
                pods.append(pod)
            if not expanded and len(collector.errors) == before:
                notes.append(f"{where}: {label}: no pods (replicas: 0)")
        for error in collector.errors:
            errors.add(error.located(source=where))
    errors.raise_if_any()
    return LoadResult(pods=tuple(pods), notes=tuple(notes))


def load_manifest_files(paths: Sequence[str | Path], *, accept_non_vm: bool = False) -> LoadResult:
    """Read VM pods from several files (``-`` is standard input); every file's errors are reported."""
    errors = ErrorCollector()
    pods: list[VMPod] = []
    sources: list[str] = []
    notes: list[str] = []
    for path in paths:
        name = str(path)
        try:
            text = sys.stdin.read() if name == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.add(SpecError("", f"cannot read the file: {getattr(exc, 'strerror', None) or exc}",
                                 source=name))
            continue
        source = name if name != "-" else "<stdin>"
        try:
            result = load_manifest_text(text, source, accept_non_vm=accept_non_vm)
        except SpecError as exc:
            errors.add(exc)
            continue
        pods.extend(result.pods)
        sources.extend(source for _ in result.pods)
        notes.extend(result.notes)
    errors.raise_if_any()
    first_source: dict[tuple[str, str], str] = {}
    for pod, source in zip(pods, sources, strict=True):
        key = (pod.namespace, pod.name)
        if key in first_source:
            errors.add(SpecError("metadata.name", f"duplicate pod name across the input files (also in "
                                 f"{first_source[key]})", value=pod.full_name,
                                 accepted="unique pod names per namespace", source=source))
        else:
            first_source[key] = source
    errors.raise_if_any()
    return LoadResult(pods=tuple(pods), notes=tuple(notes))
