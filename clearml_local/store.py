"""Durable state of the embedded server: one SQLite database (WAL) behind SQLAlchemy.

Model
    Every object (task, project, queue, model, worker, user) is a JSON document with an ``id``, kept
    in a table of its own (``id TEXT PRIMARY KEY, doc TEXT``) and mirrored in an in-memory cache, so
    that queries such as ``tasks.get_all`` filter and sort Python dicts instead of parsing JSON from
    disk (10,000 tasks: a few ms). The cache is copy-on-write: a document handed out by
    :meth:`Store.get` / :meth:`Store.all` is never mutated afterwards (treat it as read-only); a
    transaction edits deep copies and swaps them into the cache only after the COMMIT succeeded.
    Other modules (events) add their own tables with :meth:`Store.ensure_schema` and use
    ``tx.conn`` (a SQLAlchemy ``Connection``) inside a transaction.

Durability
    A write is acknowledged only after its transaction committed: handlers write inside
    ``with store.transaction() as tx:`` and return after the block, so the HTTP reply is sent after
    COMMIT. The journal is WAL with ``synchronous=FULL`` (each commit is fsync'ed to the WAL), so an
    acknowledged write survives SIGKILL of the server and also an OS crash or power loss;
    ``synchronous="NORMAL"`` (constructor argument) would only survive process crashes.

Concurrency
    One writer at a time: :meth:`Store.transaction` holds a process-wide re-entrant lock and opens
    the SQLite transaction with ``BEGIN IMMEDIATE`` (so a second process writing the same file
    waits instead of failing half-way). A nested ``transaction()`` in the same thread joins the outer
    one. Readers never wait for a writer: cache snapshots take a short lock that a commit holds only
    while it swaps its documents in (so a reader sees all of a commit or none of it), and
    :meth:`Store.reading` reads extra tables through a second, read-only connection (WAL).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.pool import StaticPool

#: The document collections (one table each).
COLLECTIONS: tuple[str, ...] = ("tasks", "projects", "queues", "models", "workers", "users")
#: Top-level fields with an in-memory equality index (what get_all filters on most).
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {
    "tasks": ("parent", "project", "status", "type"),
    "models": ("task", "project"),
}


def copy_doc(doc: Any) -> Any:
    """A deep copy of a JSON document. A JSON round trip, not ``copy.deepcopy``: faster, and it
    copies any depth the C parser stored (``deepcopy`` recurses three Python frames per level and
    failed on a task whose ``runtime`` was ~350 levels deep, breaking every later edit of it)."""
    return json.loads(json.dumps(doc))


def utc_now() -> str:
    """Now as the ISO-8601 UTC string every document uses (sorts lexicographically)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def metric_hash(name: str) -> str:
    """md5 hex digest of a metric or variant name: the keys of ``last_metrics`` (as the SDK hashes)."""
    return hashlib.md5(name.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ScalarValue:
    """One reported scalar, as :meth:`Transaction.update_task_metrics` consumes it."""

    metric: str
    variant: str
    value: float
    iteration: int | None = None


class Transaction:
    """An open write transaction (see :meth:`Store.transaction`)."""

    def __init__(self, store: Store, conn: Connection) -> None:
        self.store = store
        #: The SQLAlchemy connection inside ``BEGIN IMMEDIATE`` (for extra tables: ``conn.exec_driver_sql``).
        self.conn = conn
        self._pending: dict[tuple[str, str], dict[str, Any] | None] = {}

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """A mutable copy of a document (including this transaction's own writes), or ``None``."""
        key = (collection, doc_id)
        pending = key in self._pending
        doc = self._pending[key] if pending else self.store._cache[collection].get(doc_id)
        return copy_doc(doc) if doc is not None else None

    def put(self, collection: str, doc: dict[str, Any]) -> None:
        """Insert or replace ``doc`` (keyed by ``doc["id"]``)."""
        text = json.dumps(doc, separators=(",", ":"))
        self.conn.exec_driver_sql(
            f"INSERT OR REPLACE INTO {collection} (id, doc) VALUES (?, ?)", (doc["id"], text)
        )
        self._pending[(collection, doc["id"])] = json.loads(text)

    def delete(self, collection: str, doc_id: str) -> None:
        """Delete a document (no error if absent)."""
        self.conn.exec_driver_sql(f"DELETE FROM {collection} WHERE id = ?", (doc_id,))
        self._pending[(collection, doc_id)] = None

    def update_task_metrics(
        self, task_id: str, values: Iterable[ScalarValue], last_iteration: int | None = None
    ) -> bool:
        """Fold reported scalars into the task's ``last_metrics``, ``last_iteration``, ``last_update``.

        ``last_metrics[md5(metric)][md5(variant)]`` gets ``metric``, ``variant``, ``value`` (the last
        reported), ``min_value``/``max_value`` with
        their iterations. ``last_iteration`` becomes the max of its old value, the values'
        iterations and ``last_iteration``. Atomic with the rest of the transaction.

        Returns:
            False if the task does not exist (nothing is written), else True.
        """
        task = self.get("tasks", task_id)
        if task is None:
            return False
        metrics = task.setdefault("last_metrics", {})
        top = task.get("last_iteration")
        for item in values:
            entry = metrics.setdefault(metric_hash(item.metric), {}).setdefault(
                metric_hash(item.variant), {"metric": item.metric, "variant": item.variant}
            )
            it = item.iteration
            entry["value"] = item.value
            if entry.get("min_value") is None or item.value < entry["min_value"]:
                entry["min_value"], entry["min_value_iteration"] = item.value, it
            if entry.get("max_value") is None or item.value > entry["max_value"]:
                entry["max_value"], entry["max_value_iteration"] = item.value, it
            if it is not None:
                top = it if top is None else max(top, it)
        if last_iteration is not None:
            top = last_iteration if top is None else max(top, last_iteration)
        if top is not None:
            task["last_iteration"] = top
        task["last_update"] = utc_now()
        self.put("tasks", task)
        return True


class Store:
    """The server's database: documents with a write-through cache, plus tables other modules add.

    Args:
        path: the SQLite file (created with its folder if missing).
        synchronous: SQLite ``synchronous`` pragma; ``FULL`` (default) makes every acknowledged
            write durable even against power loss.
    """

    def __init__(self, path: Path | str, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()  # one writer at a time
        self._cache_lock = threading.Lock()  # held only to apply a commit or to snapshot
        self._read_lock = threading.Lock()  # the read connection, for extra tables
        self._local = threading.local()
        self.engine = create_engine(
            f"sqlite:///{self.path}",
            poolclass=StaticPool,  # one connection, always used under self.lock
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let us emit BEGIN IMMEDIATE ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # A second connection for readers: in WAL mode it reads the last committed state while a
        # writer works, so reads of extra tables never wait for a long write (e.g. a 15 MB batch).
        self.read_engine = create_engine(
            f"sqlite:///{self.path}",
            poolclass=StaticPool,  # one connection, always used under self._read_lock
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(self.read_engine, "connect")
        def _on_read_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.close()

        @event.listens_for(self.read_engine, "begin")
        def _on_read_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")  # deferred: one consistent snapshot per reading() block

        self._cache: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in COLLECTIONS}
        # collection -> field -> value -> ids (dict as an insertion-ordered set)
        self._indexes: dict[str, dict[str, dict[Any, dict[str, None]]]] = {
            name: {f: {} for f in fields} for name, fields in INDEXED_FIELDS.items()
        }
        self.ensure_schema(
            f"CREATE TABLE IF NOT EXISTS {name} (id TEXT PRIMARY KEY, doc TEXT NOT NULL)"
            for name in COLLECTIONS
        )
        self._load()

    def _load(self) -> None:
        with self.reading() as conn:
            for name in COLLECTIONS:
                rows = conn.exec_driver_sql(f"SELECT id, doc FROM {name}").fetchall()
                self._cache[name] = {row[0]: json.loads(row[1]) for row in rows}
                for doc in self._cache[name].values():
                    self._index(name, doc, add=True)

    def _index(self, collection: str, doc: dict[str, Any], add: bool) -> None:
        for field, index in self._indexes.get(collection, {}).items():
            value = doc.get(field)
            if not isinstance(value, str | int | float | bool | None):
                continue
            if add:
                index.setdefault(value, {})[doc["id"]] = None
            else:
                ids = index.get(value)
                if ids is not None:
                    ids.pop(doc["id"], None)
                    if not ids:
                        del index[value]

    def lookup(self, collection: str, field: str, values: Iterable[Any]) -> list[dict[str, Any]] | None:
        """Documents whose indexed ``field`` equals one of ``values``; ``None`` if not indexed."""
        index = self._indexes.get(collection, {}).get(field)
        if index is None:
            return None
        cache = self._cache[collection]
        with self._cache_lock:
            found: dict[str, None] = {}
            for value in values:
                if isinstance(value, str | int | float | bool | None):
                    found.update(index.get(value, {}))
            return [cache[i] for i in found if i in cache]

    def index_size(self, collection: str, field: str, values: Iterable[Any]) -> int | None:
        """How many documents :meth:`lookup` would return (cheap); ``None`` if not indexed."""
        index = self._indexes.get(collection, {}).get(field)
        if index is None:
            return None
        return sum(len(index.get(v, ())) for v in values if isinstance(v, str | int | float | bool | None))

    def ensure_schema(self, statements: Iterable[str]) -> None:
        """Run DDL statements (``CREATE TABLE/INDEX IF NOT EXISTS ...``) in one transaction."""
        with self.transaction() as tx:
            for sql in statements:
                tx.conn.exec_driver_sql(sql)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic write (``BEGIN IMMEDIATE`` ... ``COMMIT``); the cache changes only on commit.

        Re-entrant: inside an open transaction of the same thread, yields that transaction.
        """
        current: Transaction | None = getattr(self._local, "tx", None)
        if current is not None:
            yield current
            return
        with self.lock:
            with self.engine.connect() as conn:
                tx = Transaction(self, conn)
                self._local.tx = tx
                try:
                    conn.begin()
                    yield tx
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
                finally:
                    self._local.tx = None
            with self._cache_lock:  # readers see all of a commit or none of it
                for (collection, doc_id), doc in tx._pending.items():
                    old = self._cache[collection].get(doc_id)
                    if old is not None:
                        self._index(collection, old, add=False)
                    if doc is None:
                        self._cache[collection].pop(doc_id, None)
                    else:
                        self._cache[collection][doc_id] = doc
                        self._index(collection, doc, add=True)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only connection for extra tables: the last committed state, not blocked by writers.

        Inside a transaction of the same thread it is that transaction's connection (which also
        sees the transaction's own writes).
        """
        current: Transaction | None = getattr(self._local, "tx", None)
        if current is not None:
            yield current.conn
            return
        with self._read_lock, self.read_engine.connect() as conn:
            try:
                yield conn
            finally:
                conn.rollback()

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The committed document (read-only: never mutate it), or ``None``."""
        current: Transaction | None = getattr(self._local, "tx", None)
        if current is not None and (collection, doc_id) in current._pending:
            return current._pending[(collection, doc_id)]
        return self._cache[collection].get(doc_id)

    def all(self, collection: str) -> list[dict[str, Any]]:
        """A snapshot list of every committed document of ``collection`` (read-only documents)."""
        with self._cache_lock:
            return list(self._cache[collection].values())

    def count(self, collection: str) -> int:
        """How many documents ``collection`` holds."""
        return len(self._cache[collection])

    def close(self) -> None:
        """Close the database (checkpoints the WAL)."""
        with self.lock, self._read_lock:
            self.read_engine.dispose()
            self.engine.dispose()


def new_id() -> str:
    """A new 32-hex-digit object id, as ClearML uses."""
    import uuid

    return uuid.uuid4().hex


def epoch_ms() -> int:
    """Milliseconds since the epoch (event timestamps)."""
    return int(time.time() * 1000)
