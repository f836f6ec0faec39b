"""The durable store: schema, transactions, conflicts, artefacts, events, images, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmpod.errors import ConflictError
from vmpod.runtime.records import ArtefactKind, ContainerRecord, EventRecord, ImageRecord, OperationKind
from vmpod.runtime.states import ContainerState, SandboxState
from vmpod.runtime.store import MAX_EVENTS_PER_POD, SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "vmpod.db")
    yield opened
    opened.close()


def _pod(store: Store, uid: str = "u1", name: str = "a", namespace: str = "default") -> None:
    with store.transaction() as tx:
        tx.insert_pod(uid=uid, namespace=namespace, name=name, labels={"app": "x"}, annotations={"k": "v"},
                      backend="fake", machine_name=f"vmpod-{uid}-vm", log_path=f"/logs/{uid}.log",
                      spec_json="{}", created_at=123)


def test_new_store_has_schema_wal_and_an_id(tmp_path: Path, store: Store) -> None:
    db = sqlite3.connect(tmp_path / "vmpod.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(store.store_id) == 36
    again = Store.open(tmp_path / "vmpod.db")
    assert again.store_id == store.store_id
    again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "vmpod.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path / "vmpod.db")


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "vmpod.db").write_text("hello" * 1000)
    with pytest.raises(StoreError):
        Store.open(tmp_path / "vmpod.db")


def test_pod_round_trip_and_conflicts(store: Store) -> None:
    _pod(store)
    record = store.pod("u1")
    assert record is not None
    assert (record.name, record.labels, record.annotations, record.state, record.created_at) == \
        ("a", {"app": "x"}, {"k": "v"}, SandboxState.READY, 123)
    assert store.pod_by_name("default", "a") == record
    with pytest.raises(ConflictError):
        _pod(store, uid="u1", name="b")
    with pytest.raises(ConflictError):
        _pod(store, uid="u2", name="a")
    _pod(store, uid="u3", name="a", namespace="other")
    assert [p.uid for p in store.pods()] == ["u1", "u3"]


def test_transaction_rolls_back_on_error(store: Store) -> None:
    def fail() -> None:
        with store.transaction() as tx:
            tx.insert_pod(uid="u9", namespace="default", name="z", labels={}, annotations={}, backend="fake",
                          machine_name="m9", log_path="/l", spec_json="{}", created_at=1)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert store.pod("u9") is None


def test_container_and_operation(store: Store) -> None:
    _pod(store)
    container = ContainerRecord(pod_uid="u1", id="c1", name="vm", image="/i", image_ref="sha256:x",
                                state=ContainerState.CREATED, created_at=5)
    with store.transaction() as tx:
        tx.begin("u1", OperationKind.CREATE, "files")
        with pytest.raises(ConflictError):
            tx.begin("u1", OperationKind.DELETE, "pod")
        tx.insert_container(container)
    record = store.pod("u1")
    assert record is not None
    assert record.container == container
    assert record.operation == "create"
    with store.transaction() as tx:
        tx.update_container("u1", state=ContainerState.RUNNING, started_at=7)
        tx.finish("u1")
    record = store.pod("u1")
    assert record is not None
    assert record.container is not None
    assert (record.container.state, record.container.started_at, record.operation) == (ContainerState.RUNNING, 7, "")
    with pytest.raises(ValueError, match="cannot update"), store.transaction() as tx:
        tx.update_container("u1", name="other")


def test_artefacts_are_owned_and_retained_logs_outlive_the_pod(store: Store) -> None:
    _pod(store)
    _pod(store, uid="u2", name="b")
    with store.transaction() as tx:
        tx.add_artefacts("u1", [(ArtefactKind.DIR, "/p/u1"), (ArtefactKind.LOG, "/l/u1.log")])
        tx.add_artefacts("u1", [(ArtefactKind.DIR, "/p/u1")])  # again: kept once
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.add_artefacts("u2", [(ArtefactKind.FILE, "/p/u1")])
    assert [a.path for a in store.artefacts("u1")] == ["/p/u1", "/l/u1.log"]
    with store.transaction() as tx:
        tx.retain_artefact("/l/u1.log")
        tx.delete_pod("u1")
    assert store.pod("u1") is None
    remaining = store.artefacts()
    assert [(a.path, a.retained) for a in remaining] == [("/l/u1.log", True)]


def test_events_are_trimmed(store: Store) -> None:
    _pod(store)
    for i in range(MAX_EVENTS_PER_POD + 40):
        with store.transaction() as tx:
            tx.add_event(EventRecord("u1", "default", "a", "Normal", "R", f"m{i}", i))
    events = store.events("u1")
    assert MAX_EVENTS_PER_POD <= len(events) < MAX_EVENTS_PER_POD + 16
    assert events[-1].message == f"m{MAX_EVENTS_PER_POD + 39}"


def test_images(store: Store) -> None:
    image = ImageRecord("sha256:ab", "/images/ab", "qcow2", 1 << 30, 1000, 1)
    with store.transaction() as tx:
        tx.put_image(image)
        tx.put_image(image)
        tx.put_image_source("file:///x", "sha256:ab", "1:2:3:4")
    assert store.image("sha256:ab") == image
    assert store.images() == [image]
    assert store.image_source("file:///x") == ("sha256:ab", "1:2:3:4")
    with store.transaction() as tx:
        tx.delete_image("sha256:ab")
    assert store.image("sha256:ab") is None
    assert store.image_source("file:///x") is None


def test_read_only_store_sees_commits_and_cannot_write(tmp_path: Path, store: Store) -> None:
    reader = Store.open(tmp_path / "vmpod.db", readonly=True)
    _pod(store)
    assert reader.pod("u1") is not None
    with pytest.raises(StoreError), reader.transaction():
        pass
    reader.close()
    with pytest.raises(StoreError):
        Store.open(tmp_path / "missing.db", readonly=True)


def test_many_threads_write_without_losing_anything(store: Store) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                _pod(store, uid=f"t{n}-{i}", name=f"p{n}-{i}")
                with store.transaction() as tx:
                    tx.add_event(EventRecord(f"t{n}-{i}", "default", f"p{n}-{i}", "Normal", "R", "m", i))
                assert store.pod(f"t{n}-{i}") is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store.pods()) == 16 * 20


def test_nested_transactions_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="nested"), store.transaction(), store.transaction():
        pass
