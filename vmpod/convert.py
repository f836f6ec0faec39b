"""The one cattrs converter: model objects to plain data (JSON/YAML) and back.

The unstructured form uses the attrs field names.  Unions are tagged with a
``kind`` key (volumes: ``emptyDir``, ``hostPath``...; probe handlers:
``tcpSocket``, ``httpGet``, ``exec``; flexvolume options: ``qcow2``, ``raw``,
``ceph``).  Quantities are strings as written (``"4Gi"``), UUIDs are strings,
bytes are base64 strings.  Unknown keys are errors.

Structuring bad data raises :class:`~vmpod.errors.SpecErrors` whose paths
are the data's own (``container.resources.limits.memory``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import uuid
from typing import Any, TypeVar

import cattrs
import yaml
from cattrs.strategies import configure_tagged_union

from vmpod import model
from vmpod.errors import SpecError, SpecErrors
from vmpod.quantity import Quantity, parse_quantity
from vmpod.yamlutil import safe_load_limited

__all__ = ["CONVERTER", "from_json", "from_yaml", "make_converter", "structure", "to_json", "to_yaml",
           "unstructure"]

T = TypeVar("T")

_VOLUME_TAGS: dict[type, str] = {
    model.EmptyDirVolume: "emptyDir",
    model.HostPathVolume: "hostPath",
    model.ConfigMapVolume: "configMap",
    model.SecretVolume: "secret",
    model.PersistentVolumeClaimVolume: "persistentVolumeClaim",
    model.FlexVolume: "flexVolume",
}
_PROBE_TAGS: dict[type, str] = {
    model.TCPSocketAction: "tcpSocket",
    model.HTTPGetAction: "httpGet",
    model.ExecAction: "exec",
}
_FLEX_TAGS: dict[type, str] = {
    model.Qcow2FlexOptions: "qcow2",
    model.RawFlexOptions: "raw",
    model.CephFlexOptions: "ceph",
}


def _structure_quantity(value: Any, _: type) -> Quantity:
    return parse_quantity(value)


def _structure_uuid(value: Any, _: type) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise SpecError("", "not a UUID string", value=value, accepted="a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise SpecError("", "not a UUID", value=value, accepted="a UUID string") from None


def _structure_bytes(value: Any, _: type) -> bytes:
    if not isinstance(value, str):
        raise SpecError("", "not a base64 string", value=value, accepted="a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError("", "invalid base64", value=value, accepted="a base64 string") from None


def _structure_port(value: Any, _: type) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SpecError("", "not a port", value=value, accepted="a port number or name")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise SpecError("", "expected a string", value=value, accepted="a string")
    return value


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("", "expected an integer", value=value, accepted="an integer")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise SpecError("", "expected true or false", value=value, accepted="true or false")
    return value


def make_converter() -> cattrs.Converter:
    """A new converter configured for every model class (the module keeps one in :data:`CONVERTER`)."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)
    # StrEnum before str in the MRO: without this, enum members would pass through as themselves.
    converter.register_unstructure_hook(enum.StrEnum, lambda e: e.value)
    converter.register_unstructure_hook(Quantity, lambda q: q.text)
    converter.register_structure_hook(Quantity, _structure_quantity)
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, _structure_uuid)
    converter.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode())
    converter.register_structure_hook(bytes, _structure_bytes)
    converter.register_structure_hook(int | str, _structure_port)
    # Innermost unions first: configuring one generates (and caches) hooks for its members.
    for union, tags in ((model.FlexOptions, _FLEX_TAGS), (model.ProbeHandler, _PROBE_TAGS),
                        (model.Volume, _VOLUME_TAGS)):
        configure_tagged_union(union, converter, tag_generator=tags.__getitem__, tag_name="kind")
    return converter


#: The converter every part of vmpod uses.
CONVERTER = make_converter()


def unstructure(obj: Any) -> Any:
    """``obj`` (any model object) as plain dicts, lists, strings and numbers."""
    return CONVERTER.unstructure(obj)


def structure(data: Any, cls: type[T]) -> T:
    """Build a ``cls`` from plain data; :class:`SpecErrors` lists every problem with its path."""
    try:
        return CONVERTER.structure(data, cls)
    except SpecError:
        raise
    except cattrs.BaseValidationError as exc:
        raise _to_spec_errors(exc) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SpecError("", f"cannot build {cls.__name__}: {exc}", accepted=f"a valid {cls.__name__}") from None


def _to_spec_errors(exc: cattrs.BaseValidationError) -> SpecErrors:
    errors: list[SpecError] = []
    for message in cattrs.transform_error(exc, path="$", format_exception=_describe):
        text, _, where = message.rpartition(" @ ")
        path = where.removeprefix("$").lstrip(".")
        errors.append(SpecError(path, text or message))
    return SpecErrors(errors or [SpecError("", str(exc))])


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, SpecError):
        return exc.render()
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown keys {sorted(exc.extra_fields)}"
    if isinstance(exc, KeyError):
        return "required field missing"
    name = getattr(type_, "__name__", repr(type_))
    return f"invalid value for type {name}: {exc}"


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as JSON text (keys in field order)."""
    return json.dumps(unstructure(obj), indent=indent, ensure_ascii=False)


def from_json(text: str, cls: type[T]) -> T:
    """Parse JSON ``text`` into a ``cls``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SpecError("", f"invalid JSON: {exc}", accepted="JSON") from None
    return structure(data, cls)


def to_yaml(obj: Any) -> str:
    """``obj`` as YAML text (keys in field order)."""
    return yaml.safe_dump(unstructure(obj), sort_keys=False, allow_unicode=True, default_flow_style=False)


def from_yaml(text: str, cls: type[T]) -> T:
    """Parse YAML ``text`` into a ``cls``."""
    return structure(safe_load_limited(text), cls)
