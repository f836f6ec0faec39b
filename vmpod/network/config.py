"""CNI network configurations: the first usable file of the configuration directory, as the kubelet picks it.

Files ending in ``.conf``, ``.conflist`` or ``.json`` are read in name order;
a ``.conflist`` is a network configuration list (``name``, ``cniVersion``,
``plugins``), the others a single plugin's configuration, which becomes a list
of one.  The first file that is a valid configuration wins; files that are not
are skipped (with a warning), and when none is usable the error names each
file and what is wrong with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vmpod.network.errors import NetworkError

__all__ = ["CONFIG_EXTENSIONS", "NetworkConfig", "load_network_config", "parse_network_config"]

log = logging.getLogger(__name__)

#: File name endings the kubelet (libcni) reads from the configuration directory.
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_MAX_FILE = 1 << 20


@attrs.frozen
class NetworkConfig:
    """A network configuration list: ``plugins`` run in order on ADD, in reverse on DEL.

    :param plugins: each plugin's own configuration object (``type`` and its settings), as in the file.
    :param source: the file it was read from.
    """

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    source: str = ""

    def plugin_config(self, index: int, prev_result: Mapping[str, Any] | None) -> bytes:
        """What plugin ``index`` reads on stdin: its settings plus ``name``, ``cniVersion`` and ``prevResult``."""
        config = dict(self.plugins[index])
        config["name"] = self.name
        config["cniVersion"] = self.cni_version
        if prev_result is not None:
            config["prevResult"] = prev_result
        else:
            config.pop("prevResult", None)
        return json.dumps(config).encode()

    def to_json(self) -> str:
        """The configuration list as JSON (what the store records at ADD, so DEL uses the same)."""
        return json.dumps({"cniVersion": self.cni_version, "name": self.name, "plugins": list(self.plugins),
                           "source": self.source}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetworkConfig:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        return parse_network_config(data, source=str(data.pop("source", "")), is_list=True)


def _problem(source: str, message: str) -> NetworkError:
    return NetworkError(f"CNI network configuration {source}: {message}")


def parse_network_config(data: object, *, source: str, is_list: bool) -> NetworkConfig:
    """A :class:`NetworkConfig` from a parsed file (``is_list``: a ``.conflist``, else one plugin's config).

    :raises NetworkError: naming the file and the bad field.
    """
    if not isinstance(data, Mapping):
        raise _problem(source, "must be a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _problem(source, f"name must be a network name (letters, digits, '_', '.', '-'), not {name!r}")
    version = data.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise _problem(source, f"cniVersion must be a version string such as \"1.0.0\", not {version!r}")
    if is_list:
        plugins = data.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise _problem(source, "plugins must be a non-empty list of plugin configurations")
    else:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, Mapping):
            raise _problem(source, f"plugins[{index}] must be an object")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind or "/" in kind:
            raise _problem(source, f"plugins[{index}].type must name a plugin executable, not {kind!r}")
    return NetworkConfig(name=name, cni_version=version, plugins=tuple(dict(p) for p in plugins), source=source)


def _read(path: Path) -> NetworkConfig:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except OSError as exc:
        raise _problem(str(path), f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > _MAX_FILE:
        raise _problem(str(path), f"is larger than {_MAX_FILE} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _problem(str(path), f"is not valid JSON: {exc}") from None
    return parse_network_config(data, source=str(path), is_list=path.suffix == ".conflist")


def load_network_config(conf_dir: str | os.PathLike[str]) -> NetworkConfig:
    """The first valid network configuration in ``conf_dir`` (file names sorted), as the kubelet chooses.

    :raises NetworkError: when the directory is missing or has no valid configuration.
    """
    directory = Path(conf_dir)
    try:
        names = sorted(entry.name for entry in os.scandir(directory)
                       if entry.name.endswith(CONFIG_EXTENSIONS) and entry.is_file())
    except OSError as exc:
        raise NetworkError(f"CNI configuration directory {directory} cannot be read: {exc.strerror or exc} "
                           "(set it with --cni-conf-dir or $VMPOD_CNI_CONF_DIR)") from None
    if not names:
        raise NetworkError(f"no CNI network configuration in {directory} (files ending in "
                           f"{', '.join(CONFIG_EXTENSIONS)}; set the directory with --cni-conf-dir or "
                           "$VMPOD_CNI_CONF_DIR)")
    problems: list[str] = []
    for name in names:
        try:
            return _read(directory / name)
        except NetworkError as exc:
            log.warning("skipping %s", exc)
            problems.append(str(exc))
    raise NetworkError(f"no valid CNI network configuration in {directory}: " + "; ".join(problems))
