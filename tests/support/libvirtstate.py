"""State directories for tests that drive the ``vmpod`` command with ``--backend libvirt``.

libvirt's qemu runs as ``libvirt-qemu`` and cannot reach pytest's ``tmp_path``, so the state lives
in a directory made by :func:`vmpod_libvirt.testing.shared_dir`; after the test, any domain whose XML
still names that directory (only after a failure: the tests delete their pods) is destroyed and
undefined, and the directory is removed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from vmpod_libvirt import connection as lv
from vmpod_libvirt.testing import Daemons, ensure_daemons, shared_dir

__all__ = ["domains", "libvirt_state_dir"]


def domains(text: str, daemons: Daemons) -> list[str]:
    """Names of the defined domains (running or not) whose XML mentions ``text`` (e.g. the state directory)."""
    conn = lv.open_connection(daemons.uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0) if text in d.XMLDesc(0))
    finally:
        lv.close_quietly(conn)


@contextlib.contextmanager
def libvirt_state_dir(prefix: str) -> Iterator[Path]:
    """``<shared dir>/state`` with libvirtd and virtlogd running; everything of it removed afterwards."""
    daemons = ensure_daemons()
    base = shared_dir(prefix)
    try:
        yield base / "state"
    finally:
        for name in domains(base.name, daemons):
            subprocess.run(["virsh", "-c", daemons.uri, "destroy", name], capture_output=True, check=False)
            subprocess.run(["virsh", "-c", daemons.uri, "undefine", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
