"""The durable store: one SQLite database (WAL mode) per state directory.

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

``meta``
    ``store_id`` (a random UUID naming this store; every machine vmpod creates
    carries it as a label, so reconcile never mistakes another state
    directory's machines for its own orphans).
``pods``
    one row per pod sandbox: identity, labels and annotations (JSON), the
    backend and machine name, sandbox state and creation time (ns), log path.
``pod_specs``
    the whole :class:`~vmpod.model.VMPod` as :mod:`vmpod.convert` JSON (kept
    apart so that listing pods reads only small rows).
``containers``
    the pod's VM container once created: CRI state, timestamps (ns), exit
    code and reason.
``machines``
    the :class:`~vmpod.machine.Machine` JSON given to the backend.
``operations``
    the intent records: at most one open operation per pod (``create``,
    ``stop``, ``delete``) with its current step.  A row exists exactly while
    an operation is unfinished; reconcile finishes or undoes what it finds.
``artefacts``
    every path a pod owns, recorded *before* it is created.
``events``
    the pod's events (the last :data:`MAX_EVENTS_PER_POD`).
``images`` / ``image_sources``
    content-addressed images and which source (with the source file's
    identity) produced them.
``networks``
    a pod's CNI attachment (:class:`~vmpod.network.PodNetwork`): recorded
    before the namespace is made and ``ADD`` runs, completed with the result,
    removed after ``DEL``.  ``pods.pod_ip`` is the address its VM owns.

Upgrades: a store of an older schema version is migrated in place
(:data:`_UPGRADES`) when opened writable.

Concurrency: one connection, shared by all threads behind a lock; every write
runs in a ``BEGIN IMMEDIATE`` transaction (:meth:`Store.transaction`).
Durability: ``synchronous=FULL`` for transactions that acknowledge something
to the caller (an fsync of the WAL), ``NORMAL`` for intents that a power cut
may lose without harm (their side effects are then unknown to the store and
removed by reconcile, and nothing was acknowledged).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
import types
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vmpod.errors import ConflictError, NotFoundError, VmpodError
from vmpod.network.attach import PodNetwork
from vmpod.runtime.records import (
    Artefact,
    ArtefactKind,
    ContainerRecord,
    EventRecord,
    ImageRecord,
    Operation,
    OperationKind,
    PodRecord,
)
from vmpod.runtime.states import ContainerState, SandboxState

__all__ = ["MAX_EVENTS_PER_POD", "SCHEMA_VERSION", "Store", "StoreError", "Transaction"]

SCHEMA_VERSION = 2
MAX_EVENTS_PER_POD = 100

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE pods (
    uid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    backend TEXT NOT NULL,
    machine_name TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    log_path TEXT NOT NULL,
    pod_ip TEXT NOT NULL DEFAULT '',
    UNIQUE (namespace, name)
);
CREATE TABLE pod_specs (
    pod_uid TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE containers (
    pod_uid TEXT PRIMARY KEY REFERENCES pods (uid),
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    state INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    restart_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE machines (
    pod_uid TEXT PRIMARY KEY,
    machine TEXT NOT NULL
);
CREATE TABLE operations (
    id INTEGER PRIMARY KEY,
    pod_uid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    step TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    keep_log INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE artefacts (
    path TEXT PRIMARY KEY,
    pod_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    retained INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX artefacts_by_pod ON artefacts (pod_uid);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    pod_uid TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    timestamp INTEGER NOT NULL
);
CREATE INDEX events_by_pod ON events (pod_uid, id);
CREATE TABLE images (
    digest TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    virtual_size INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE image_sources (
    url TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    stamp TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE networks (
    pod_uid TEXT PRIMARY KEY,
    netns TEXT NOT NULL UNIQUE,
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '',
    link TEXT NOT NULL DEFAULT ''
);
"""

#: Statements that bring a store of version ``n - 1`` to version ``n`` (a fresh store gets :data:`_SCHEMA`).
_UPGRADES: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE pods ADD COLUMN pod_ip TEXT NOT NULL DEFAULT ''",
        "CREATE TABLE networks (pod_uid TEXT PRIMARY KEY, netns TEXT NOT NULL UNIQUE, container_id TEXT NOT NULL, "
        "ifname TEXT NOT NULL, config TEXT NOT NULL, result TEXT NOT NULL DEFAULT '', "
        "link TEXT NOT NULL DEFAULT '')"),
}

_POD_QUERY = """
SELECT p.uid, p.namespace, p.name, p.labels, p.annotations, p.backend, p.machine_name, p.state,
       p.created_at, p.log_path,
       c.id, c.name, c.image, c.image_ref, c.state, c.created_at, c.started_at, c.finished_at,
       c.exit_code, c.reason, c.message, c.restart_count,
       o.kind, p.pod_ip
FROM pods p
LEFT JOIN containers c ON c.pod_uid = p.uid
LEFT JOIN operations o ON o.pod_uid = p.uid
"""


class StoreError(VmpodError):
    """The store cannot be opened or used (newer schema, corrupt file, read-only misuse)."""


def _now() -> int:
    return time.time_ns()


@functools.lru_cache(maxsize=4096)
def _labels(text: str) -> Mapping[str, str]:
    """Parsed labels, shared read-only between pods with the same labels (listing parses each set once)."""
    return types.MappingProxyType(json.loads(text))


_SANDBOX_STATES = {int(s): s for s in SandboxState}
_CONTAINER_STATES = {int(s): s for s in ContainerState}


def _pod(row: tuple[Any, ...]) -> PodRecord:
    container = None
    if row[10] is not None:
        container = ContainerRecord(
            pod_uid=row[0], id=row[10], name=row[11], image=row[12], image_ref=row[13],
            state=_CONTAINER_STATES[row[14]], created_at=row[15], started_at=row[16], finished_at=row[17],
            exit_code=row[18], reason=row[19], message=row[20], restart_count=row[21])
    return PodRecord(
        uid=row[0], namespace=row[1], name=row[2], labels=_labels(row[3]), annotations_json=row[4],
        backend=row[5], machine_name=row[6], state=_SANDBOX_STATES[row[7]], created_at=row[8], log_path=row[9],
        container=container, operation=row[22] or "", pod_ip=row[23])


class Store:
    """The state store of one state directory.  Safe to use from many threads.

    Open it with :meth:`open`; write through :meth:`transaction`; read with the
    query methods, which see only committed data.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._db = connection
        self._lock = threading.RLock()
        self._owner: int | None = None
        self.path = path
        self.readonly = readonly
        self.store_id = self._meta("store_id")

    # ---- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (creating and migrating when writable) the store at ``path``.

        :raises StoreError: when the file is not a vmpod store or its schema is newer than this vmpod.
        """
        try:
            if readonly:
                if not path.exists():
                    raise StoreError(f"no vmpod store at {path}")
                db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=30)
            else:
                db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise StoreError(f"the store {path} has schema version {version}, newer than this vmpod "
                                 f"understands ({SCHEMA_VERSION}); upgrade vmpod")
            if version < SCHEMA_VERSION:
                if readonly:
                    db.close()
                    raise StoreError(f"the store {path} is not initialised yet")
                cls._migrate(db, version)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from None
        return cls(db, path, readonly)

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", (str(uuid.uuid4()),))
            else:
                for upgrade in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in _UPGRADES[upgrade]:
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (checkpointing the WAL when writable)."""
        with self._lock:
            if not self.readonly:
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # ---- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """A write transaction: committed when the block ends, rolled back on an exception.

        :param durable: fsync the commit (``synchronous=FULL``); pass False for intents whose
            loss in a power cut is harmless (see the module docstring).
        """
        if self.readonly:
            raise StoreError("the store is open read-only")
        with self._lock:
            if self._owner is not None:
                raise StoreError("nested store transactions are not supported")
            self._owner = threading.get_ident()
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield Transaction(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
                self._owner = None

    # ---- reading ---------------------------------------------------------------------

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _meta(self, key: str) -> str:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            raise StoreError(f"the store {self.path} has no {key}")
        return str(rows[0][0])

    def pod(self, uid: str) -> PodRecord | None:
        """The pod with this uid, or None."""
        rows = self._query(_POD_QUERY + " WHERE p.uid = ?", (uid,))
        return _pod(rows[0]) if rows else None

    def pod_by_name(self, namespace: str, name: str) -> PodRecord | None:
        """The pod ``namespace/name``, or None."""
        rows = self._query(_POD_QUERY + " WHERE p.namespace = ? AND p.name = ?", (namespace, name))
        return _pod(rows[0]) if rows else None

    def pods(self) -> list[PodRecord]:
        """Every pod, ordered by namespace and name."""
        return [_pod(row) for row in self._query(_POD_QUERY + " ORDER BY p.namespace, p.name")]

    def spec_json(self, uid: str) -> str | None:
        """The pod's :class:`~vmpod.model.VMPod` as :mod:`vmpod.convert` JSON, or None."""
        rows = self._query("SELECT spec FROM pod_specs WHERE pod_uid = ?", (uid,))
        return str(rows[0][0]) if rows else None

    def machine_json(self, uid: str) -> str | None:
        """The :class:`~vmpod.machine.Machine` given to the backend for pod ``uid``, as JSON, or None."""
        rows = self._query("SELECT machine FROM machines WHERE pod_uid = ?", (uid,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def network(self, uid: str) -> PodNetwork | None:
        """Pod ``uid``'s CNI attachment, or None (``user`` network mode, or not made yet)."""
        rows = self._query(f"{_NETWORK_QUERY} WHERE n.pod_uid = ?", (uid,))
        return _network(rows[0]) if rows else None

    def networks(self) -> list[PodNetwork]:
        """Every recorded CNI attachment."""
        return [_network(row) for row in self._query(_NETWORK_QUERY + " ORDER BY n.pod_uid")]

    def operation(self, uid: str) -> Operation | None:
        """The open operation of pod ``uid``, or None."""
        rows = self._query("SELECT id, pod_uid, kind, step, started_at, keep_log FROM operations WHERE pod_uid = ?",
                           (uid,))
        return _operation(rows[0]) if rows else None

    def operations(self) -> list[Operation]:
        """Every open operation, oldest first."""
        rows = self._query("SELECT id, pod_uid, kind, step, started_at, keep_log FROM operations ORDER BY id")
        return [_operation(row) for row in rows]

    def artefacts(self, uid: str | None = None) -> list[Artefact]:
        """The artefacts of pod ``uid`` (every artefact when None), in the order they were recorded."""
        sql = "SELECT pod_uid, kind, path, retained FROM artefacts"
        rows = self._query(sql + (" WHERE pod_uid = ? ORDER BY rowid" if uid else " ORDER BY rowid"),
                           (uid,) if uid else ())
        return [Artefact(row[0], ArtefactKind(row[1]), row[2], bool(row[3])) for row in rows]

    def events(self, uid: str) -> list[EventRecord]:
        """The events of pod ``uid``, oldest first."""
        rows = self._query("SELECT pod_uid, namespace, name, type, reason, message, timestamp FROM events "
                           "WHERE pod_uid = ? ORDER BY id", (uid,))
        return [EventRecord(*row) for row in rows]

    def image(self, digest: str) -> ImageRecord | None:
        """The image with this digest, or None."""
        rows = self._query("SELECT digest, path, format, virtual_size, size, created_at FROM images WHERE digest = ?",
                           (digest,))
        return ImageRecord(*rows[0]) if rows else None

    def images(self) -> list[ImageRecord]:
        """Every stored image."""
        rows = self._query("SELECT digest, path, format, virtual_size, size, created_at FROM images ORDER BY digest")
        return [ImageRecord(*row) for row in rows]

    def image_source(self, url: str) -> tuple[str, str] | None:
        """``(digest, stamp)`` of the image last fetched from ``url``, or None."""
        rows = self._query("SELECT digest, stamp FROM image_sources WHERE url = ?", (url,))
        return (rows[0][0], rows[0][1]) if rows else None

    def image_sources(self) -> list[tuple[str, str]]:
        """``(url, digest)`` of every recorded image source, by URL."""
        return [(str(url), str(digest)) for url, digest in
                self._query("SELECT url, digest FROM image_sources ORDER BY url")]

    def size_bytes(self) -> int:
        """Bytes used by the database and its WAL."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())


_NETWORK_QUERY = ("SELECT n.pod_uid, n.netns, n.container_id, n.ifname, n.config, n.result, n.link, "
                  "COALESCE(p.pod_ip, '') FROM networks n LEFT JOIN pods p ON p.uid = n.pod_uid")


def _network(row: tuple[Any, ...]) -> PodNetwork:
    return PodNetwork(pod_uid=row[0], netns=row[1], container_id=row[2], ifname=row[3], config=row[4],
                      result=row[5], link=row[6], pod_ip=row[7])


def _operation(row: tuple[Any, ...]) -> Operation:
    return Operation(id=row[0], pod_uid=row[1], kind=OperationKind(row[2]), step=row[3], started_at=row[4],
                     keep_log=bool(row[5]))


class Transaction:
    """The write methods of the store, valid inside one :meth:`Store.transaction` block."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _run(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(params))

    # ---- pods ------------------------------------------------------------------------

    def insert_pod(self, *, uid: str, namespace: str, name: str, labels: Mapping[str, str],
                   annotations: Mapping[str, str], backend: str, machine_name: str, log_path: str, spec_json: str,
                   created_at: int) -> None:
        """Add a pod sandbox in state READY.

        :raises ConflictError: when the uid, the name or the machine name is taken.
        """
        try:
            self._run("INSERT INTO pods (uid, namespace, name, labels, annotations, backend, machine_name, state, "
                      "created_at, log_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (uid, namespace, name, json.dumps(dict(labels), sort_keys=True),
                       json.dumps(dict(annotations), sort_keys=True), backend, machine_name,
                       int(SandboxState.READY), created_at, log_path))
            self._run("INSERT INTO pod_specs (pod_uid, spec) VALUES (?, ?)", (uid, spec_json))
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"pod {namespace}/{name} (uid {uid}) conflicts with an existing pod: {exc}") from None

    def set_sandbox_state(self, uid: str, state: SandboxState) -> None:
        """Set the sandbox state of pod ``uid``."""
        self._run("UPDATE pods SET state = ? WHERE uid = ?", (int(state), uid))

    def delete_pod(self, uid: str) -> None:
        """Remove pod ``uid`` with its container, operation, events and unretained artefacts."""
        self._run("DELETE FROM containers WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM machines WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM pod_specs WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM operations WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM events WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM artefacts WHERE pod_uid = ? AND retained = 0", (uid,))
        self._run("DELETE FROM networks WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM pods WHERE uid = ?", (uid,))

    # ---- networks --------------------------------------------------------------------

    def put_network(self, network: PodNetwork) -> None:
        """Record (or update) pod ``network.pod_uid``'s CNI attachment and its pod IP."""
        self._run("INSERT INTO networks (pod_uid, netns, container_id, ifname, config, result, link) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pod_uid) DO UPDATE SET netns = excluded.netns, "
                  "container_id = excluded.container_id, ifname = excluded.ifname, config = excluded.config, "
                  "result = excluded.result, link = excluded.link",
                  (network.pod_uid, network.netns, network.container_id, network.ifname, network.config,
                   network.result, network.link))
        self._run("UPDATE pods SET pod_ip = ? WHERE uid = ?", (network.pod_ip, network.pod_uid))

    def delete_network(self, uid: str) -> None:
        """Forget pod ``uid``'s CNI attachment (it was torn down) and its pod IP."""
        self._run("DELETE FROM networks WHERE pod_uid = ?", (uid,))
        self._run("UPDATE pods SET pod_ip = '' WHERE uid = ?", (uid,))

    # ---- containers ------------------------------------------------------------------

    def insert_container(self, record: ContainerRecord, machine_json: str = "") -> None:
        """Add the container of a pod (with the machine given to the backend, as JSON).

        :raises ConflictError: when the pod has one already or the id is taken.
        """
        try:
            self._run("INSERT INTO containers (pod_uid, id, name, image, image_ref, state, created_at, started_at, "
                      "finished_at, exit_code, reason, message, restart_count) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (record.pod_uid, record.id, record.name, record.image, record.image_ref, int(record.state),
                       record.created_at, record.started_at, record.finished_at, record.exit_code, record.reason,
                       record.message, record.restart_count))
            if machine_json:
                self._run("INSERT OR REPLACE INTO machines (pod_uid, machine) VALUES (?, ?)",
                          (record.pod_uid, machine_json))
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"container {record.id} conflicts with an existing one: {exc}") from None

    def update_container(self, uid: str, **fields: Any) -> None:
        """Update some columns of pod ``uid``'s container (``state`` may be a :class:`ContainerState`)."""
        if not fields:
            return
        allowed = {"state", "started_at", "finished_at", "exit_code", "reason", "message", "restart_count"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update container columns {sorted(unknown)}")
        values = [int(v) if isinstance(v, ContainerState) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._run(f"UPDATE containers SET {assignments} WHERE pod_uid = ?", (*values, uid))

    def delete_container(self, uid: str) -> None:
        """Remove the container of pod ``uid`` (if any)."""
        self._run("DELETE FROM containers WHERE pod_uid = ?", (uid,))
        self._run("DELETE FROM machines WHERE pod_uid = ?", (uid,))

    # ---- operations ------------------------------------------------------------------

    def begin(self, uid: str, kind: OperationKind, step: str, *, keep_log: bool = False) -> None:
        """Record the intent to run operation ``kind`` on pod ``uid``.

        :raises ConflictError: when the pod already has an unfinished operation.
        """
        try:
            self._run("INSERT INTO operations (pod_uid, kind, step, started_at, keep_log) VALUES (?, ?, ?, ?, ?)",
                      (uid, str(kind), step, _now(), int(keep_log)))
        except sqlite3.IntegrityError:
            raise ConflictError(f"pod {uid} has an unfinished operation") from None

    def step(self, uid: str, step: str) -> None:
        """Record that pod ``uid``'s operation reached ``step``."""
        self._run("UPDATE operations SET step = ? WHERE pod_uid = ?", (step, uid))

    def finish(self, uid: str) -> None:
        """Remove the operation record of pod ``uid``: it completed (or was undone)."""
        self._run("DELETE FROM operations WHERE pod_uid = ?", (uid,))

    # ---- artefacts -------------------------------------------------------------------

    def add_artefacts(self, uid: str, artefacts: Iterable[tuple[ArtefactKind, str]]) -> None:
        """Record paths pod ``uid`` is about to create (already recorded ones are kept).

        :raises ConflictError: when a path belongs to another pod.
        """
        for kind, path in artefacts:
            row = self._run("SELECT pod_uid FROM artefacts WHERE path = ?", (path,)).fetchone()
            if row is not None:
                if row[0] != uid:
                    raise ConflictError(f"{path} already belongs to pod {row[0]}")
                continue
            self._run("INSERT INTO artefacts (path, pod_uid, kind) VALUES (?, ?, ?)", (path, uid, str(kind)))

    def remove_artefacts(self, paths: Iterable[str]) -> None:
        """Forget these paths (they were removed)."""
        self._db.executemany("DELETE FROM artefacts WHERE path = ?", [(p,) for p in paths])

    def retain_artefact(self, path: str) -> None:
        """Keep this artefact (a log) after its pod is deleted."""
        self._run("UPDATE artefacts SET retained = 1 WHERE path = ?", (path,))

    # ---- events ----------------------------------------------------------------------

    def add_event(self, event: EventRecord) -> None:
        """Record an event, keeping only the pod's last :data:`MAX_EVENTS_PER_POD`."""
        cursor = self._run("INSERT INTO events (pod_uid, namespace, name, type, reason, message, timestamp) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (event.pod_uid, event.namespace, event.name, event.type, event.reason, event.message,
                            event.timestamp))
        newest = cursor.lastrowid
        if newest is not None and newest % 16 == 0:  # trim now and then, not on every insert
            self._run("DELETE FROM events WHERE pod_uid = ? AND id <= (SELECT id FROM events WHERE pod_uid = ? "
                      "ORDER BY id DESC LIMIT 1 OFFSET ?)", (event.pod_uid, event.pod_uid, MAX_EVENTS_PER_POD))

    # ---- images ----------------------------------------------------------------------

    def put_image(self, record: ImageRecord) -> None:
        """Record an image (an existing digest is left as it is)."""
        self._run("INSERT OR IGNORE INTO images (digest, path, format, virtual_size, size, created_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (record.digest, record.path, record.format, record.virtual_size, record.size, record.created_at))

    def delete_image(self, digest: str) -> None:
        """Forget an image and the sources that produced it."""
        self._run("DELETE FROM image_sources WHERE digest = ?", (digest,))
        self._run("DELETE FROM images WHERE digest = ?", (digest,))

    def put_image_source(self, url: str, digest: str, stamp: str) -> None:
        """Remember that ``url`` (in the state ``stamp``) gave image ``digest``."""
        self._run("INSERT INTO image_sources (url, digest, stamp, updated_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (url) DO UPDATE SET digest = excluded.digest, stamp = excluded.stamp, "
                  "updated_at = excluded.updated_at", (url, digest, stamp, _now()))


def require_pod(store: Store, uid: str) -> PodRecord:
    """The pod ``uid``; :class:`NotFoundError` when there is none."""
    pod = store.pod(uid)
    if pod is None:
        raise NotFoundError(f"no pod with uid {uid}")
    return pod
