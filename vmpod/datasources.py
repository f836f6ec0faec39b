"""Resolving what a VM pod takes from ConfigMaps, Secrets and annotations.

Pure functions over a :class:`~vmpod.model.VMPod`: the merged user-data
map, the user-data script, the SSH keys and the files to inject into the
root filesystem.  The manifest loader calls them once to validate a pod (so
a bad reference is reported when the manifest is read), and the cloud-init
generator calls them to build the seed.  Every error is a
:class:`~vmpod.errors.SpecError` whose path names the annotation.

Where Virtlet silently lost data, vmpod reports it or keeps it:

* a source value that is not valid YAML is an error (Virtlet dropped it);
* the value used as the user-data script through
  ``VirtletCloudInitUserDataSourceKey`` is taken verbatim from the source
  object, not from its YAML parse, so a ``#!/bin/sh`` script keeps its first
  line and its newlines (Virtlet folded it into one line);
* lists of different element types are concatenated, not replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs

from vmpod.annotations import decode_base64
from vmpod.errors import SpecError
from vmpod.model import DataObject, DataSourceRef, SourceEncoding, VMPod
from vmpod.yamlutil import safe_load_limited

__all__ = [
    "InjectedFile",
    "deep_merge",
    "injected_files",
    "merged_user_data",
    "ssh_keys",
    "user_data_script",
]

_ANN = "metadata.annotations."


def deep_merge(base: Any, override: Any) -> Any:
    """Merge ``override`` into ``base`` (neither is modified) with Virtlet's rules.

    Mappings merge key by key, recursively; lists are concatenated
    (``base + override``); anything else, including a type mismatch, takes
    ``override``.
    """
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = {key: copy.deepcopy(value) for key, value in base.items()}
        for key, value in override.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return copy.deepcopy(base) + copy.deepcopy(override)
    return copy.deepcopy(override)


def _referenced(pod: VMPod, ref: DataSourceRef, annotation: str) -> DataObject:
    obj = pod.data_object(ref.kind, ref.name)
    if obj is None:
        raise SpecError(_ANN + annotation, f"{ref.kind.value} {ref.name!r} not found in namespace "
                        f"{pod.namespace!r}", value=str(ref),
                        accepted=f"a {ref.kind.value} defined in the same input")
    return obj


def _source_text(obj: DataObject, key: str, annotation: str) -> str:
    raw = obj.get_bytes(key)
    if raw is None:
        raise SpecError(_ANN + annotation, f"{obj.kind.value} {obj.name!r} has no key {key!r}",
                        value=key, accepted=", ".join(obj.key_names()) or "(the object has no keys)")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SpecError(_ANN + annotation, f"value of {obj.kind.value} {obj.name!r} key {key!r} "
                        "is not UTF-8 text", accepted="UTF-8 text") from None


def _source_user_data(pod: VMPod) -> dict[str, Any]:
    ref = pod.vm.cloud_init_user_data_source
    if ref is None:
        return {}
    annotation = "VirtletCloudInitUserDataSource"
    obj = _referenced(pod, ref, annotation)
    result: dict[str, Any] = {}
    for key in obj.key_names():
        text = _source_text(obj, key, annotation)
        if key == pod.vm.cloud_init_user_data_source_key:
            # The script key is used verbatim (see the module docstring).
            result[key] = text
            continue
        try:
            result[key] = safe_load_limited(text)
        except SpecError as exc:
            raise SpecError(_ANN + annotation, f"{obj.kind.value} {obj.name!r} key {key!r}: "
                            f"{exc.message}", accepted="YAML values (top-level user-data keys)") from None
    return result


def merged_user_data(pod: VMPod) -> dict[str, Any]:
    """User-data from ``VirtletCloudInitUserDataSource`` with ``VirtletCloudInitUserData`` merged on top.

    With ``VirtletCloudInitUserDataOverwrite: "true"`` the annotation's map
    replaces the source's instead of being merged into it.
    """
    source = _source_user_data(pod)
    annotation = dict(pod.vm.cloud_init_user_data or {})
    if pod.vm.cloud_init_user_data_overwrite and pod.vm.cloud_init_user_data is not None:
        return copy.deepcopy(annotation)
    merged: dict[str, Any] = deep_merge(source, annotation)
    return merged


def user_data_script(pod: VMPod) -> str | None:
    """The raw user-data script, or None when user-data is generated as ``#cloud-config``.

    ``VirtletCloudInitUserDataScript`` wins; otherwise the value under
    ``VirtletCloudInitUserDataSourceKey`` of the merged user-data, decoded
    per ``VirtletCloudInitUserDataSourceEncoding``.
    """
    if pod.vm.cloud_init_user_data_script is not None:
        return pod.vm.cloud_init_user_data_script
    key = pod.vm.cloud_init_user_data_source_key
    if key is None:
        return None
    where = _ANN + "VirtletCloudInitUserDataSourceKey"
    merged = merged_user_data(pod)
    if key not in merged:
        raise SpecError(where, "user-data script source not found under the key", value=key,
                        accepted=", ".join(sorted(merged)) or "a key of the user-data (which is empty)")
    value = merged[key]
    if not isinstance(value, str):
        raise SpecError(where, f"the value under key {key!r} is not a string", value=value,
                        accepted="a string holding the script")
    if pod.vm.cloud_init_user_data_source_encoding is SourceEncoding.BASE64:
        raw = decode_base64(value, _ANN + "VirtletCloudInitUserDataSourceEncoding",
                            "VirtletCloudInitUserDataSourceEncoding")
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise SpecError(_ANN + "VirtletCloudInitUserDataSourceEncoding",
                            "decoded script is not UTF-8 text", accepted="base64 of UTF-8 text") from None
    return value


def ssh_keys(pod: VMPod) -> tuple[str, ...]:
    """Keys from ``VirtletSSHKeySource`` followed by ``VirtletSSHKeys``.

    With ``VirtletCloudInitUserDataOverwrite: "true"`` and keys in the
    annotation, the annotation's keys replace the source's.
    """
    from_source: tuple[str, ...] = ()
    ref = pod.vm.ssh_key_source
    if ref is not None:
        obj = _referenced(pod, ref, "VirtletSSHKeySource")
        text = _source_text(obj, ref.key or "authorized_keys", "VirtletSSHKeySource")
        from_source = tuple(line.strip() for line in text.splitlines() if line.strip())
    if pod.vm.cloud_init_user_data_overwrite and pod.vm.ssh_keys:
        return pod.vm.ssh_keys
    return from_source + pod.vm.ssh_keys


@attrs.frozen
class InjectedFile:
    """A file written into the root filesystem before the first boot."""

    path: str
    content: bytes


def injected_files(pod: VMPod) -> tuple[InjectedFile, ...]:
    """Files from ``VirtletFilesFromDataSource``, sorted by path.

    Each entry ``E`` of the object is the content; ``E_path`` (required) is
    the absolute destination; ``E_encoding`` is ``base64`` (the default) or
    ``plain``.
    """
    ref = pod.vm.files_from_data_source
    if ref is None:
        return ()
    annotation = "VirtletFilesFromDataSource"
    where = _ANN + annotation
    obj = _referenced(pod, ref, annotation)
    keys = set(obj.key_names())
    entries = sorted(k for k in keys if not k.endswith(("_path", "_encoding")))
    files: list[InjectedFile] = []
    for entry in entries:
        if f"{entry}_path" not in keys:
            raise SpecError(where, f"missing path for {entry!r} entry", value=entry,
                            accepted=f"a key {entry}_path holding the destination path")
        path = _source_text(obj, f"{entry}_path", annotation).strip()
        if not path.startswith("/"):
            raise SpecError(where, f"path for {entry!r} entry must be absolute", value=path,
                            accepted="an absolute path")
        encoding = "base64"
        if f"{entry}_encoding" in keys:
            encoding = _source_text(obj, f"{entry}_encoding", annotation).strip()
        raw = obj.get_bytes(entry) or b""
        if encoding == "base64":
            content = decode_base64(raw.decode(errors="replace"), where, annotation)
        elif encoding == "plain":
            content = raw
        else:
            raise SpecError(where, f"unsupported encoding for {entry!r} entry", value=encoding,
                            accepted='"base64" (the default) or "plain"')
        files.append(InjectedFile(path, content))
    return tuple(sorted(files, key=lambda f: f.path))
