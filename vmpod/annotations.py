"""The codec between Virtlet's pod annotations and :class:`~vmpod.model.VMSettings`.

:data:`ANNOTATIONS` is the single table of every annotation vmpod reads: its
key, the :class:`VMSettings` field it fills, its default, what it accepts, and
a parser and formatter.  :func:`parse_annotations` reads a whole annotation
map and reports every bad value at once; :func:`format_annotations` writes the
settings back (``parse(format(s)) == s``).  The reference page
``docs/reference/annotations.md`` is generated from this table.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vmpod.errors import ErrorCollector, SpecError
from vmpod.model import (
    TARGET_RUNTIME_ANNOTATION,
    CloudInitImageType,
    CPUFeature,
    CPUModel,
    CPUModelMode,
    CPUTopology,
    DataKind,
    DataSourceRef,
    DiskDriver,
    LibvirtCPU,
    SourceEncoding,
    VMSettings,
)
from vmpod.names import is_dns_subdomain as _is_dns_subdomain
from vmpod.quantity import ACCEPTED_QUANTITY, parse_quantity
from vmpod.yamlutil import check_json_data, dump_yaml, safe_load_limited

__all__ = [
    "ANNOTATIONS",
    "AnnotationSpec",
    "annotation_for_field",
    "format_annotations",
    "parse_annotations",
]

MAX_VCPUS = 255
_INT64_MAX = 2**63 - 1


@attrs.frozen
class AnnotationSpec:
    """One annotation: where it goes, what it accepts, and how to read and write it.

    :param key: the annotation key, e.g. ``VirtletVCPUCount``.
    :param field: the :class:`~vmpod.model.VMSettings` attribute it fills.
    :param accepted: what values are accepted, in words (shown in errors and docs).
    :param default: the default, in words.
    :param summary: one sentence for the reference docs.
    :param parse: text -> typed value; raises :class:`SpecError` with an empty path.
    :param format: typed value -> text (the inverse of ``parse``).
    :param virtlet_difference: where vmpod reads this annotation differently from Virtlet
        (empty: it does not); shown in the reference docs.
    """

    key: str
    field: str
    accepted: str
    default: str
    summary: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    virtlet_difference: str = ""


# --------------------------------------------------------------------------- parsers


def _bad(message: str, value: object, accepted: str) -> SpecError:
    return SpecError("", message, value=value, accepted=accepted)


_BOOL_ACCEPTED = '"true" or "false"'


def _parse_bool(text: str) -> bool:
    # Virtlet treats anything but the exact string "true" as false, silently;
    # "True" or "yes" then did nothing.  vmpod refuses what it cannot read.
    if text == "true":
        return True
    if text in ("false", ""):
        return False
    raise _bad("not a boolean", text, _BOOL_ACCEPTED)


def _format_bool(value: bool) -> str:
    return "true" if value else "false"


_VCPU_ACCEPTED = f"an integer from 1 to {MAX_VCPUS}"


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _parse_vcpus(text: str) -> int:
    # Go's strconv.Atoi: ASCII digits with an optional sign (Python's int() also takes
    # underscores and non-ASCII digits).  Surrounding whitespace is forgiven.
    stripped = text.strip()
    if _INTEGER.fullmatch(stripped) is None:
        raise _bad("not an integer", text, _VCPU_ACCEPTED)
    if len(stripped.lstrip("+-0")) > 4:
        raise _bad(f"vCPU count too big, max is {MAX_VCPUS}", text, _VCPU_ACCEPTED)
    count = int(stripped, 10)
    if count < 1:
        raise _bad("vCPU count must be at least 1", text, _VCPU_ACCEPTED)
    if count > MAX_VCPUS:
        raise _bad(f"vCPU count too big, max is {MAX_VCPUS}", text, _VCPU_ACCEPTED)
    return count


def _enum_parser(enum_type: Any, *, lower: bool = False) -> Callable[[str], Any]:
    accepted = " or ".join(f'"{member.value}"' for member in enum_type)

    def parse(text: str) -> Any:
        candidate = text.lower() if lower else text
        for member in enum_type:
            if member.value == candidate:
                return member
        raise _bad("unsupported value", text, accepted)

    return parse


def _enum_accepted(enum_type: Any) -> str:
    return " or ".join(f'"{member.value}"' for member in enum_type)


def _parse_mapping(text: str) -> dict[str, Any] | None:
    try:
        data = safe_load_limited(text)
    except SpecError as exc:
        raise _bad(exc.message, exc.value if exc.has_value else text, "a YAML or JSON mapping") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _bad(f"must be a mapping, not a {_kind(data)}", text, "a YAML or JSON mapping")
    try:
        check_json_data(data)
    except SpecError as exc:
        raise _bad(f"{exc.message} (at {exc.path or 'the top level'})", exc.value if exc.has_value else text,
                   "a YAML or JSON mapping with string keys and finite numbers") from None
    return data


def _format_yaml(value: Mapping[str, Any] | None) -> str:
    if value is None:
        return ""
    return dump_yaml(dict(value), sort_keys=True)


def _parse_text(text: str) -> str:
    return text


def _parse_optional_text(text: str) -> str | None:
    return text if text != "" else None


def _format_optional_text(value: str | None) -> str:
    return value or ""


_SOURCE_ACCEPTED = '"configmap/NAME" or "secret/NAME"'
_KEYED_SOURCE_ACCEPTED = '"configmap/NAME[/KEY]" or "secret/NAME[/KEY]"'


def _parse_source(text: str, *, with_key: bool) -> DataSourceRef:
    accepted = _KEYED_SOURCE_ACCEPTED if with_key else _SOURCE_ACCEPTED
    parts = text.split("/")
    if len(parts) not in ((2, 3) if with_key else (2,)):
        raise _bad("malformed source reference", text, accepted)
    kind_text, name = parts[0], parts[1]
    try:
        kind = DataKind(kind_text.lower())
    except ValueError:
        raise _bad(f"unsupported source kind {kind_text!r}", text, accepted) from None
    if not _is_dns_subdomain(name):
        raise _bad(f"invalid {kind.value} name {name!r}", text, accepted + " with NAME a DNS subdomain")
    key: str | None = None
    if with_key:
        key = parts[2] if len(parts) == 3 else "authorized_keys"
        if not key:
            raise _bad("empty key", text, accepted)
    return DataSourceRef(kind, name, key)


def _parse_plain_source(text: str) -> DataSourceRef | None:
    return _parse_source(text, with_key=False) if text else None


def _parse_keyed_source(text: str) -> DataSourceRef | None:
    return _parse_source(text, with_key=True) if text else None


def _format_source(value: DataSourceRef | None) -> str:
    return "" if value is None else str(value)


def _parse_ssh_keys(text: str) -> tuple[str, ...]:
    # Virtlet splits on "\n" only and trims each line.
    return tuple(line.strip() for line in text.split("\n") if line.strip())


def _format_ssh_keys(value: tuple[str, ...]) -> str:
    return "".join(key + "\n" for key in value)


_SIZE_ACCEPTED = ACCEPTED_QUANTITY + ", a whole number of bytes"


def _parse_size(text: str) -> int | None:
    try:
        quantity = parse_quantity(text)
    except SpecError as exc:
        raise _bad(exc.message, text, exc.accepted or _SIZE_ACCEPTED) from None
    if not quantity.is_integer:
        raise _bad("not a whole number of bytes", text, _SIZE_ACCEPTED)
    size = int(quantity.value)
    if size < 0:
        raise _bad("size must not be negative", text, _SIZE_ACCEPTED)
    if size > _INT64_MAX:
        raise _bad("size too large", text, _SIZE_ACCEPTED + " below 8Ei")
    # 0 means "the image's own size", as in Virtlet.
    return size or None


def _format_size(value: int | None) -> str:
    return "" if value is None else str(value)


def _parse_cpu_model(text: str) -> CPUModel | None:
    if text == "":
        return None
    if text == CPUModel.HOST_MODEL.value:
        return CPUModel.HOST_MODEL
    raise _bad("unsupported CPU model", text, '"host-model" (or empty for the hypervisor default)')


def _format_enum_or_empty(value: Any) -> str:
    return "" if value is None else str(value.value)


def _parse_uuid(text: str) -> uuid.UUID | None:
    if text == "":
        return None
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise _bad("not a UUID", text, "a UUID such as 123e4567-e89b-12d3-a456-426614174000") from None


def _format_uuid(value: uuid.UUID | None) -> str:
    return "" if value is None else str(value)


# ---- VirtletLibvirtCPUSetting: libvirt-go-xml DomainCPU field names, matched case-insensitively.

_CPU_ACCEPTED = (
    "a YAML mapping with fields mode, match, check, model (a name or {value, fallback, vendorid}), vendor, "
    "topology {sockets, cores, threads}, features [{name, policy}] (names case-insensitive)"
)
_CPU_MATCH = ("minimum", "exact", "strict")
_CPU_CHECK = ("none", "partial", "full")
_CPU_FALLBACK = ("allow", "forbid")
_CPU_POLICY = ("force", "require", "optional", "disable", "forbid")


def _lower_keys(data: Mapping[Any, Any], where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).lower()
        if name not in allowed:
            raise _bad(f"unknown field {where}{key}", str(key), _CPU_ACCEPTED)
        if name in result:
            raise _bad(f"field {where}{name} given twice (names are case-insensitive)", str(key), _CPU_ACCEPTED)
        result[name] = value
    return result


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(f"unsupported {what}", value, " or ".join(f'"{v}"' for v in allowed))
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{what} must be a non-empty string", value, _CPU_ACCEPTED)
    return value


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"{what} must be a positive integer", value, "an integer of at least 1")
    return value


def _parse_libvirt_cpu(text: str) -> LibvirtCPU | None:
    if text.strip() == "":
        return None
    try:
        data = safe_load_limited(text)
    except SpecError as exc:
        raise _bad(exc.message, text, _CPU_ACCEPTED) from None
    if not isinstance(data, dict):
        raise _bad(f"must be a mapping, not a {_kind(data)}", text, _CPU_ACCEPTED)
    fields = _lower_keys(data, "", ("mode", "match", "check", "model", "vendor", "topology", "features"))
    mode = None
    if fields.get("mode") is not None:
        mode = CPUModelMode(_choice(fields["mode"], tuple(m.value for m in CPUModelMode), "CPU mode"))
    match = _choice(fields["match"], _CPU_MATCH, "CPU match") if fields.get("match") is not None else None
    check = _choice(fields["check"], _CPU_CHECK, "CPU check") if fields.get("check") is not None else None
    model = fallback = vendor_id = None
    if fields.get("model") is not None:
        raw_model = fields["model"]
        if isinstance(raw_model, str):
            model = _string(raw_model, "model")
        elif isinstance(raw_model, dict):
            model_fields = _lower_keys(raw_model, "model.", ("value", "fallback", "vendorid"))
            if model_fields.get("value") is not None:
                model = _string(model_fields["value"], "model.value")
            if model_fields.get("fallback") is not None:
                fallback = _choice(model_fields["fallback"], _CPU_FALLBACK, "model fallback")
            if model_fields.get("vendorid") is not None:
                vendor_id = _string(model_fields["vendorid"], "model.vendorid")
        else:
            raise _bad("model must be a string or a mapping", raw_model, _CPU_ACCEPTED)
    vendor = _string(fields["vendor"], "vendor") if fields.get("vendor") is not None else None
    topology = None
    if fields.get("topology") is not None:
        raw_topology = fields["topology"]
        if not isinstance(raw_topology, dict):
            raise _bad("topology must be a mapping", raw_topology, _CPU_ACCEPTED)
        topo = _lower_keys(raw_topology, "topology.", ("sockets", "cores", "threads"))
        topology = CPUTopology(
            sockets=_positive(topo.get("sockets", 1), "topology.sockets"),
            cores=_positive(topo.get("cores", 1), "topology.cores"),
            threads=_positive(topo.get("threads", 1), "topology.threads"),
        )
    features: list[CPUFeature] = []
    raw_features = fields.get("features")
    if raw_features is None:
        raw_features = []
    if not isinstance(raw_features, list):
        raise _bad("features must be a list", raw_features, _CPU_ACCEPTED)
    for raw in raw_features:
        if not isinstance(raw, dict):
            raise _bad("each feature must be a mapping", raw, "{name: NAME, policy: POLICY}")
        feature = _lower_keys(raw, "features[].", ("name", "policy"))
        features.append(
            CPUFeature(
                name=_string(feature.get("name"), "feature name"),
                policy=_choice(feature.get("policy", "require"), _CPU_POLICY, "feature policy"),
            )
        )
    return LibvirtCPU(mode=mode, match=match, check=check, model=model, model_fallback=fallback,
                      vendor=vendor, topology=topology, features=tuple(features), model_vendor_id=vendor_id)


def _format_libvirt_cpu(value: LibvirtCPU | None) -> str:
    if value is None:
        return ""
    data: dict[str, Any] = {}
    if value.mode is not None:
        data["mode"] = value.mode.value
    if value.match is not None:
        data["match"] = value.match
    if value.check is not None:
        data["check"] = value.check
    if value.model is not None or value.model_fallback is not None or value.model_vendor_id is not None:
        model: dict[str, str] = {}
        if value.model is not None:
            model["value"] = value.model
        if value.model_fallback is not None:
            model["fallback"] = value.model_fallback
        if value.model_vendor_id is not None:
            model["vendorid"] = value.model_vendor_id
        data["model"] = model
    if value.vendor is not None:
        data["vendor"] = value.vendor
    if value.topology is not None:
        data["topology"] = attrs.asdict(value.topology)
    if value.features:
        data["features"] = [{"name": f.name, "policy": f.policy} for f in value.features]
    return dump_yaml(data, sort_keys=True)


# --------------------------------------------------------------------------- the table

ANNOTATIONS: tuple[AnnotationSpec, ...] = (
    AnnotationSpec(
        "VirtletVCPUCount", "vcpu_count", _VCPU_ACCEPTED, "1",
        "Number of virtual CPUs. The CPU quota from resources.limits.cpu is divided among them.",
        _parse_vcpus, str,
        virtlet_difference=(
            "Virtlet turns 0 and negative counts into 1; vmpod refuses them. Surrounding whitespace "
            "is forgiven; digits must be ASCII (no underscores)."
        ),
    ),
    AnnotationSpec(
        "VirtletDiskDriver", "disk_driver", _enum_accepted(DiskDriver) + " (case-sensitive)", "scsi",
        "Bus of every disk: virtio-scsi (sda..sdz) or virtio-blk (vda..vdu).",
        _enum_parser(DiskDriver), _format_enum_or_empty,
    ),
    AnnotationSpec(
        "VirtletCloudInitImageType", "cloud_init_image_type",
        _enum_accepted(CloudInitImageType) + " (case-insensitive)", "nocloud",
        "Layout of the cloud-init seed ISO: NoCloud (label cidata) or ConfigDrive (label config-2).",
        _enum_parser(CloudInitImageType, lower=True), _format_enum_or_empty,
    ),
    AnnotationSpec(
        "VirtletCloudInitMetaData", "cloud_init_meta_data", "a YAML or JSON mapping", "none",
        "Keys that overwrite the generated meta-data keys (shallow).",
        _parse_mapping, _format_yaml,
        virtlet_difference=(
            "The mapping must hold JSON data: string keys only, no duplicate keys, no YAML tags such "
            "as !!binary, no NaN or infinity; dates stay strings."
        ),
    ),
    AnnotationSpec(
        "VirtletCloudInitUserData", "cloud_init_user_data", "a YAML or JSON mapping", "none",
        "cloud-config keys deep-merged into the generated user-data.",
        _parse_mapping, _format_yaml,
        virtlet_difference=(
            "The mapping must hold JSON data: string keys only, no duplicate keys, no YAML tags such "
            "as !!binary, no NaN or infinity; dates stay strings."
        ),
    ),
    AnnotationSpec(
        "VirtletCloudInitUserDataOverwrite", "cloud_init_user_data_overwrite", _BOOL_ACCEPTED, "false",
        "Annotation user-data replaces the user-data source, and VirtletSSHKeys replace the key source.",
        _parse_bool, _format_bool,
        virtlet_difference=(
            'Virtlet reads anything but "true" as false; vmpod refuses values other than "true", '
            '"false" and "".'
        ),
    ),
    AnnotationSpec(
        "VirtletCloudInitUserDataScript", "cloud_init_user_data_script", "any text", "none",
        "Raw user-data used instead of the generated #cloud-config; @virtlet-mount-script@ is "
        "replaced with the volume symlink and mount scripts.",
        _parse_optional_text, _format_optional_text,
    ),
    AnnotationSpec(
        "VirtletCloudInitUserDataSource", "cloud_init_user_data_source", _SOURCE_ACCEPTED, "none",
        "A ConfigMap or Secret whose keys are top-level user-data keys (values parsed as YAML).",
        _parse_plain_source, _format_source,
        virtlet_difference=(
            "Values of the object that are not valid YAML are errors (Virtlet silently drops them). "
            "The object must be in the same input, and NAME must be a DNS subdomain."
        ),
    ),
    AnnotationSpec(
        "VirtletCloudInitUserDataSourceKey", "cloud_init_user_data_source_key",
        "a key of the merged user-data", "none",
        "Use the value under this key of the merged user-data as the user-data script.",
        _parse_optional_text, _format_optional_text,
        virtlet_difference=(
            "The script is the object's value taken verbatim, not its YAML parse, so a plain "
            "#!/bin/sh script keeps its first line and its newlines (Virtlet folds it into one line)."
        ),
    ),
    AnnotationSpec(
        "VirtletCloudInitUserDataSourceEncoding", "cloud_init_user_data_source_encoding",
        _enum_accepted(SourceEncoding), "plain",
        "Encoding of the user-data script found under VirtletCloudInitUserDataSourceKey.",
        _enum_parser(SourceEncoding), _format_enum_or_empty,
    ),
    AnnotationSpec(
        "VirtletSSHKeys", "ssh_keys", "SSH public keys, one per line", "none",
        "Public keys for the guest's default user (meta-data public-keys).",
        _parse_ssh_keys, _format_ssh_keys,
    ),
    AnnotationSpec(
        "VirtletSSHKeySource", "ssh_key_source", _KEYED_SOURCE_ACCEPTED, "none (key: authorized_keys)",
        "A ConfigMap or Secret key holding SSH public keys, one per line.",
        _parse_keyed_source, _format_source,
        virtlet_difference=(
            "The object must be in the same input; NAME must be a DNS subdomain and KEY must not be "
            "empty."
        ),
    ),
    AnnotationSpec(
        "VirtletRootVolumeSize", "root_volume_size", _SIZE_ACCEPTED, "the image's virtual size",
        "Size of the root disk; used when larger than the image's virtual size.",
        _parse_size, _format_size,
        virtlet_difference="Virtlet ignores negative sizes; vmpod refuses them, and sizes that are not whole bytes.",
    ),
    AnnotationSpec(
        "VirtletCPUModel", "cpu_model", '"host-model" (or empty)', "the hypervisor default",
        "host-model passes the host CPU model (with vmx) through, for nested virtualization.",
        _parse_cpu_model, _format_enum_or_empty,
    ),
    AnnotationSpec(
        "VirtletLibvirtCPUSetting", "libvirt_cpu_setting", _CPU_ACCEPTED, "none",
        "The whole libvirt <cpu> element; takes precedence over VirtletCPUModel.",
        _parse_libvirt_cpu, _format_libvirt_cpu,
        virtlet_difference=(
            "Unknown fields are errors (Virtlet's YAML decoding ignores them), values are checked "
            "against libvirt's choices, and a field written twice in different case is an error."
        ),
    ),
    AnnotationSpec(
        "VirtletSystemUUID", "system_uuid", "a UUID", "derived from the pod UID",
        "SMBIOS system UUID of the VM, also its machine UUID.",
        _parse_uuid, _format_uuid,
    ),
    AnnotationSpec(
        "VirtletForceDHCPNetworkConfig", "force_dhcp_network_config", _BOOL_ACCEPTED, "false",
        "Leave network-config out of the seed so the guest uses DHCP.",
        _parse_bool, _format_bool,
        virtlet_difference=(
            'Virtlet reads anything but "true" as false; vmpod refuses values other than "true", '
            '"false" and "".'
        ),
    ),
    AnnotationSpec(
        "VirtletChown9pfsMounts", "chown_9pfs_mounts", _BOOL_ACCEPTED, "false",
        "Recursively chown directories shared with the guest over 9p to the hypervisor's user.",
        _parse_bool, _format_bool,
        virtlet_difference=(
            'Virtlet reads anything but "true" as false; vmpod refuses values other than "true", '
            '"false" and "".'
        ),
    ),
    AnnotationSpec(
        "VirtletFilesFromDataSource", "files_from_data_source", _SOURCE_ACCEPTED, "none",
        "Files written into the root filesystem before first boot: KEY (content), KEY_path, KEY_encoding.",
        _parse_plain_source, _format_source,
        virtlet_difference="The object must be in the same input, and NAME must be a DNS subdomain.",
    ),
)

_BY_KEY = {spec.key: spec for spec in ANNOTATIONS}
_BY_FIELD = {spec.field: spec for spec in ANNOTATIONS}


def annotation_for_field(field: str) -> str:
    """The annotation key that fills :class:`VMSettings` attribute ``field``."""
    return _BY_FIELD[field].key


def parse_annotations(annotations: Mapping[str, object], path: str = "metadata.annotations") -> VMSettings:
    """Read every Virtlet annotation in ``annotations`` into :class:`VMSettings`.

    Unknown annotations are ignored (they belong to other tools).  Every bad
    value is reported, each as a :class:`SpecError` whose path is
    ``<path>.<annotation key>``; several are raised together as
    :class:`~vmpod.errors.SpecErrors`.
    """
    errors = ErrorCollector()
    values: dict[str, Any] = {}
    for key, spec in _BY_KEY.items():
        if key not in annotations:
            continue
        text = annotations[key]
        where = f"{path}.{key}"
        if not isinstance(text, str):
            errors.add(SpecError(where, "annotation values must be strings", value=text,
                                 accepted=f"a string: {spec.accepted} (quote numbers and booleans)"))
            continue
        try:
            values[spec.field] = spec.parse(text)
        except SpecError as exc:
            errors.add(SpecError(where, exc.message, value=exc.value if exc.has_value else text,
                                 accepted=exc.accepted or spec.accepted))
    errors.raise_if_any()
    return VMSettings(**values)


def format_annotations(settings: VMSettings) -> dict[str, str]:
    """The annotations that express ``settings`` (only those that differ from the defaults)."""
    defaults = VMSettings()
    result: dict[str, str] = {}
    for spec in ANNOTATIONS:
        value = getattr(settings, spec.field)
        if value != getattr(defaults, spec.field):
            result[spec.key] = spec.format(value)
    return result


def is_vm_pod(annotations: Mapping[str, Any]) -> bool:
    """True when the annotations carry ``kubernetes.io/target-runtime: virtlet.cloud``."""
    return annotations.get(TARGET_RUNTIME_ANNOTATION) == "virtlet.cloud"


def decode_base64(text: str, where: str, annotation: str) -> bytes:
    """Strict standard-alphabet base64 (whitespace allowed); a :class:`SpecError` names ``where``."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(where, f"invalid base64 ({annotation})", value=text,
                        accepted="standard base64 (A-Z a-z 0-9 + /, = padding)") from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {str: "string", int: "number", float: "number", bool: "boolean", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)


