"""Named network namespaces, as ``ip netns`` makes them (a bind mount under ``/run/netns``).

Every function is idempotent: creating one that exists returns it, deleting
one that is gone succeeds.  A stale name (the file without its mount, left by
a reboot) is replaced.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from vmpod.network.errors import NetworkError

__all__ = ["NETNS_DIR", "create", "delete", "exists", "ip", "path"]

#: Where ``ip netns`` keeps named namespaces.
NETNS_DIR = "/run/netns"


def path(name: str) -> str:
    """The bind-mount path of namespace ``name`` (what ``CNI_NETNS`` and ``nsenter --net=`` take)."""
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    """True when namespace ``name`` is mounted."""
    return os.path.ismount(path(name))


def ip(args: Sequence[str], *, netns: str | None = None, stdin: str | None = None) -> str:
    """Run ``ip [-n NETNS] ARGS`` (``-batch -`` reads ``stdin``); its stdout.

    :raises NetworkError: with ``ip``'s message when it fails.
    """
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    except OSError as exc:
        raise NetworkError(f"cannot run ip (install iproute2): {exc.strerror or exc}") from None
    if done.returncode != 0:
        command = " ".join(argv) if stdin is None else f"{' '.join(argv)} <<< {stdin.strip()!r}"
        raise NetworkError(f"{command}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def create(name: str) -> str:
    """Make namespace ``name`` (its loopback up) unless it exists; its path."""
    where = path(name)
    if not exists(name):
        if os.path.lexists(where):  # a stale file without its mount
            os.unlink(where)
        ip(["netns", "add", name])
    ip(["link", "set", "lo", "up"], netns=name)
    return where


def delete(name: str) -> None:
    """Remove namespace ``name`` (and with it every interface left in it); gone is fine."""
    where = path(name)
    if exists(name):
        ip(["netns", "delete", name])
    elif os.path.lexists(where):
        os.unlink(where)
