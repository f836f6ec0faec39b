"""A typed view of the parts of libvirt-python vmpod uses, and a connection that survives libvirtd restarts.

libvirt-python ships no type information, so this module is the only one that imports
``libvirt``: it describes the objects it returns with :class:`Connect` and :class:`Domain`
protocols and re-exports the constants the backend needs.  It also silences libvirt's default
error handler (which prints every error to stderr; the backend turns errors into vmpod's own).

:class:`Connection` opens the URI on first use and runs every operation through :meth:`call`:
when the operation fails because the connection is gone (libvirtd was restarted or killed), it
reopens the URI, retrying for up to ``reconnect_timeout`` seconds, and runs the operation once
more on the new connection.  Operations therefore look domains up inside the function they pass,
never keep a :class:`Domain` across calls: objects of a dead connection are dead too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar, cast

import libvirt  # type: ignore[import-untyped]

__all__ = [
    "CRASHED",
    "ERR_NO_DOMAIN",
    "ERR_NO_DOMAIN_METADATA",
    "ERR_OPERATION_INVALID",
    "METADATA_ELEMENT",
    "PAUSED",
    "PMSUSPENDED",
    "RUNNING",
    "SHUTDOWN",
    "SHUTOFF",
    "Connect",
    "Connection",
    "Domain",
    "LibvirtError",
    "close_quietly",
    "error_code",
    "is_connection_error",
    "open_connection",
]

log = logging.getLogger(__name__)

#: libvirt's exception type.
LibvirtError: Final[type[Exception]] = libvirt.libvirtError

# virDomainState
NOSTATE: Final[int] = libvirt.VIR_DOMAIN_NOSTATE
RUNNING: Final[int] = libvirt.VIR_DOMAIN_RUNNING
BLOCKED: Final[int] = libvirt.VIR_DOMAIN_BLOCKED
PAUSED: Final[int] = libvirt.VIR_DOMAIN_PAUSED
SHUTDOWN: Final[int] = libvirt.VIR_DOMAIN_SHUTDOWN
SHUTOFF: Final[int] = libvirt.VIR_DOMAIN_SHUTOFF
CRASHED: Final[int] = libvirt.VIR_DOMAIN_CRASHED
PMSUSPENDED: Final[int] = libvirt.VIR_DOMAIN_PMSUSPENDED
SHUTOFF_CRASHED: Final[int] = libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
SHUTOFF_FAILED: Final[int] = libvirt.VIR_DOMAIN_SHUTOFF_FAILED

# error codes
ERR_NO_DOMAIN: Final[int] = libvirt.VIR_ERR_NO_DOMAIN
ERR_NO_DOMAIN_METADATA: Final[int] = libvirt.VIR_ERR_NO_DOMAIN_METADATA
ERR_OPERATION_INVALID: Final[int] = libvirt.VIR_ERR_OPERATION_INVALID
ERR_OPERATION_FAILED: Final[int] = libvirt.VIR_ERR_OPERATION_FAILED
ERR_DOM_EXIST: Final[int] = libvirt.VIR_ERR_DOM_EXIST
_CONNECTION_CODES: Final = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})
_RPC: Final[int] = libvirt.VIR_FROM_RPC

# flags
METADATA_ELEMENT: Final[int] = libvirt.VIR_DOMAIN_METADATA_ELEMENT
SHUTDOWN_ACPI: Final[int] = libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
UNDEFINE_ALL: Final[int] = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)

_T = TypeVar("_T")


def _ignore_error(_context: object, _error: object) -> None:
    """libvirt's error callback: errors reach vmpod as exceptions, nothing is printed."""


libvirt.registerErrorHandler(_ignore_error, None)


class Domain(Protocol):
    """The ``virDomain`` methods vmpod uses."""

    def name(self) -> str: ...
    def UUIDString(self) -> str: ...
    def ID(self) -> int: ...
    def state(self, flags: int = 0) -> list[int]: ...
    def isActive(self) -> int: ...
    def create(self) -> int: ...
    def shutdownFlags(self, flags: int = 0) -> int: ...
    def destroy(self) -> int: ...
    def undefineFlags(self, flags: int = 0) -> int: ...
    def XMLDesc(self, flags: int = 0) -> str: ...
    def metadata(self, type: int, uri: str | None, flags: int = 0) -> str: ...
    def info(self) -> list[int]: ...
    def memoryStats(self) -> dict[str, int]: ...


class Connect(Protocol):
    """The ``virConnect`` methods vmpod uses."""

    def lookupByName(self, name: str) -> Domain: ...
    def lookupByUUIDString(self, uuid: str) -> Domain: ...
    def defineXML(self, xml: str) -> Domain: ...
    def createXML(self, xml: str, flags: int = 0) -> Domain: ...
    def listAllDomains(self, flags: int = 0) -> list[Domain]: ...
    def isAlive(self) -> int: ...
    def close(self) -> int: ...
    def getLibVersion(self) -> int: ...


def error_code(error: Exception) -> int:
    """libvirt's error code of a :data:`LibvirtError` (0 for other exceptions)."""
    getter = getattr(error, "get_error_code", None)
    return int(getter() or 0) if getter is not None else 0


def _error_domain(error: Exception) -> int:
    getter = getattr(error, "get_error_domain", None)
    return int(getter() or 0) if getter is not None else 0


def is_connection_error(error: Exception) -> bool:
    """True when ``error`` means the connection to libvirtd is lost (not that the operation failed)."""
    return _error_domain(error) == _RPC or error_code(error) in _CONNECTION_CODES


def open_connection(uri: str) -> Connect:
    """Open ``uri`` read-write.

    :raises LibvirtError: libvirtd cannot be reached.
    """
    return cast(Connect, libvirt.open(uri))


def close_quietly(conn: Connect) -> None:
    """Close ``conn``, ignoring errors (a connection whose libvirtd died)."""
    with contextlib.suppress(LibvirtError):
        conn.close()


class Connection:
    """A libvirt connection that reconnects when libvirtd restarts (see the module docstring).

    :param reconnect_timeout: how long :meth:`call` keeps trying to reach libvirtd.
    """

    def __init__(self, uri: str, reconnect_timeout: float = 30.0) -> None:
        self.uri = uri
        self.reconnect_timeout = reconnect_timeout
        self._conn: Connect | None = None
        self._lock = threading.Lock()
        #: how many times a lost connection was reopened (for tests and diagnostics)
        self.reconnects = 0

    def _connect(self, timeout: float | None = None) -> Connect:
        with self._lock:
            if self._conn is not None:
                return self._conn
            deadline = time.monotonic() + (self.reconnect_timeout if timeout is None else timeout)
            delay = 0.05
            while True:
                try:
                    self._conn = open_connection(self.uri)
                    return self._conn
                except LibvirtError as exc:
                    if time.monotonic() >= deadline:
                        # imported here: the log follower uses this module and starts faster without vmpod
                        from vmpod.errors import BackendUnavailable  # noqa: PLC0415

                        raise BackendUnavailable(f"libvirt: cannot connect to {self.uri}: {exc}") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)

    def _drop(self, conn: Connect) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self.reconnects += 1
                log.info("libvirt: the connection to %s was lost; reconnecting", self.uri)
        close_quietly(conn)

    def open(self, timeout: float = 0.0) -> None:
        """Connect now, trying for ``timeout`` seconds; :class:`~vmpod.errors.BackendUnavailable` if it fails."""
        self._connect(timeout)

    def call(self, operation: Callable[[Connect], _T]) -> _T:
        """Run ``operation`` on the connection; once more on a new one when the connection was lost."""
        conn = self._connect()
        try:
            return operation(conn)
        except LibvirtError as exc:
            if not (is_connection_error(exc) or not _alive(conn)):
                raise
            self._drop(conn)
        return operation(self._connect())

    def close(self) -> None:
        """Close the connection (domains keep running)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            close_quietly(conn)


def _alive(conn: Connect) -> bool:
    try:
        return bool(conn.isAlive())
    except LibvirtError:
        return False


def version() -> int:
    """The libvirt library version (``major * 1_000_000 + minor * 1000 + release``)."""
    return int(cast(Any, libvirt).getVersion())
