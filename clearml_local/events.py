"""The ``events.*`` service: scalars, plots, debug images and console logs of tasks (and models).

Ingest
    ``events.add_batch`` receives ``application/json-lines`` (one event per line; the SDK chunks
    batches at 15 MB), ``events.add`` one event. All events of one request are written in ONE
    transaction with ``executemany``, together with the tasks' ``last_metrics`` /
    ``last_iteration`` (:meth:`~clearml_local.store.Transaction.update_task_metrics`), and the reply
    is sent after COMMIT: an acknowledged event is durable. A malformed line fails the whole request
    (400, nothing written); an event that names an unknown or published task, or lacks a field, is
    counted in ``errors`` / ``errors_info`` while the others are stored, as clearml-server does.

Storage (SQLite, next to the documents)
    ``events``: scalars, vectors, plots and debug images, one row each, unique per
    (task, model_event, type, metric, variant, iter): re-reporting the same point replaces it, as in
    clearml-server. Scalars keep only columns; other types keep their extra fields (``plot_str``,
    ``url``, ``values``...) as a JSON ``doc``. ``events`` is a WITHOUT ROWID table clustered on
    that key (one B-tree: about twice the insert speed and half the size of a rowid table with a
    unique index); reads return and scroll events in key order (type, metric, variant, iteration).
    ``event_logs``: console lines, numbered in arrival order (``seq``).

Reads used by the SDK (``Task.get_reported_scalars``, ``get_all_reported_scalars``,
``get_reported_plots``, ``get_reported_console_output``, ``get_debug_samples``,
``get_reported_single_values``), HyperParameterOptimizer's objective
(``scalar_metrics_iter_histogram``) and PipelineController's multi-pipeline plots
(``get_task_plots``). Scroll ids are opaque base64 JSON cursors (keyset, never offsets into a
changing list, except for plots).

Single values (``Logger.report_single_value``) are scalars at iteration ``-2**31``: they go to
``last_metrics`` and ``get_task_single_value_metrics`` but not into histograms or ``last_iteration``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clearml_local.api import (
    SUBCODE_INVALID_TASK_ID,
    ApiError,
    RequestContext,
    bad_request,
    endpoint,
    not_found,
    opt_bool,
    opt_int,
    opt_list,
    opt_str,
    require_str,
    str_list,
    validation_error,
)
from clearml_local.store import ScalarValue, Store, Transaction

SCALAR = "training_stats_scalar"
VECTOR = "training_stats_vector"
IMAGE = "training_debug_image"
PLOT = "plot"
LOG = "log"
#: Every event type the server stores.
EVENT_TYPES: frozenset[str] = frozenset({SCALAR, VECTOR, IMAGE, PLOT, LOG})
#: The iteration ``Logger.report_single_value`` reports at.
SINGLE_VALUE_ITERATION = -(2**31)
#: ``samples`` of ``scalar_metrics_iter_histogram`` when the request gives none.
DEFAULT_HISTOGRAM_SAMPLES = 5000
#: Default and maximal page size of the scrolling reads.
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10000
#: Plots per page of ``get_task_plots`` (unless ``no_scroll``).
PLOTS_PAGE_SIZE = 500

# Fields of an event that describe the request, not the event (never stored).
_REQUEST_FIELDS = frozenset({"allow_locked", "method"})
# Fields kept in columns of the ``events`` table (the rest of a non-scalar event goes to ``doc``).
_COLUMN_FIELDS = frozenset({"task", "type", "metric", "variant", "iter", "value", "timestamp", "model_event"})

#: Columns of the ``events`` table, in the order rows are read and written.
_EVENT_COLUMNS = "task, model_event, type, metric, variant, iter, value, timestamp, doc"

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS events (
        task TEXT NOT NULL,
        model_event INTEGER NOT NULL,
        type TEXT NOT NULL,
        metric TEXT NOT NULL,
        variant TEXT NOT NULL,
        iter INTEGER NOT NULL,
        value REAL,
        timestamp INTEGER NOT NULL,
        doc TEXT,
        PRIMARY KEY (task, model_event, type, metric, variant, iter) ON CONFLICT REPLACE
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS event_logs (
        seq INTEGER PRIMARY KEY,
        task TEXT NOT NULL,
        model_event INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        level TEXT,
        worker TEXT,
        msg TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS event_logs_by_time ON event_logs (task, timestamp, seq)",
)


# --- store hooks (called by the app, see INTERFACES.md) --------------------------------------------
def init_store(store: Store) -> None:
    """Create the event tables (idempotent); the app calls it once at start-up."""
    store.ensure_schema(SCHEMA)


def delete_task_events(tx: Transaction, task_ids: Sequence[str]) -> int:
    """Delete every event of ``task_ids`` inside ``tx`` (``tasks.delete`` / ``tasks.reset``).

    Returns:
        The number of deleted events (logs included).
    """
    deleted = 0
    for task_id in task_ids:
        for table in ("events", "event_logs"):
            result = tx.conn.exec_driver_sql(f"DELETE FROM {table} WHERE task = ?", (task_id,))
            deleted += max(result.rowcount, 0)
    return deleted


# --- ingest -------------------------------------------------------------------------------------------
@dataclass
class IngestResult:
    """What ``events.add_batch`` answers: counts of stored and refused events, and why."""

    added: int
    errors: int
    errors_info: dict[str, int]

    def as_data(self) -> dict[str, Any]:
        return {"added": self.added, "errors": self.errors, "errors_info": self.errors_info}


class _EventError(Exception):
    """One event refused (counted in ``errors_info`` under its message)."""


def parse_json_lines(raw: bytes) -> list[Any]:
    """Decode an ``add_batch`` body: json-lines (or, leniently, one JSON array).

    Raises:
        ApiError: 400 naming the first malformed line.
    """
    text = raw.strip()
    if not text:
        return []
    if text.startswith(b"["):
        try:
            decoded = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise validation_error(f"events body is not valid JSON: {exc}") from None
        if not isinstance(decoded, list):
            raise validation_error("events body must be json-lines or a JSON array")
        return decoded
    lines = [line for line in text.split(b"\n") if line.strip()]
    try:  # one C-level parse of the whole batch: several times faster than a loop
        return json.loads(b"[" + b",".join(lines) + b"]")
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise validation_error(f"events body line {number} is not valid JSON: {exc}") from None
    raise validation_error("events body is not valid json-lines")  # e.g. a line ending in a comma


def _as_int(
    event: dict[str, Any], name: str, default: int | None, *, round_floats: bool = False
) -> int | None:
    value = event.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _EventError(f"field '{name}' must be a number")
    if isinstance(value, float):
        if not (round_floats or value.is_integer()):
            raise _EventError(f"field '{name}' must be an integer")
        value = round(value)
    return value


def _as_name(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _EventError(f"field '{name}' must be a string")
    return value


@dataclass
class _SeriesSummary:
    """Min, max and latest value of one (task, metric, variant) within a batch."""

    metric: str
    variant: str
    min: tuple[float, int | None]
    max: tuple[float, int | None]
    last: tuple[float, int | None]
    last_key: tuple[int, int]

    def add(self, value: float, iteration: int | None, key: tuple[int, int]) -> None:
        if value < self.min[0]:
            self.min = (value, iteration)
        if value > self.max[0]:
            self.max = (value, iteration)
        if key >= self.last_key:
            self.last, self.last_key = (value, iteration), key

    def scalar_values(self) -> list[ScalarValue]:
        # Min, then max, then last: update_task_metrics folds them in order, so the last one given
        # becomes ``value`` and min/max keep their own iterations.
        return [
            ScalarValue(self.metric, self.variant, value, iteration)
            for value, iteration in (self.min, self.max, self.last)
        ]


class _Batch:
    """Rows and metric summaries of one ingest request, built before the transaction opens."""

    def __init__(self, store: Store, worker: str | None) -> None:
        self.store = store
        self.worker = worker
        self.now = int(time.time() * 1000)
        self.event_rows: list[tuple[Any, ...]] = []
        self.log_rows: list[tuple[Any, ...]] = []
        self.series: dict[tuple[str, str, str], _SeriesSummary] = {}
        self.last_iteration: dict[str, int] = {}
        self.errors: Counter[str] = Counter()
        self._owners: dict[tuple[str, bool, bool], str | None] = {}

    def _check_owner(self, task_id: str, model_event: bool, allow_locked: bool) -> None:
        key = (task_id, model_event, allow_locked)
        if key not in self._owners:
            doc = self.store.get("models" if model_event else "tasks", task_id)
            if doc is None:
                self._owners[key] = "Invalid model id" if model_event else "Invalid task id"
            elif not model_event and doc.get("status") == "published" and not allow_locked:
                self._owners[key] = "Task is published (locked): events refused"
            else:
                self._owners[key] = None
        problem = self._owners[key]
        if problem:
            raise _EventError(problem)

    def add(self, event: Any, position: int) -> None:
        try:
            if not self._add_plain_scalar(event, position):
                self._add(event, position)
        except _EventError as exc:
            self.errors[str(exc)] += 1

    def _add_plain_scalar(self, event: Any, position: int) -> bool:
        """Fast path for the bulk of every batch: a task scalar whose fields have their usual types.

        Returns False (nothing done) for anything else, which :meth:`_add` then handles in full.
        """
        if type(event) is not dict or event.get("type") != SCALAR:
            return False
        task_id, metric, variant = event.get("task"), event.get("metric"), event.get("variant")
        iteration, value, timestamp = event.get("iter"), event.get("value"), event.get("timestamp")
        if not (
            type(task_id) is str
            and type(metric) is str
            and type(variant) is str
            and type(iteration) is int
            and type(value) is float
            and type(timestamp) is int
            and task_id
            and value == value  # not NaN
            and iteration != SINGLE_VALUE_ITERATION
            and not event.get("model_event")
            and not event.get("allow_locked")
        ):
            return False
        if self._owners.get((task_id, False, False), "") is not None:
            self._check_owner(task_id, False, False)  # first event of this task: look it up (or raise)
        self.event_rows.append((task_id, 0, SCALAR, metric, variant, iteration, value, timestamp, None))
        summary = self.series.get((task_id, metric, variant))
        if summary is None:
            point = (value, iteration)
            self.series[(task_id, metric, variant)] = _SeriesSummary(
                metric, variant, point, point, point, (iteration, position)
            )
        else:
            summary.add(value, iteration, (iteration, position))
        if iteration > self.last_iteration.get(task_id, SINGLE_VALUE_ITERATION):
            self.last_iteration[task_id] = iteration
        return True

    def _add(self, event: Any, position: int) -> None:
        if not isinstance(event, dict):
            raise _EventError("event must be a JSON object")
        etype = event.get("type")
        if not isinstance(etype, str) or etype not in EVENT_TYPES:  # a list/dict is unhashable
            raise _EventError(f"unknown event type {etype!r}")
        task_id = event.get("task")
        if not isinstance(task_id, str) or not task_id:
            raise _EventError("field 'task' is required")
        model_event = bool(event.get("model_event", False))
        self._check_owner(task_id, model_event, bool(event.get("allow_locked", False)))
        timestamp = _as_int(event, "timestamp", self.now, round_floats=True)
        if etype == LOG:
            level = event.get("level") or "info"
            msg = event.get("msg")
            if msg is not None and not isinstance(msg, str):
                msg = json.dumps(msg)
            worker = event.get("worker") or self.worker
            self.log_rows.append((task_id, int(model_event), timestamp, str(level), worker, msg))
            return
        metric, variant = _as_name(event, "metric"), _as_name(event, "variant")
        iteration = _as_int(event, "iter", 0)
        if etype == SCALAR:
            value = event.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _EventError("scalar event needs a numeric 'value'")
            value = float(value)
            finite = not math.isnan(value)
            stored = value if finite else None
            self.event_rows.append(
                (task_id, int(model_event), etype, metric, variant, iteration, stored, timestamp, None)
            )
            if finite and not model_event:
                single = iteration == SINGLE_VALUE_ITERATION
                self._summarise(task_id, metric, variant, value, None if single else iteration, position)
                if not single:
                    self._raise_iteration(task_id, iteration)
            return
        doc = {k: v for k, v in event.items() if k not in _COLUMN_FIELDS and k not in _REQUEST_FIELDS}
        if "worker" not in doc and self.worker:
            doc["worker"] = self.worker
        self.event_rows.append(
            (task_id, int(model_event), etype, metric, variant, iteration, None, timestamp, json.dumps(doc))
        )
        if not model_event:
            self._raise_iteration(task_id, iteration)

    def _summarise(
        self, task_id: str, metric: str, variant: str, value: float, iteration: int | None, position: int
    ) -> None:
        key = (iteration if iteration is not None else SINGLE_VALUE_ITERATION, position)
        summary = self.series.get((task_id, metric, variant))
        if summary is None:
            point = (value, iteration)
            self.series[(task_id, metric, variant)] = _SeriesSummary(
                metric, variant, point, point, point, key
            )
        else:
            summary.add(value, iteration, key)

    def _raise_iteration(self, task_id: str, iteration: int) -> None:
        if iteration > self.last_iteration.get(task_id, SINGLE_VALUE_ITERATION):
            self.last_iteration[task_id] = iteration

    def _drop_vanished_owners(self) -> None:
        """Inside the transaction: drop rows of owners deleted since validation (no orphan events)."""
        owners = {(row[0], bool(row[1])) for row in self.event_rows} | {
            (r[0], bool(r[1])) for r in self.log_rows
        }
        gone = {key for key in owners if self.store.get("models" if key[1] else "tasks", key[0]) is None}
        if not gone:
            return
        for rows in (self.event_rows, self.log_rows):
            kept = [row for row in rows if (row[0], bool(row[1])) not in gone]
            self.errors["Invalid task id"] += len(rows) - len(kept)
            rows[:] = kept
        for task_id, _ in gone:
            self.last_iteration.pop(task_id, None)
        self.series = {key: value for key, value in self.series.items() if (key[0], False) not in gone}

    def write(self) -> IngestResult:
        """Store everything in one transaction (returns after COMMIT)."""
        if self.event_rows or self.log_rows:
            with self.store.transaction() as tx:
                self._drop_vanished_owners()
                if self.event_rows:
                    tx.conn.exec_driver_sql(
                        f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        self.event_rows,
                    )
                if self.log_rows:
                    tx.conn.exec_driver_sql(
                        "INSERT INTO event_logs (task, model_event, timestamp, level, worker, msg)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        self.log_rows,
                    )
                per_task: dict[str, list[ScalarValue]] = defaultdict(list)
                for (task_id, _, _), summary in self.series.items():
                    per_task[task_id].extend(summary.scalar_values())
                for task_id in set(per_task) | set(self.last_iteration):
                    tx.update_task_metrics(
                        task_id, per_task.get(task_id, []), self.last_iteration.get(task_id)
                    )
        added = len(self.event_rows) + len(self.log_rows)
        return IngestResult(added=added, errors=sum(self.errors.values()), errors_info=dict(self.errors))


def ingest_events(store: Store, events: Iterable[Any], worker: str | None = None) -> IngestResult:
    """Validate and store ``events`` atomically; update the tasks' ``last_metrics``.

    Args:
        store: the server's store.
        events: decoded event objects (``parse_json_lines``).
        worker: the reporting worker (``X-ClearML-Worker``), used when an event names none.
    """
    batch = _Batch(store, worker)
    for position, event in enumerate(events):
        batch.add(event, position)
    return batch.write()


@endpoint("events.add_batch", raw_body=True)
def add_batch(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Store a json-lines batch of events."""
    events = parse_json_lines(ctx.raw_body)
    if not events:
        raise bad_request("Batch request contains no items", 11)
    return ingest_events(ctx.store, events, ctx.worker).as_data()


@endpoint("events.add")
def add(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Store one event."""
    return ingest_events(ctx.store, [body], ctx.worker).as_data()


# --- reads: helpers -----------------------------------------------------------------------------------
def _encode_scroll(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _decode_scroll(scroll_id: str | None, kind: str, task: str) -> dict[str, Any] | None:
    if not scroll_id:
        return None
    try:
        state = json.loads(base64.urlsafe_b64decode(scroll_id.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_request(f"Invalid scroll id {scroll_id!r}") from None
    if not isinstance(state, dict) or state.get("k") != kind or state.get("t") != task:
        raise bad_request(f"Invalid scroll id {scroll_id!r} for this request")
    return state


def _require_owner(ctx: RequestContext, task_id: str, model_events: bool) -> dict[str, Any]:
    doc = ctx.store.get("models" if model_events else "tasks", task_id)
    if doc is None:
        if model_events:
            raise not_found("model", 201, task_id)
        raise not_found("task", SUBCODE_INVALID_TASK_ID, task_id)
    return doc


def _positive(body: dict[str, Any], name: str, default: int) -> int:
    value = opt_int(body, name, default)
    if value is None or value < 1:
        raise validation_error(f"field '{name}' must be a positive integer")
    return value


def _batch_size(body: dict[str, Any], default: int = DEFAULT_BATCH_SIZE) -> int:
    return min(_positive(body, "batch_size", default), MAX_BATCH_SIZE)


def _iso(timestamp_ms: int) -> str:
    return (
        datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _event_dict(row: Sequence[Any]) -> dict[str, Any]:
    task, model_event, etype, metric, variant, iteration, value, timestamp, doc = row
    event: dict[str, Any] = {
        "timestamp": timestamp,
        "type": etype,
        "task": task,
        "iter": iteration,
        "metric": metric,
        "variant": variant,
        "@timestamp": _iso(timestamp),
    }
    if etype == SCALAR:
        event["value"] = value
    if model_event:
        event["model_event"] = True
    if doc:
        event.update(json.loads(doc))
    return event


_LOG_COLUMNS = "seq, task, model_event, timestamp, level, worker, msg"


def _log_dict(row: Sequence[Any]) -> dict[str, Any]:
    _, task, model_event, timestamp, level, worker, msg = row
    event = {
        "timestamp": timestamp,
        "type": LOG,
        "task": task,
        "level": level,
        "worker": worker,
        "msg": msg,
        "@timestamp": _iso(timestamp),
    }
    if model_event:
        event["model_event"] = True
    return event


def _metric_filter(body: dict[str, Any]) -> dict[str, set[str] | None] | None:
    """``metrics: [{metric, variants}]`` as {metric: variants-or-None}; ``None`` when absent."""
    items = opt_list(body, "metrics")
    if not items:
        return None
    wanted: dict[str, set[str] | None] = {}
    for item in items:
        if not isinstance(item, dict):
            raise validation_error("field 'metrics' must be an array of {metric, variants}")
        metric = item.get("metric")
        if metric is None:
            return None  # "any metric"
        variants = item.get("variants")
        wanted[str(metric)] = set(variants) if variants else None
    return wanted


def _wanted(filter_: dict[str, set[str] | None] | None, metric: str, variant: str) -> bool:
    if filter_ is None:
        return True
    if metric not in filter_:
        return False
    variants = filter_[metric]
    return variants is None or variant in variants


# --- reads: scalars -----------------------------------------------------------------------------------
def _histogram(
    store: Store,
    task_id: str,
    key: str,
    samples: int,
    model_events: bool,
    filter_: dict[str, set[str] | None] | None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{metric: {variant: {name, x, y}}}``; a series longer than ``samples`` is averaged in SQL.

    The buckets have equal width along x (iteration or timestamp), start at the series' first x
    and are named by it; an all-NaN bucket has ``y`` null. Single values are left out.
    """
    column = "iter" if key == "iter" else "timestamp"
    where = "task = ? AND model_event = ? AND type = ? AND iter != ?"
    params: tuple[Any, ...] = (task_id, int(model_events), SCALAR, SINGLE_VALUE_ITERATION)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    with store.reading() as conn:
        series = conn.exec_driver_sql(
            f"SELECT metric, variant, COUNT(*), MIN({column}), MAX({column}) FROM events WHERE {where}"
            " GROUP BY metric, variant ORDER BY metric, variant",
            params,
        ).fetchall()
        for metric, variant, count, low, high in series:
            if not _wanted(filter_, metric, variant):
                continue
            one = (*params, metric, variant)
            if count <= samples:
                rows = conn.exec_driver_sql(
                    f"SELECT {column}, value FROM events WHERE {where} AND metric = ? AND variant = ?"
                    f" ORDER BY {column}, iter",
                    one,
                ).fetchall()
            else:
                width = max(1, math.ceil((high - low + 1) / samples))
                rows = conn.exec_driver_sql(
                    f"SELECT ? + (({column} - ?) / ?) * ? AS bucket, AVG(value) FROM events"
                    f" WHERE {where} AND metric = ? AND variant = ? GROUP BY bucket ORDER BY bucket",
                    (low, low, width, width, *one),
                ).fetchall()
            xs = [row[0] for row in rows]
            if key == "iso_time":
                xs = [_iso(int(x)) for x in xs]
            result.setdefault(metric, {})[variant] = {"name": variant, "x": xs, "y": [row[1] for row in rows]}
    return result


def _histogram_args(body: dict[str, Any]) -> tuple[str, int]:
    key = opt_str(body, "key", "iter") or "iter"
    if key not in ("iter", "timestamp", "iso_time"):
        raise validation_error("field 'key' must be one of iter, timestamp, iso_time")
    return key, _positive(body, "samples", DEFAULT_HISTOGRAM_SAMPLES)


@endpoint("events.scalar_metrics_iter_histogram")
def scalar_metrics_iter_histogram(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Scalars of a task as ``{metric: {variant: {name, x, y}}}``, averaged into ``samples`` buckets."""
    task_id = require_str(body, "task")
    model_events = opt_bool(body, "model_events")
    _require_owner(ctx, task_id, model_events)
    key, samples = _histogram_args(body)
    return _histogram(ctx.store, task_id, key, samples, model_events, _metric_filter(body))


@endpoint("events.multi_task_scalar_metrics_iter_histogram")
def multi_task_scalar_metrics_iter_histogram(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Scalars of several tasks: ``{metrics: {metric: {variant: {task_id: {name, x, y}}}}}``."""
    task_ids = str_list(body, "tasks", required=True)
    model_events = opt_bool(body, "model_events")
    key, samples = _histogram_args(body)
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for task_id in task_ids:
        owner = _require_owner(ctx, task_id, model_events)
        for metric, variants in _histogram(ctx.store, task_id, key, samples, model_events, None).items():
            for variant, curve in variants.items():
                curve = dict(curve, name=owner.get("name", task_id))
                metrics.setdefault(metric, {}).setdefault(variant, {})[task_id] = curve
    return {"metrics": metrics}


@endpoint("events.get_task_latest_scalar_values")
def get_task_latest_scalar_values(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Last value and mean of the last 100 values of every scalar series of a task."""
    task_id = require_str(body, "task")
    task = _require_owner(ctx, task_id, False)
    with ctx.store.reading() as conn:
        rows = conn.exec_driver_sql(
            "SELECT metric, variant, MAX(CASE WHEN rank = 1 THEN value END), AVG(value), MAX(timestamp)"
            " FROM (SELECT metric, variant, value, timestamp, ROW_NUMBER() OVER"
            "  (PARTITION BY metric, variant ORDER BY iter DESC) AS rank"
            "  FROM events WHERE task = ? AND model_event = 0 AND type = ? AND iter != ?)"
            " WHERE rank <= 100 GROUP BY metric, variant ORDER BY metric, variant",
            (task_id, SCALAR, SINGLE_VALUE_ITERATION),
        ).fetchall()
    metrics: dict[str, list[dict[str, Any]]] = {}
    for metric, variant, last, mean, _ in rows:
        metrics.setdefault(metric, []).append({"name": variant, "last_value": last, "last_100_value": mean})
    return {
        "metrics": [{"name": name, "variants": variants} for name, variants in metrics.items()],
        "last_iter": task.get("last_iteration") or 0,
        "name": task.get("name"),
        "status": task.get("status"),
        "last_timestamp": max((row[4] for row in rows), default=0),
    }


@endpoint("events.get_task_single_value_metrics")
def get_task_single_value_metrics(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Values reported with ``Logger.report_single_value``, per task."""
    task_ids = str_list(body, "tasks", required=True)
    model_events = opt_bool(body, "model_events")
    result = []
    with ctx.store.reading() as conn:
        for task_id in task_ids:
            rows = conn.exec_driver_sql(
                "SELECT metric, variant, value, timestamp FROM events WHERE task = ? AND model_event = ?"
                " AND type = ? AND iter = ? ORDER BY metric, variant",
                (task_id, int(model_events), SCALAR, SINGLE_VALUE_ITERATION),
            ).fetchall()
            values = [
                {"metric": m, "variant": v, "value": value, "timestamp": ts} for m, v, value, ts in rows
            ]
            result.append({"task": task_id, "values": values})
    return {"tasks": result}


@endpoint("events.get_scalar_metric_data")
def get_scalar_metric_data(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Scalar events of one metric of a task (paged with ``scroll_id`` unless ``no_scroll``)."""
    task_id = require_str(body, "task")
    metric = require_str(body, "metric")
    model_events = opt_bool(body, "model_events")
    _require_owner(ctx, task_id, model_events)
    state = _decode_scroll(opt_str(body, "scroll_id"), "metric_data", task_id) or {}
    limit = -1 if opt_bool(body, "no_scroll") else MAX_BATCH_SIZE
    where = "task = ? AND model_event = ? AND type = ? AND metric = ?"
    params: tuple[Any, ...] = (task_id, int(model_events), SCALAR, metric)
    after = state.get("after")  # (variant, iter) of the last event returned
    with ctx.store.reading() as conn:
        total = conn.exec_driver_sql(f"SELECT COUNT(*) FROM events WHERE {where}", params).scalar_one()
        if after is not None:
            if not isinstance(after, list) or len(after) != 2:
                raise bad_request("Invalid scroll id for this request")
            where, params = where + " AND (variant, iter) > (?, ?)", (*params, *after)
        rows = conn.exec_driver_sql(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where} ORDER BY variant, iter LIMIT ?",
            (*params, limit),
        ).fetchall()
    after = [rows[-1][4], rows[-1][5]] if rows else after
    return {
        "events": [_event_dict(row) for row in rows],
        "returned": len(rows),
        "total": total,
        "scroll_id": _encode_scroll({"k": "metric_data", "t": task_id, "after": after}),
    }


@endpoint("events.get_scalar_metrics_and_variants")
def get_scalar_metrics_and_variants(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """``{metrics: {metric: {variant: {name: variant}}}}`` of a task's scalars."""
    task_id = require_str(body, "task")
    model_events = opt_bool(body, "model_events")
    _require_owner(ctx, task_id, model_events)
    metrics: dict[str, dict[str, dict[str, str]]] = {}
    with ctx.store.reading() as conn:
        rows = conn.exec_driver_sql(
            "SELECT DISTINCT metric, variant FROM events WHERE task = ? AND model_event = ? AND type = ?",
            (task_id, int(model_events), SCALAR),
        )
        for metric, variant in rows:
            metrics.setdefault(metric, {})[variant] = {"name": variant}
    return {"metrics": metrics}


@endpoint("events.get_task_metrics")
def get_task_metrics(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Metric names per task (optionally of one event type)."""
    task_ids = str_list(body, "tasks", required=True)
    event_type = opt_str(body, "event_type")
    if event_type is not None and event_type not in EVENT_TYPES - {LOG}:
        raise validation_error(f"field 'event_type' must be one of {sorted(EVENT_TYPES - {LOG})}")
    model_events = opt_bool(body, "model_events")
    result = []
    with ctx.store.reading() as conn:
        for task_id in task_ids:
            sql = "SELECT DISTINCT metric FROM events WHERE task = ? AND model_event = ?"
            params: tuple[Any, ...] = (task_id, int(model_events))
            if event_type:
                sql, params = sql + " AND type = ?", (*params, event_type)
            names = sorted(row[0] for row in conn.exec_driver_sql(sql, params))
            result.append({"task": task_id, "metrics": names})
    return {"metrics": result}


# --- reads: all events, logs --------------------------------------------------------------------------
@endpoint("events.get_task_events")
def get_task_events(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """A task's events of one type (or all: events, then logs), scrolled with ``scroll_id``.

    Events come in key order (type, metric, variant, iteration), console lines in arrival order.
    """
    task_id = require_str(body, "task")
    model_events = opt_bool(body, "model_events")
    _require_owner(ctx, task_id, model_events)
    event_type = opt_str(body, "event_type")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise validation_error(f"field 'event_type' must be one of {sorted(EVENT_TYPES)}")
    order = opt_str(body, "order", "asc") or "asc"
    if order not in ("asc", "desc"):
        raise validation_error("field 'order' must be asc or desc")
    size = _batch_size(body)
    state = _decode_scroll(opt_str(body, "scroll_id"), "task_events", task_id) or {}
    # Which tables to read, in reading order; the cursor is (table index, key of the last row).
    tables = (
        ["events", "event_logs"] if event_type is None else ["event_logs" if event_type == LOG else "events"]
    )
    if order == "desc":
        tables.reverse()
    phase, after = int(state.get("phase", 0)), state.get("after")
    events: list[dict[str, Any]] = []
    total = 0
    with ctx.store.reading() as conn:
        for index, table in enumerate(tables):
            where, params = "task = ? AND model_event = ?", [task_id, int(model_events)]
            if table == "events" and event_type is not None:
                where, params = where + " AND type = ?", [*params, event_type]
            total += conn.exec_driver_sql(
                f"SELECT COUNT(*) FROM {table} WHERE {where}", tuple(params)
            ).scalar_one()
            if index < phase or len(events) >= size:
                continue
            is_log = table == "event_logs"
            key = ["seq"] if is_log else ["type", "metric", "variant", "iter"]
            if index == phase and after is not None:
                if not isinstance(after, list) or len(after) != len(key):
                    raise bad_request("Invalid scroll id for this request")
                marks = ", ".join("?" * len(key))
                where += f" AND ({', '.join(key)}) {'>' if order == 'asc' else '<'} ({marks})"
                params.extend(after)
            columns, to_dict = (_LOG_COLUMNS, _log_dict) if is_log else (_EVENT_COLUMNS, _event_dict)
            rows = conn.exec_driver_sql(
                f"SELECT {columns} FROM {table} WHERE {where}"
                f" ORDER BY {', '.join(f'{k} {order.upper()}' for k in key)} LIMIT ?",
                (*params, size - len(events)),
            ).fetchall()
            events.extend(to_dict(row) for row in rows)
            if rows:
                phase, after = index, [rows[-1][0]] if is_log else list(rows[-1][2:6])
            if len(events) < size:  # this table is exhausted: the next one starts from its beginning
                phase, after = index + 1, None
    scroll = _encode_scroll({"k": "task_events", "t": task_id, "phase": phase, "after": after})
    return {"events": events, "returned": len(events), "total": total, "scroll_id": scroll}


@endpoint("events.get_task_log")
def get_task_log(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Console lines around ``from_timestamp`` (default: the newest), ``batch_size`` of them.

    ``navigate_earlier`` (default true) reads backwards from ``from_timestamp``; ``order`` (default
    desc) is the order of the returned page, as in clearml-server.
    """
    task_id = require_str(body, "task")
    _require_owner(ctx, task_id, False)
    size = _batch_size(body)
    earlier = opt_bool(body, "navigate_earlier", True)
    order = opt_str(body, "order", "desc") or "desc"
    if order not in ("asc", "desc"):
        raise validation_error("field 'order' must be asc or desc")
    from_ts = body.get("from_timestamp")
    if from_ts is not None and (isinstance(from_ts, bool) or not isinstance(from_ts, int | float)):
        raise validation_error("field 'from_timestamp' must be a number")
    where, params = "task = ?", [task_id]
    if from_ts is not None:
        where += " AND timestamp < ?" if earlier else " AND timestamp > ?"
        params.append(from_ts)
    direction = "DESC" if earlier else "ASC"
    with ctx.store.reading() as conn:
        total = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM event_logs WHERE task = ?", (task_id,)
        ).scalar_one()
        rows = conn.exec_driver_sql(
            f"SELECT {_LOG_COLUMNS} FROM event_logs WHERE {where}"
            f" ORDER BY timestamp {direction}, seq {direction} LIMIT ?",
            (*params, size),
        ).fetchall()
    events = [_log_dict(row) for row in rows]
    if (earlier and order == "asc") or (not earlier and order == "desc"):
        events.reverse()
    return {"events": events, "returned": len(events), "total": total}


@endpoint("events.clear_task_log")
def clear_task_log(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Delete a task's console lines (those older than ``threshold_sec`` if given)."""
    task_id = require_str(body, "task")
    _require_owner(ctx, task_id, False)
    threshold = opt_int(body, "threshold_sec")
    where, params = "task = ?", [task_id]
    if threshold:
        where += " AND timestamp < ?"
        params.append(max(int((time.time() - threshold) * 1000), -(2**63)))  # SQLite: 64-bit
    with ctx.store.transaction() as tx:
        deleted = tx.conn.exec_driver_sql(f"DELETE FROM event_logs WHERE {where}", tuple(params)).rowcount
    return {"deleted": max(deleted, 0)}


@endpoint("events.delete_for_task")
def delete_for_task(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Delete every event of a task (refused for a published task unless ``allow_locked``)."""
    task_id = require_str(body, "task")
    task = _require_owner(ctx, task_id, False)
    if task.get("status") == "published" and not opt_bool(body, "allow_locked"):
        raise ApiError(400, 110, f"Task is published (locked): id={task_id}")
    with ctx.store.transaction() as tx:
        deleted = delete_task_events(tx, [task_id])
    return {"deleted": bool(deleted)}


@endpoint("events.delete_for_model")
def delete_for_model(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Delete every event reported for a model."""
    model_id = require_str(body, "model")
    _require_owner(ctx, model_id, True)
    with ctx.store.transaction() as tx:
        deleted = 0
        for table in ("events", "event_logs"):
            result = tx.conn.exec_driver_sql(
                f"DELETE FROM {table} WHERE task = ? AND model_event = 1", (model_id,)
            )
            deleted += max(result.rowcount, 0)
    return {"deleted": bool(deleted)}


# --- reads: plots, debug images -----------------------------------------------------------------------
def _latest_iterations_events(
    store: Store,
    task_id: str,
    etype: str,
    model_events: bool,
    iters: int,
    filter_: dict[str, set[str] | None] | None,
) -> list[dict[str, Any]]:
    """Events of ``etype`` at the ``iters`` latest iterations of each (metric, variant)."""
    result: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)
    with store.reading() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE task = ? AND model_event = ? AND type = ?"
            " ORDER BY metric, variant, iter DESC",
            (task_id, int(model_events), etype),
        )
        for row in rows:
            metric, variant, iteration = row[3], row[4], row[5]
            if not _wanted(filter_, metric, variant):
                continue
            kept = seen[(metric, variant)]
            if iteration not in kept:
                if len(kept) >= iters:
                    continue
                kept.append(iteration)
            result.append(_event_dict(row))
    return result


@endpoint("events.get_task_plots")
def get_task_plots(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Plots of the ``iters`` (default 1) latest iterations of each plot of a task."""
    task_id = require_str(body, "task")
    model_events = opt_bool(body, "model_events")
    _require_owner(ctx, task_id, model_events)
    iters = _positive(body, "iters", 1)
    plots = _latest_iterations_events(ctx.store, task_id, PLOT, model_events, iters, _metric_filter(body))
    if opt_bool(body, "no_scroll"):
        page, offset = plots, len(plots)
    else:
        state = _decode_scroll(opt_str(body, "scroll_id"), "plots", task_id) or {"offset": 0}
        start = int(state["offset"])
        page = plots[start : start + PLOTS_PAGE_SIZE]
        offset = start + len(page)
    return {
        "plots": page,
        "returned": len(page),
        "total": len(plots),
        "scroll_id": _encode_scroll({"k": "plots", "t": task_id, "offset": offset}),
    }


@endpoint("events.debug_images")
def debug_images(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Debug images grouped by task+metric and iteration, ``iters`` iterations per page.

    The first page holds the latest iterations (``navigate_earlier``, default) or the earliest;
    the returned ``scroll_id`` continues from there, and a page past the end has no iterations.
    """
    requested = opt_list(body, "metrics")
    if not requested:
        raise validation_error("field 'metrics' must name at least one {task, metric, variants}")
    iters = _positive(body, "iters", 1)
    earlier = opt_bool(body, "navigate_earlier", True)
    model_events = opt_bool(body, "model_events")
    scroll_id = opt_str(body, "scroll_id")
    state = (
        _decode_scroll(scroll_id, "debug_images", "*")
        if scroll_id and not opt_bool(body, "refresh")
        else None
    )
    bounds: dict[str, int] = dict((state or {}).get("bounds", {}))
    response_metrics = []
    with ctx.store.reading() as conn:
        for item in requested:
            if not isinstance(item, dict) or not isinstance(item.get("task"), str):
                raise validation_error("every item of 'metrics' needs a 'task'")
            task_id, metric = item["task"], item.get("metric")
            _require_owner(ctx, task_id, model_events)
            variants = set(item.get("variants") or [])
            key = f"{task_id}\n{metric or ''}"
            where, params = "task = ? AND model_event = ? AND type = ?", [task_id, int(model_events), IMAGE]
            if metric:
                where, params = where + " AND metric = ?", [*params, metric]
            if key in bounds:
                where, params = (
                    where + (" AND iter < ?" if earlier else " AND iter > ?"),
                    [*params, bounds[key]],
                )
            direction = "DESC" if earlier else "ASC"
            rows = conn.exec_driver_sql(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where}"
                f" ORDER BY iter {direction}, metric, variant",
                tuple(params),
            )
            iterations: dict[int, list[dict[str, Any]]] = {}
            for row in rows:
                if variants and row[4] not in variants:
                    continue
                if row[5] not in iterations and len(iterations) >= iters:
                    break
                iterations.setdefault(row[5], []).append(_event_dict(row))
            if iterations:
                bounds[key] = list(iterations)[-1]
            response_metrics.append(
                {
                    "task": task_id,
                    "metric": metric,
                    "iterations": [{"iter": it, "events": evs} for it, evs in iterations.items()],
                }
            )
    scroll = _encode_scroll({"k": "debug_images", "t": "*", "bounds": bounds})
    return {"metrics": response_metrics, "scroll_id": scroll}
