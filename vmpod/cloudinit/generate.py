"""The cloud-init documents of a VM pod: one pure function, :func:`generate_seed`.

Input: a :class:`~vmpod.model.VMPod`, the guest's network
(:class:`~vmpod.cloudinit.network.NetworkDescription` or None) and the disk
map (:class:`~vmpod.cloudinit.disks.DiskMap`, default
:func:`~vmpod.cloudinit.disks.default_disk_map`).  Output:
:class:`SeedDocuments`, which render to the files of a NoCloud or ConfigDrive
seed.  No I/O happens here; every problem is a
:class:`~vmpod.errors.SpecError` naming the annotation, volume or field.

The rules (Virtlet's, with its bugs fixed; ``docs/cloud-init.md`` lists them):

* **meta-data**: ``instance-id`` = ``<name>.<namespace>``, ``local-hostname``
  = the pod's hostname (its name unless ``spec.hostname``), ``public-keys``
  from ``VirtletSSHKeySource`` then ``VirtletSSHKeys``; ConfigDrive adds
  ``uuid``, ``hostname`` and OpenStack's ``public_keys`` map; then the keys of
  ``VirtletCloudInitMetaData`` replace generated ones (shallow).
* **user-data**: the user-data script (``VirtletCloudInitUserDataScript``, or
  the value under ``VirtletCloudInitUserDataSourceKey``) with
  ``@virtlet-mount-script@`` replaced, when there is one; otherwise
  ``#cloud-config`` with the merged user-data (source, then annotation) plus,
  appended after the user's own entries: ``mounts`` for volumes,
  ``runcmd`` running the symlink and mount scripts (and linking them into
  ``per-boot``), and ``write_files`` for Secret and ConfigMap volumes,
  file-like mounts, the two scripts and ``/etc/cloud/environment``; and
  ``disk_setup``/``fs_setup`` entries that partition and format each blank
  ``qcow2`` flexvolume disk the way Virtlet's libguestfs did (MBR, one ext4
  partition), never touching a disk or partition that already holds data.
* **network config**: from the network description, unless the root disk is
  persistent or ``VirtletForceDHCPNetworkConfig`` is set.
"""

from __future__ import annotations

import base64
import datetime
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
import yaml

from vmpod import datasources
from vmpod.cloudinit.disks import DiskMap, GuestDisk, default_disk_map, is_directory_volume
from vmpod.cloudinit.iso import CONFIGDRIVE_LABEL, MAX_SEED_BYTES, NOCLOUD_LABEL
from vmpod.cloudinit.network import NetworkDescription, configdrive_network_data, nocloud_network_config
from vmpod.cloudinit.scripts import (
    MOUNT_SCRIPT_PATH,
    SYMLINK_SCRIPT_PATH,
    BlockMount,
    NinePMount,
    mount_script,
    symlink_script,
    volume_script,
)
from vmpod.errors import SpecError, VmpodError
from vmpod.model import (
    CloudInitImageType,
    ConfigMapVolume,
    DataKind,
    FlexVolume,
    HostPathVolume,
    PersistentVolumeClaimVolume,
    Qcow2FlexOptions,
    SecretVolume,
    VMPod,
)

__all__ = [
    "ENVIRONMENT_PATH",
    "MOUNT_SCRIPT_MARKER",
    "Adjust",
    "SeedDocuments",
    "generate_seed",
    "render_user_data",
]

#: Where the container's environment variables are written in the guest.
ENVIRONMENT_PATH = "/etc/cloud/environment"
#: Replaced, in a user-data script, with the symlink and mount scripts.
MOUNT_SCRIPT_MARKER = "@virtlet-mount-script@"

_ANN = "metadata.annotations."
_CONTAINER = "spec.containers[0]"
_CLOUD_CONFIG = "#cloud-config\n"
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PER_BOOT = "/var/lib/cloud/scripts/per-boot/"
# Lists the generated user-data appends to.
_LIST_KEYS = ("mounts", "runcmd", "write_files")
_NOCLOUD_FILES = ("meta-data", "user-data", "network-config")
_CONFIGDRIVE_FILES = ("openstack/latest/meta_data.json", "openstack/latest/user_data",
                      "openstack/latest/network_data.json")


@attrs.frozen
class SeedDocuments:
    """The documents of one cloud-init seed, in the layout of ``image_type``.

    :param image_type: NoCloud or ConfigDrive; decides the file names, the label and
        the formats of ``meta_data`` and ``network_config``.
    :param meta_data: NoCloud meta-data, or ConfigDrive ``meta_data.json`` (with ``uuid``,
        ``hostname`` and ``public_keys``).
    :param user_data: the user-data text: ``#cloud-config`` YAML or a script.
    :param network_config: cloud-init network config version 1 (NoCloud) or OpenStack
        ``network_data.json`` (ConfigDrive); None for no network configuration at all.
    """

    image_type: CloudInitImageType
    meta_data: Mapping[str, Any]
    user_data: str
    network_config: Mapping[str, Any] | None = None

    @property
    def volume_label(self) -> str:
        """The filesystem label cloud-init looks for: ``cidata`` or ``config-2``."""
        return CONFIGDRIVE_LABEL if self.image_type is CloudInitImageType.CONFIGDRIVE else NOCLOUD_LABEL

    @property
    def is_cloud_config(self) -> bool:
        """True when the user-data is a ``#cloud-config`` document (not a script)."""
        return self.user_data.startswith(_CLOUD_CONFIG)

    def files(self) -> dict[str, bytes]:
        """The seed's files: path in the image -> content.

        NoCloud: ``meta-data`` (compact JSON, keys sorted), ``user-data`` and
        ``network-config`` (YAML).  ConfigDrive: ``openstack/latest/meta_data.json``,
        ``openstack/latest/user_data`` and ``openstack/latest/network_data.json``.
        The network file is left out when :attr:`network_config` is None.

        :raises SpecError: when a document holds values JSON cannot represent.
        """
        names = _CONFIGDRIVE_FILES if self.image_type is CloudInitImageType.CONFIGDRIVE else _NOCLOUD_FILES
        result = {
            names[0]: _json(self.meta_data, _ANN + "VirtletCloudInitMetaData").encode(),
            names[1]: self.user_data.encode(),
        }
        if self.network_config is not None:
            if self.image_type is CloudInitImageType.CONFIGDRIVE:
                network = _json(self.network_config, "network")
            else:
                network = yaml.dump(dict(self.network_config), Dumper=_Dumper, sort_keys=False,
                                    default_flow_style=False, allow_unicode=True, width=_WIDTH)
            result[names[2]] = network.encode()
        return result

    def text(self) -> str:
        """Every file as text, each after a ``==> PATH <==`` line (what ``vmpod seed --print`` shows)."""
        parts = []
        for name, content in self.files().items():
            body = content.decode()
            parts.append(f"==> {name} <==\n{body}" + ("" if body.endswith("\n") else "\n"))
        return "\n".join(parts)


#: A plugin step run on the generated documents (``PluginManager.adjust_seed``).
Adjust = Callable[[VMPod, SeedDocuments], SeedDocuments]


def generate_seed(
    pod: VMPod,
    network: NetworkDescription | None = None,
    disks: DiskMap | None = None,
    *,
    image_type: CloudInitImageType | None = None,
    adjust: Adjust | None = None,
) -> SeedDocuments:
    """The cloud-init documents of ``pod``.

    :param pod: the VM pod.
    :param network: the guest's network, or None for no network configuration.
    :param disks: where the pod's disks and shares appear in the guest; default
        :func:`~vmpod.cloudinit.disks.default_disk_map`.
    :param image_type: NoCloud or ConfigDrive; default ``VirtletCloudInitImageType``.
    :param adjust: applied to the documents before they are checked and returned
        (the plugin manager's ``adjust_seed``).
    :raises SpecError: for bad cloud-init input (the path names the annotation or field),
        or a seed over :data:`~vmpod.cloudinit.iso.MAX_SEED_BYTES`.
    """
    _check_mappings(pod)
    kind = image_type or pod.vm.cloud_init_image_type
    disk_map = disks if disks is not None else default_disk_map(pod)
    plan = _plan_volumes(pod, disk_map)
    documents = SeedDocuments(
        image_type=kind,
        meta_data=_meta_data(pod, kind),
        user_data=_user_data(pod, plan),
        network_config=_network_config(pod, network, kind),
    )
    if adjust is not None:
        adjusted = adjust(pod, documents)
        if not isinstance(adjusted, SeedDocuments):
            raise VmpodError(f"a vmpod_adjust_seed plugin returned {type(adjusted).__name__}, "
                             "not SeedDocuments (or None)")
        documents = adjusted
    _check_size(pod, documents)
    return documents


# --------------------------------------------------------------------------- rendering


_WIDTH = 2**31 - 1  # never fold long lines (SSH keys, base64)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _FlowList(list[Any]):
    """A list written in flow style (``[dev, /mnt]``): cloud-init ``mounts`` entries."""


def _represent_flow_list(dumper: yaml.SafeDumper, value: _FlowList) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


def _make_dumper(base: type[yaml.SafeDumper]) -> type[yaml.SafeDumper]:
    """Safe YAML on ``base`` with multi-line strings as literal blocks and flow-style mount entries."""
    dumper = cast(type[yaml.SafeDumper], type("_Dumper", (base,), {}))
    dumper.add_representer(str, _represent_str)
    dumper.add_representer(_FlowList, _represent_flow_list)
    return dumper


# libyaml's emitter when PyYAML has it (60 times faster on megabytes of base64); both write the same text.
_Dumper = _make_dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper))


def _flow(entry: Any) -> Any:
    """``entry`` as a :class:`_FlowList` when it is a list of one-line scalars, else unchanged."""
    if isinstance(entry, list) and all(
            isinstance(item, str | int | float | bool) and "\n" not in str(item) for item in entry):
        return _FlowList(entry)
    return entry


def render_user_data(data: Mapping[str, Any]) -> str:
    """``#cloud-config`` followed by ``data`` as YAML, keys sorted.

    An empty map is written ``{}``: cloud-init's schema check refuses a
    ``#cloud-config`` with no document at all ("not a YAML dict").
    """
    return _render_user_data(data, _Dumper)


def _render_user_data(data: Mapping[str, Any], dumper: type[yaml.SafeDumper]) -> str:
    if not data:
        return _CLOUD_CONFIG + "{}\n"
    return _CLOUD_CONFIG + yaml.dump(dict(data), Dumper=dumper, sort_keys=True, default_flow_style=False,
                                     allow_unicode=True, width=_WIDTH)


def _json_default(value: object) -> object:
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"{type(value).__name__} values cannot be written as JSON")


def _json(data: Mapping[str, Any], path: str) -> str:
    try:
        return json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise SpecError(path, f"cannot be written as JSON: {exc}", accepted="strings, numbers, booleans, "
                        "null, lists and mappings with string keys") from None


# --------------------------------------------------------------------------- meta-data


def _check_mappings(pod: VMPod) -> None:
    """User-data and meta-data annotations must be mappings (a :class:`VMPod` built in code may hold anything)."""
    for key, value in (("VirtletCloudInitMetaData", pod.vm.cloud_init_meta_data),
                       ("VirtletCloudInitUserData", pod.vm.cloud_init_user_data)):
        if value is not None and not isinstance(value, Mapping):
            raise SpecError(_ANN + key, "must be a mapping", value=value, accepted="a YAML or JSON mapping")


def _meta_data(pod: VMPod, kind: CloudInitImageType) -> dict[str, Any]:
    meta: dict[str, Any] = {"instance-id": pod.instance_id, "local-hostname": pod.guest_hostname}
    keys = datasources.ssh_keys(pod)
    if keys:
        meta["public-keys"] = list(keys)
    override = pod.vm.cloud_init_meta_data
    if kind is CloudInitImageType.CONFIGDRIVE:
        # cloud-init's ConfigDrive reader requires uuid (its instance-id) and takes SSH keys
        # only from OpenStack's public_keys map, not from NoCloud's public-keys list.
        meta["uuid"] = meta["instance-id"]
        meta["hostname"] = meta["local-hostname"]
        merged = {**meta, **(override or {})}
        if "public_keys" not in (override or {}):
            public_keys = _public_keys_map(merged.get("public-keys"))
            if public_keys:
                merged["public_keys"] = public_keys
        _check_json(merged)
        return merged
    merged = {**meta, **(override or {})}
    _check_json(merged)
    return merged


def _public_keys_map(value: object) -> dict[str, str]:
    if isinstance(value, str):
        value = [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {f"key-{i}": str(key) for i, key in enumerate(value)}
    return {}


def _check_json(meta: Mapping[str, Any]) -> None:
    _json(meta, _ANN + "VirtletCloudInitMetaData")


# --------------------------------------------------------------------------- volumes


@attrs.frozen
class _Plan:
    """What the pod's volumes add to user-data."""

    mounts: tuple[list[str], ...] = ()
    write_files: tuple[dict[str, Any], ...] = ()
    symlinks: tuple[tuple[GuestDisk, str], ...] = ()
    mount_lines: tuple[BlockMount | NinePMount, ...] = ()
    disk_setup: tuple[tuple[str, dict[str, Any]], ...] = ()
    fs_setup: tuple[dict[str, Any], ...] = ()

    @property
    def symlink_script(self) -> str | None:
        return symlink_script(self.symlinks)

    @property
    def mount_script(self) -> str | None:
        return mount_script(self.mount_lines)

    @property
    def volume_script(self) -> str | None:
        return volume_script(self.symlinks, self.mount_lines)


def _volume_index(pod: VMPod, name: str) -> int:
    return next(i for i, v in enumerate(pod.volumes) if v.name == name)


def _write_file(path: str, content: bytes, mode: int) -> dict[str, Any]:
    return {"path": path, "content": base64.b64encode(content).decode(), "encoding": "b64",
            "permissions": f"0{mode:03o}"}


def _data_files(pod: VMPod, volume: ConfigMapVolume | SecretVolume) -> dict[str, tuple[bytes, int]]:
    """Relative path -> (content, mode) of a ConfigMap or Secret volume, honouring items and optional."""
    where = f"spec.volumes[{_volume_index(pod, volume.name)}]"
    if isinstance(volume, ConfigMapVolume):
        kind, name, where = DataKind.CONFIGMAP, volume.config_map_name, where + ".configMap"
    else:
        kind, name, where = DataKind.SECRET, volume.secret_name, where + ".secret"
    obj = pod.data_object(kind, name)
    if obj is None:
        if volume.optional:
            return {}
        raise SpecError(where, f"{kind.value} {name!r} not found in namespace {pod.namespace!r}", value=name,
                        accepted=f"a {kind.value} defined in the same input (or optional: true)")
    files: dict[str, tuple[bytes, int]] = {}
    if volume.items:
        for item in volume.items:
            content = obj.get_bytes(item.key)
            if content is None:
                if volume.optional:
                    continue
                raise SpecError(where + ".items", f"{kind.value} {name!r} has no key {item.key!r}",
                                value=item.key, accepted=", ".join(obj.key_names()) or "(no keys)")
            files[posixpath.normpath(item.path)] = (content, item.mode if item.mode is not None
                                                    else volume.default_mode)
    else:
        for key in obj.key_names():
            files[key] = (obj.get_bytes(key) or b"", volume.default_mode)
    return files


def _plan_volumes(pod: VMPod, disks: DiskMap) -> _Plan:
    mounts: list[list[str]] = []
    secrets: list[dict[str, Any]] = []
    config_maps: list[dict[str, Any]] = []
    file_like: list[dict[str, Any]] = []
    mount_lines: list[BlockMount | NinePMount] = []
    for index, mount in enumerate(pod.container.volume_mounts):
        where = f"{_CONTAINER}.volumeMounts[{index}]"
        volume = pod.volume(mount.name)
        if volume is None:
            raise SpecError(where + ".name", "no pod volume with this name", value=mount.name,
                            accepted=", ".join(v.name for v in pod.volumes) or "(the pod has no volumes)")
        if isinstance(volume, ConfigMapVolume | SecretVolume):
            files = _data_files(pod, volume)
            if mount.sub_path:
                sub = posixpath.normpath(mount.sub_path)
                chosen = {rel: data for rel, data in files.items() if rel == sub or rel.startswith(sub + "/")}
                if not chosen and not volume.optional:
                    raise SpecError(where + ".subPath", f"volume {volume.name!r} has no file or directory "
                                    "at this subPath", value=mount.sub_path,
                                    accepted=", ".join(sorted(files)) or "(the volume is empty)")
                for rel, (content, mode) in sorted(chosen.items()):
                    target = mount.mount_path if rel == sub else posixpath.join(mount.mount_path,
                                                                                 rel[len(sub) + 1:])
                    file_like.append(_write_file(target, content, mode))
                continue
            target_list = secrets if isinstance(volume, SecretVolume) else config_maps
            for rel, (content, mode) in sorted(files.items()):
                target_list.append(_write_file(posixpath.join(mount.mount_path, rel), content, mode))
        elif isinstance(volume, FlexVolume):
            if mount.sub_path:
                raise SpecError(where + ".subPath", "a flexvolume disk is mounted whole", value=mount.sub_path,
                                accepted="no subPath")
            disk = _disk(disks, volume.name, where)
            part = 1 if volume.options.part is None else volume.options.part
            entry = [disk.partition_path(part), mount.mount_path]
            if mount.read_only:
                entry += ["auto", "defaults,nofail,ro"]
            mounts.append(entry)
            mount_lines.append(BlockMount(disk=disk, partition=part, path=mount.mount_path,
                                          read_only=mount.read_only))
        elif is_directory_volume(volume):
            share = disks.filesystem(index)
            if share is None:
                raise SpecError(where, f"no 9p share for volume {volume.name!r} in the disk map", value=mount.name)
            options = "trans=virtio,ro" if mount.read_only else "trans=virtio"
            mounts.append([share.tag, mount.mount_path, "9p", options])
            mount_lines.append(NinePMount(tag=share.tag, path=mount.mount_path, read_only=mount.read_only))
        elif isinstance(volume, PersistentVolumeClaimVolume):
            raise SpecError(where + ".name", f"claim {volume.claim_name!r} is a block volume",
                            value=mount.name, accepted="block volumes in volumeDevices, not volumeMounts")
        elif isinstance(volume, HostPathVolume):
            raise SpecError(where + ".name", f"hostPath of type {volume.type} cannot be shared with a VM",
                            value=mount.name, accepted="hostPath directories (type Directory, "
                            "DirectoryOrCreate or empty)")
    symlinks: list[tuple[GuestDisk, str]] = []
    for index, device in enumerate(pod.container.volume_devices):
        if device.device_path == "/":
            continue
        symlinks.append((_disk(disks, device.name, f"{_CONTAINER}.volumeDevices[{index}]"), device.device_path))
    disk_setup, fs_setup = _format_blank_disks(pod, disks)
    return _Plan(mounts=tuple(mounts), write_files=tuple(secrets + config_maps + file_like),
                 symlinks=tuple(symlinks), mount_lines=tuple(mount_lines), disk_setup=disk_setup,
                 fs_setup=fs_setup)


def _format_blank_disks(pod: VMPod,
                        disks: DiskMap) -> tuple[tuple[tuple[str, dict[str, Any]], ...], tuple[dict[str, Any], ...]]:
    """cloud-init ``disk_setup`` and ``fs_setup`` entries preparing each ``qcow2`` flexvolume disk.

    The disk is created blank; Virtlet formatted it with libguestfs (an MBR, one
    partition, ext4), which is why a mount defaults to partition 1.  The guest
    does the same on first boot, by the disk's stable path, following the
    volume's ``part`` option: none or ``"1"`` → an MBR with one partition
    spanning the disk, ext4 on it; ``"0"`` → ext4 on the whole disk; ``"N"``
    (N > 1) → nothing (such a partition can only be the user's own doing).

    Both are safe on a disk that holds data: ``disk_setup`` with
    ``overwrite: false`` leaves a disk that has a partition table or a
    filesystem alone, and ``fs_setup`` with ``partition: any`` reuses the
    first ext4 filesystem of the disk, formats only the first partition
    without a filesystem (the whole disk when it has no partition and no
    filesystem) and skips a disk whose partitions all hold something else.
    ``layout: [100]`` rather than ``true``: for ``true`` cloud-init 22.4 feeds
    sfdisk ``0,`` (start at sector 0), which util-linux 2.38 refuses.
    (A numbered ``partition`` would reformat a partition holding another
    filesystem or label, and ``none`` formats the whole disk unconditionally.)
    """
    disk_setup: list[tuple[str, dict[str, Any]]] = []
    fs_setup: list[dict[str, Any]] = []
    for volume in sorted(pod.volumes, key=lambda v: v.name):
        if not isinstance(volume, FlexVolume) or not isinstance(volume.options, Qcow2FlexOptions):
            continue
        part = 1 if volume.options.part is None else volume.options.part
        if part > 1:
            continue
        disk = _disk(disks, volume.name, f"spec.volumes[{_volume_index(pod, volume.name)}]")
        if part == 1:
            disk_setup.append((disk.path, {"table_type": "mbr", "layout": [100], "overwrite": False}))
        fs_setup.append({"device": disk.path, "filesystem": "ext4", "partition": "any", "overwrite": False})
    return tuple(disk_setup), tuple(fs_setup)


def _disk(disks: DiskMap, volume: str, where: str) -> GuestDisk:
    disk = disks.disk(volume)
    if disk is None:
        raise SpecError(where + ".name", f"no guest disk for volume {volume!r} in the disk map", value=volume)
    return disk


# --------------------------------------------------------------------------- user-data


def _environment(pod: VMPod) -> str:
    """``NAME='value'`` lines: values single-quoted (``'`` written as ``'\\''``), so that ``.`` in sh reads them."""
    lines = []
    for index, env in enumerate(pod.container.env):
        where = f"{_CONTAINER}.env[{index}]"
        if not _SHELL_NAME.fullmatch(env.name):
            raise SpecError(where + ".name", "not a shell variable name, so /etc/cloud/environment could not "
                            "be sourced", value=env.name, accepted="letters, digits and '_', not starting "
                            "with a digit")
        if "\0" in env.value:
            raise SpecError(where + ".value", "a NUL character cannot be written to /etc/cloud/environment",
                            value=env.value)
        lines.append(f"{env.name}='" + env.value.replace("'", "'\\''") + "'\n")
    return "".join(lines)


def _origin(pod: VMPod, key: str) -> str:
    """The annotation a top-level user-data key came from."""
    if pod.vm.cloud_init_user_data is not None and key in pod.vm.cloud_init_user_data:
        return _ANN + "VirtletCloudInitUserData"
    return _ANN + "VirtletCloudInitUserDataSource"


def _normalize_users(users: list[Any]) -> list[Any]:
    """Write ``users`` entries the way cloud-init itself reads them, so that its schema accepts them.

    cloud-init replaces ``-`` with ``_`` in user keys (``ssh-authorized-keys``,
    ``primary-group``) and takes a single string of SSH keys as a one-key list,
    but its schema (22.4) rejects both spellings.  Nothing else changes.
    """
    result: list[Any] = []
    for user in users:
        if not isinstance(user, dict):
            result.append(user)
            continue
        normalized: dict[Any, Any] = {}
        for key, value in user.items():
            name = key.replace("-", "_").strip() if isinstance(key, str) else key
            if name != "":
                normalized[name] = value
        keys = normalized.get("ssh_authorized_keys")
        if isinstance(keys, str):
            normalized["ssh_authorized_keys"] = [keys]
        elif isinstance(keys, dict):
            normalized["ssh_authorized_keys"] = list(keys.values())
        result.append(normalized)
    return result


def _user_data(pod: VMPod, plan: _Plan) -> str:
    script = datasources.user_data_script(pod)
    if script is not None:
        return script.replace(MOUNT_SCRIPT_MARKER, plan.volume_script or "")
    data = datasources.merged_user_data(pod)
    for key in _LIST_KEYS:
        if data.get(key) is not None and not isinstance(data[key], list):
            raise SpecError(_origin(pod, key), f"user-data {key!r} must be a list", value=data[key],
                            accepted="a YAML list")
    if isinstance(data.get("users"), list):
        data["users"] = _normalize_users(data["users"])
    # Block devices are reached by their stable path: a user mount of /dev/<devicePath> would run
    # before the symlink exists.
    stable = {device_path: disk.path for disk, device_path in plan.symlinks}
    user_mounts = [[stable.get(entry[0], entry[0]), *entry[1:]]
                   if isinstance(entry, list) and entry and isinstance(entry[0], str) else entry
                   for entry in data.get("mounts") or []]
    if user_mounts or plan.mounts:
        data["mounts"] = [_flow(entry) for entry in user_mounts + [list(entry) for entry in plan.mounts]]
    runcmd: list[Any] = []
    write_files = [dict(entry) for entry in plan.write_files]
    for path, content in ((SYMLINK_SCRIPT_PATH, plan.symlink_script), (MOUNT_SCRIPT_PATH, plan.mount_script)):
        if content is not None:
            write_files.append({"path": path, "content": content, "permissions": "0755"})
            runcmd += [path, f"ln -sf {path} {_PER_BOOT}"]
    environment = _environment(pod)
    if environment:
        write_files.append({"path": ENVIRONMENT_PATH, "content": environment, "permissions": "0644"})
    if runcmd:
        data["runcmd"] = list(data.get("runcmd") or []) + runcmd
    if write_files:
        data["write_files"] = list(data.get("write_files") or []) + write_files
    _add_disk_formatting(pod, data, plan)
    return render_user_data(data)


def _add_disk_formatting(pod: VMPod, data: dict[str, Any], plan: _Plan) -> None:
    """Add the plan's ``disk_setup`` and ``fs_setup`` entries for devices the user's own entries do not name."""
    if not plan.disk_setup and not plan.fs_setup:
        return  # the user's keys, whatever they hold, are passed through untouched
    user_disks = data.get("disk_setup")
    if user_disks is not None and not isinstance(user_disks, dict):
        raise SpecError(_origin(pod, "disk_setup"), "user-data 'disk_setup' must be a map", value=user_disks,
                        accepted="a YAML map of device to partitioning")
    user_fs = data.get("fs_setup")
    if user_fs is not None and not isinstance(user_fs, list):
        raise SpecError(_origin(pod, "fs_setup"), "user-data 'fs_setup' must be a list", value=user_fs,
                        accepted="a YAML list")
    disk_setup = {path: entry for path, entry in plan.disk_setup if path not in (user_disks or {})}
    named = {entry.get("device") for entry in user_fs or [] if isinstance(entry, dict)}
    fs_setup = [dict(entry) for entry in plan.fs_setup if entry["device"] not in named]
    if disk_setup:
        data["disk_setup"] = {**(user_disks or {}), **disk_setup}
    if fs_setup:
        data["fs_setup"] = list(user_fs or []) + fs_setup


# --------------------------------------------------------------------------- network


def _network_config(pod: VMPod, network: NetworkDescription | None,
                    kind: CloudInitImageType) -> dict[str, Any] | None:
    if network is None or not network.interfaces or pod.vm.force_dhcp_network_config:
        return None
    if any(device.device_path == "/" for device in pod.container.volume_devices):
        return None  # a persistent root disk keeps the network configuration it already has
    if kind is CloudInitImageType.CONFIGDRIVE:
        return configdrive_network_data(network)
    return nocloud_network_config(network)


# --------------------------------------------------------------------------- size


def _contributions(pod: VMPod) -> list[tuple[int, str]]:
    """(bytes, path) of every input that ends up in the seed."""
    result: list[tuple[int, str]] = []
    for key in ("VirtletCloudInitUserData", "VirtletCloudInitUserDataScript", "VirtletCloudInitMetaData",
                "VirtletSSHKeys"):
        result.append((len(pod.annotations.get(key, "").encode()), _ANN + key))
    for key, ref in (("VirtletCloudInitUserDataSource", pod.vm.cloud_init_user_data_source),
                     ("VirtletSSHKeySource", pod.vm.ssh_key_source)):
        obj = pod.data_object(ref.kind, ref.name) if ref is not None else None
        if obj is not None:
            result.append((sum(len(obj.get_bytes(k) or b"") for k in obj.key_names()), _ANN + key))
    for index, volume in enumerate(pod.volumes):
        if isinstance(volume, ConfigMapVolume | SecretVolume):
            kind, name = ((DataKind.CONFIGMAP, volume.config_map_name) if isinstance(volume, ConfigMapVolume)
                          else (DataKind.SECRET, volume.secret_name))
            obj = pod.data_object(kind, name)
            if obj is not None:
                size = sum(len(obj.get_bytes(k) or b"") for k in obj.key_names())
                result.append((size * 4 // 3, f"spec.volumes[{index}]"))
    result.append((sum(len(e.name) + len(e.value.encode()) for e in pod.container.env), _CONTAINER + ".env"))
    return result


def _check_size(pod: VMPod, documents: SeedDocuments) -> None:
    total = sum(len(content) for content in documents.files().values())
    if total <= MAX_SEED_BYTES:
        return
    size, path = max(_contributions(pod))
    if size == 0:  # nothing from the pod: a plugin made the seed this big
        size, path = total, "seed"
    raise SpecError(path, f"the cloud-init seed would be {total} bytes, over the "
                    f"{MAX_SEED_BYTES // 2**20} MiB limit; {size} bytes of it come from here",
                    accepted=f"at most {MAX_SEED_BYTES} bytes of seed files in total")
