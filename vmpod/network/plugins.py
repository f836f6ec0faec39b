"""Running CNI plugin executables: the protocol of the CNI specification.

A plugin is found by its ``type`` in the plugin directories (``CNI_PATH``),
run with the network configuration on stdin and the ``CNI_*`` variables in
its environment, and answers with JSON on stdout: a result, or an error
object (``code``, ``msg``, ``details``) with a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmpod.network.errors import CNIPluginError, NetworkError

__all__ = ["PLUGIN_TIMEOUT", "Invocation", "find_plugin", "run_plugin"]

#: Seconds a plugin may take (the bridge plugin waits for DAD; DHCP can take longer).
PLUGIN_TIMEOUT = 120.0


@attrs.frozen
class Invocation:
    """Who a plugin call is for: the ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME`` and ``CNI_PATH``."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    bin_dirs: tuple[str, ...] = ()

    def environment(self, command: str) -> dict[str, str]:
        """The process environment of a plugin call (``PATH`` kept: plugins run ``iptables``)."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=self.container_id, CNI_NETNS=self.netns,
                   CNI_IFNAME=self.ifname, CNI_PATH=":".join(self.bin_dirs))
        return env


def find_plugin(kind: str, bin_dirs: Sequence[str]) -> Path:
    """The executable of plugin ``kind``: the first one in ``bin_dirs``.

    :raises NetworkError: when no directory has it.
    """
    for directory in bin_dirs:
        candidate = Path(directory) / kind
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise NetworkError(f"CNI plugin {kind!r} not found in {':'.join(bin_dirs)} (set the plugin directories with "
                       "--cni-bin-dir or $VMPOD_CNI_BIN_DIR)")


def run_plugin(kind: str, command: str, stdin: bytes, invocation: Invocation) -> dict[str, Any] | None:
    """Run plugin ``kind`` for ``command`` (``ADD``, ``DEL``, ``CHECK``, ``VERSION``); its JSON answer or None.

    :raises CNIPluginError: when the plugin reports an error.
    :raises NetworkError: when it cannot be run, times out or answers something that is not JSON.
    """
    path = find_plugin(kind, invocation.bin_dirs)
    try:
        done = subprocess.run([str(path)], input=stdin, capture_output=True, env=invocation.environment(command),
                              timeout=PLUGIN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise NetworkError(f"CNI plugin {kind} {command} did not finish within {PLUGIN_TIMEOUT:g} s") from None
    except OSError as exc:
        raise NetworkError(f"CNI plugin {kind} ({path}) cannot be run: {exc.strerror or exc}") from None
    answer: object = None
    text = done.stdout.strip()
    if text:
        try:
            answer = json.loads(text)
        except ValueError:
            if done.returncode == 0:
                raise NetworkError(f"CNI plugin {kind} {command} printed something that is not JSON: "
                                   f"{text[:200]!r}") from None
    if done.returncode != 0:
        if isinstance(answer, Mapping) and "msg" in answer:
            code = answer.get("code")
            raise CNIPluginError(kind, command, code if isinstance(code, int) else done.returncode,
                                 str(answer.get("msg", "")), str(answer.get("details", "") or ""))
        stderr = done.stderr.decode(errors="replace").strip()
        raise CNIPluginError(kind, command, done.returncode, stderr[-500:] or text.decode(errors="replace")[:500]
                             or "no error message")
    if answer is None:
        return None
    if not isinstance(answer, dict):
        raise NetworkError(f"CNI plugin {kind} {command} answered with JSON that is not an object")
    return answer
