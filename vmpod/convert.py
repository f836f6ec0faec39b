"""The one cattrs converter: model objects to plain data (JSON/YAML) and back.

The unstructured form uses the attrs field names.  Unions are tagged with a
``kind`` key, written first (volumes: ``emptyDir``, ``hostPath``...; probe
handlers: ``tcpSocket``, ``httpGet``, ``exec``; flexvolume options:
``qcow2``, ``raw``, ``ceph``).  Quantities are strings as written
(``"4Gi"``), UUIDs are strings, bytes are base64 strings.

Structuring is strict: unknown keys are errors, a string is not a list, a
number is not a string, an enum value must be one of its members, and the
free-form maps (cloud-init user-data and meta-data) must hold JSON data.
Structuring bad data raises :class:`~vmpod.errors.SpecError` (a
:class:`~vmpod.errors.SpecErrors` for several problems) whose paths are the
data's own (``container.resources.limits.memory``, ``volumes[0].path``),
never another exception.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.cols import is_mapping
from cattrs.gen import make_dict_structure_fn

from vmpod import model
from vmpod.errors import SpecError, SpecErrors, join_path
from vmpod.quantity import Quantity, parse_quantity
from vmpod.yamlutil import check_json_data, dump_yaml, safe_load_limited

__all__ = ["CONVERTER", "UNION_TAGS", "from_json", "from_yaml", "make_converter", "structure", "to_json",
           "to_yaml", "unstructure"]

T = TypeVar("T")

TAG_KEY = "kind"

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

#: Every tagged union of the model: (union type, {member class: tag}).
UNION_TAGS: tuple[tuple[Any, Mapping[type, str]], ...] = (
    (model.FlexOptions, _FLEX_TAGS),
    (model.ProbeHandler, _PROBE_TAGS),
    (model.Volume, _VOLUME_TAGS),
)


# --------------------------------------------------------------------------- scalar hooks


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


def _structure_enum(value: Any, cls: type[enum.StrEnum]) -> enum.StrEnum:
    accepted = " or ".join(f'"{member.value}"' for member in cls)
    if not isinstance(value, str):
        raise SpecError("", "expected a string", value=value, accepted=accepted)
    try:
        return cls(value)
    except ValueError:
        raise SpecError("", f"not a valid {cls.__name__}", value=value, accepted=accepted) from None


def _structure_json_map(value: Any, _: type) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError("", "expected a mapping", value=value, accepted="a mapping of JSON data")
    data = dict(value)
    check_json_data(data)
    return data


# --------------------------------------------------------------------------- container hooks


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = typing.get_args(type_)
    return typing.get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook_factory(type_: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    item_type = typing.get_args(type_)[0]
    item_hook = converter.get_structure_hook(item_type)

    def structure_tuple(value: Any, _: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise SpecError("", "expected a list", value=value, accepted="a list")
        errors: list[SpecError] = []
        items = []
        for index, item in enumerate(value):
            try:
                items.append(item_hook(item, item_type))
            except Exception as exc:
                errors.extend(_spec_errors(exc, f"[{index}]"))
        if errors:
            raise SpecErrors(errors)
        return tuple(items)

    return structure_tuple


def _mapping_hook_factory(type_: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    key_type, value_type = typing.get_args(type_) or (Any, Any)
    if value_type is Any:
        return _structure_json_map
    key_hook = converter.get_structure_hook(key_type)
    value_hook = converter.get_structure_hook(value_type)

    def structure_mapping(value: Any, _: Any) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            raise SpecError("", "expected a mapping", value=value, accepted="a mapping")
        errors: list[SpecError] = []
        result = {}
        for key, item in value.items():
            where = f"[{key!r}]"
            try:
                result[key_hook(key, key_type)] = value_hook(item, value_type)
            except Exception as exc:
                errors.extend(_spec_errors(exc, where))
        if errors:
            raise SpecErrors(errors)
        return result

    return structure_mapping


def _attrs_hook_factory(cls: type, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    inner = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)  # type: ignore[var-annotated]
    fields = ", ".join(a.name for a in attrs.fields(cls))

    def structure_attrs(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise SpecError("", f"expected a mapping for {cls.__name__}", value=value,
                            accepted=f"a mapping with the fields {fields}")
        return inner(value, cls)

    return structure_attrs


def _configure_union(converter: cattrs.Converter, union: Any, tags: Mapping[type, str]) -> None:
    by_tag = {tag: cls for cls, tag in tags.items()}
    accepted = ", ".join(f'"{tag}"' for tag in by_tag)
    structure_hooks = {tag: converter.get_structure_hook(cls) for tag, cls in by_tag.items()}
    unstructure_hooks = {cls: converter.get_unstructure_hook(cls) for cls in tags}

    def structure_union(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise SpecError("", "expected a mapping", value=value, accepted=f'a mapping with "{TAG_KEY}": {accepted}')
        if TAG_KEY not in value:
            raise SpecError(TAG_KEY, "required field is missing", accepted=accepted)
        tag = value[TAG_KEY]
        if not isinstance(tag, str) or tag not in by_tag:
            raise SpecError(TAG_KEY, "unknown kind", value=tag, accepted=accepted)
        rest = {k: v for k, v in value.items() if k != TAG_KEY}
        return structure_hooks[tag](rest, by_tag[tag])

    def unstructure_union(value: Any) -> dict[str, Any]:
        return {TAG_KEY: tags[type(value)], **unstructure_hooks[type(value)](value)}

    converter.register_structure_hook(union, structure_union)
    converter.register_unstructure_hook(union, unstructure_union)


def make_converter() -> cattrs.Converter:
    """A new converter configured for every model class (the module keeps one in :data:`CONVERTER`)."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)
    # StrEnum is a str: without its own hooks, _strict_str would accept any string as a member.
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_unstructure_hook(enum.StrEnum, lambda e: e.value)
    converter.register_unstructure_hook(Quantity, lambda q: q.text)
    converter.register_structure_hook(Quantity, _structure_quantity)
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, _structure_uuid)
    converter.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode())
    converter.register_structure_hook(bytes, _structure_bytes)
    converter.register_structure_hook(int | str, _structure_port)
    converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook_factory)
    converter.register_structure_hook_factory(is_mapping, _mapping_hook_factory)
    converter.register_structure_hook_factory(attrs.has, _attrs_hook_factory)
    # Innermost unions first: a union member's hook is looked up when its union is configured.
    for union, tags in UNION_TAGS:
        _configure_union(converter, union, tags)
    return converter


#: The converter every part of vmpod uses.
CONVERTER = make_converter()


def unstructure(obj: Any, as_type: Any = None) -> Any:
    """``obj`` (any model object) as plain dicts, lists, strings and numbers.

    ``as_type`` unstructures it as that type instead of its own class: a union
    such as :data:`vmpod.model.Volume` adds the ``kind`` tag.
    """
    return CONVERTER.unstructure(obj, unstructure_as=as_type)


def structure(data: Any, cls: type[T]) -> T:
    """Build a ``cls`` from plain data; :class:`SpecError` (or :class:`SpecErrors`) lists every problem."""
    try:
        return CONVERTER.structure(data, cls)
    except RecursionError:
        raise SpecError("", "data nested too deeply", accepted=f"a valid {cls.__name__}") from None
    except Exception as exc:
        errors = _spec_errors(exc, "")
        raise (errors[0] if len(errors) == 1 else SpecErrors(errors)) from None


def _spec_errors(exc: BaseException, path: str) -> list[SpecError]:
    """Flatten a (possibly nested) structuring failure into SpecErrors located at ``path``."""
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, without = exc.group_exceptions()
        errors = [e for sub, note in with_notes for e in _spec_errors(sub, join_path(path, note.name))]
        return errors + [e for sub in without for e in _spec_errors(sub, path)]
    if isinstance(exc, cattrs.IterableValidationError):
        iter_notes, iter_without = exc.group_exceptions()
        errors = [e for sub, inote in iter_notes for e in _spec_errors(sub, f"{path}[{inote.index!r}]")]
        return errors + [e for sub in iter_without for e in _spec_errors(sub, path)]
    if isinstance(exc, SpecErrors):
        return [e.located(path) for e in exc.errors]
    if isinstance(exc, SpecError):
        return [exc.located(path)]
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        fields = ", ".join(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else "its fields"
        return [SpecError(path, "unknown keys", value=sorted(map(str, exc.extra_fields)),
                          accepted=f"the fields of {exc.cl.__name__}: {fields}")]
    if isinstance(exc, KeyError):
        return [SpecError(path, "required field is missing")]
    return [SpecError(path, f"invalid value: {exc}")]


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as JSON text (keys in field order)."""
    return json.dumps(unstructure(obj), indent=indent, ensure_ascii=False)


def from_json(text: str, cls: type[T]) -> T:
    """Parse JSON ``text`` into a ``cls``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpecError("", f"invalid JSON: {exc}", accepted="JSON") from None
    return structure(data, cls)


def to_yaml(obj: Any) -> str:
    """``obj`` as YAML text (keys in field order)."""
    return dump_yaml(unstructure(obj))


def from_yaml(text: str, cls: type[T]) -> T:
    """Parse YAML ``text`` into a ``cls``."""
    return structure(safe_load_limited(text), cls)
