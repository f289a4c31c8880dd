"""Storage of ``events.*`` in the server's SQLite file: tables, value ranges, rows as events, and
the downsampled scalar series every scalar chart reads (:func:`scalar_histogram`).

Tables
    ``events``: scalars, vectors, plots and debug images, one row each, unique per
    (task, model_event, type, metric, variant, iter): re-reporting the same point replaces it, as in
    clearml-server. Scalars keep only columns; other types keep their extra fields (``plot_str``,
    ``url``, ``values``...) as a JSON ``doc``. A WITHOUT ROWID table clustered on that key (one
    B-tree: about twice the insert speed and half the size of a rowid table with a unique index),
    so one series is one contiguous range of rows in iteration order.
    ``event_logs``: console lines, numbered in arrival order (``seq``).
    ``event_series``: per scalar series (single values left out) the number of points, first and
    last iteration, and first and last valid timestamp, kept exact by the ingest in the same
    transaction (:mod:`clearml_local.event_ingest`). A histogram reads it instead of scanning every
    point of the task to size its buckets.
    ``event_blocks``: per scalar series, sums of the points of every aligned block of
    :data:`BLOCK_SIZES` iterations (points, non-NaN values, their sum), also kept by the ingest. A
    histogram whose buckets span several blocks adds up blocks instead of points: its cost follows
    the number of blocks, not of points (4 to 256 times fewer rows).

Timestamps are milliseconds since 1970, ``0 <= t <= MAX_TIMESTAMP_MS`` (the last millisecond of
year 9999, what an ISO date can show); the ingest refuses others. Rows stored before that check
(or by anything else) may hold any value: reads never fail on them, they show ``@timestamp``
``null`` and are left out of time-axis histograms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from clearml_local.store import Store, Transaction

SCALAR = "training_stats_scalar"
VECTOR = "training_stats_vector"
IMAGE = "training_debug_image"
PLOT = "plot"
LOG = "log"
#: Every event type the server stores.
EVENT_TYPES: frozenset[str] = frozenset({SCALAR, VECTOR, IMAGE, PLOT, LOG})
#: The iteration ``Logger.report_single_value`` reports at.
SINGLE_VALUE_ITERATION = -(2**31)
#: Iterations are 64-bit signed integers (clearml-server refuses others, so does SQLite).
MIN_ITERATION, MAX_ITERATION = -(2**63), 2**63 - 1
#: The last millisecond an ISO date can show (9999-12-31T23:59:59.999Z).
MAX_TIMESTAMP_MS = 253_402_300_799_999

HistogramKey = Literal["iter", "timestamp", "iso_time"]
HISTOGRAM_KEYS: tuple[str, ...] = ("iter", "timestamp", "iso_time")
#: ``samples`` of a histogram: clearml-server's default and bounds (``HistogramRequestBase``).
DEFAULT_HISTOGRAM_SAMPLES = 2000
MAX_HISTOGRAM_SAMPLES = 6000

#: Iterations per block of ``event_blocks``, one level each (powers of two, ascending).
BLOCK_SIZES: tuple[int, ...] = (4, 16, 64, 256)
#: A series of up to this many points is bucketed from its points (clearml-server's width exactly).
POINTS_READ_LIMIT = 10_000

#: Columns of the ``events`` table, in the order rows are read and written.
EVENT_COLUMNS = "task, model_event, type, metric, variant, iter, value, timestamp, doc"
LOG_COLUMNS = "seq, task, model_event, timestamp, level, worker, msg"
#: The key of one scalar series in ``event_series`` (and the leading columns of ``events``).
SERIES_KEY = "task = ? AND model_event = ? AND metric = ? AND variant = ?"

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
#: ``event_series`` and the statement that fills it from ``events`` (a data dir made before it).
SERIES_TABLE = """CREATE TABLE event_series (
    task TEXT NOT NULL,
    model_event INTEGER NOT NULL,
    metric TEXT NOT NULL,
    variant TEXT NOT NULL,
    points INTEGER NOT NULL,
    min_iter INTEGER NOT NULL,
    max_iter INTEGER NOT NULL,
    min_timestamp INTEGER,
    max_timestamp INTEGER,
    PRIMARY KEY (task, model_event, metric, variant)
) WITHOUT ROWID"""
BLOCKS_TABLE = """CREATE TABLE event_blocks (
    task TEXT NOT NULL,
    model_event INTEGER NOT NULL,
    metric TEXT NOT NULL,
    variant TEXT NOT NULL,
    size INTEGER NOT NULL,
    block INTEGER NOT NULL,
    points INTEGER NOT NULL,
    valued INTEGER NOT NULL,
    total REAL NOT NULL,
    PRIMARY KEY (task, model_event, metric, variant, size, block)
) WITHOUT ROWID"""
#: Adds ``(task, model_event, metric, variant, size, block, points, valued, total)`` rows.
ADD_TO_BLOCKS = (
    "INSERT INTO event_blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (task, model_event, metric, variant, size, block) DO UPDATE SET"
    " points = points + excluded.points, valued = valued + excluded.valued, total = total + excluded.total"
)
_VALID_TIME = f"timestamp BETWEEN 0 AND {MAX_TIMESTAMP_MS}"
_SERIES_STATS = (
    "COUNT(*), MIN(iter), MAX(iter),"
    f" MIN(CASE WHEN {_VALID_TIME} THEN timestamp END), MAX(CASE WHEN {_VALID_TIME} THEN timestamp END)"
)
_FILL_SERIES = (
    f"INSERT INTO event_series SELECT task, model_event, metric, variant, {_SERIES_STATS}"
    f" FROM events WHERE type = '{SCALAR}' AND iter != {SINGLE_VALUE_ITERATION}"
    " GROUP BY task, model_event, metric, variant"
)


def _fill_blocks(size: int, where: str = "") -> str:
    """SQL that adds the ``size`` blocks of the scalars matching ``where`` (floor division)."""
    block = f"(iter - ((iter % {size}) + {size}) % {size}) / {size}"
    return (
        f"INSERT INTO event_blocks SELECT task, model_event, metric, variant, {size}, {block} AS block,"
        " COUNT(*), COUNT(value), COALESCE(SUM(value), 0) FROM events"
        f" WHERE type = '{SCALAR}' AND iter != {SINGLE_VALUE_ITERATION}{where}"
        " GROUP BY task, model_event, metric, variant, block"
    )


def init_store(store: Store) -> None:
    """Create the event tables (idempotent); the app calls it once at start-up."""
    store.ensure_schema(SCHEMA)
    with store.transaction() as tx:
        exists = tx.conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_series'"
        ).first()
        if exists is None:  # new data dir, or one from before these tables: fill them once
            tx.conn.exec_driver_sql("DROP TABLE IF EXISTS event_blocks")
            tx.conn.exec_driver_sql(SERIES_TABLE)
            tx.conn.exec_driver_sql(BLOCKS_TABLE)
            tx.conn.exec_driver_sql(_FILL_SERIES)
            for size in BLOCK_SIZES:
                tx.conn.exec_driver_sql(_fill_blocks(size))


def delete_task_events(tx: Transaction, task_ids: Sequence[str], model_events: bool | None = None) -> int:
    """Delete every event of ``task_ids`` inside ``tx`` (``tasks.delete`` / ``tasks.reset``).

    Args:
        tx: the open transaction.
        task_ids: task (or model) ids.
        model_events: only model events (True), only task events (False), or both (None).

    Returns:
        The number of deleted events (logs included).
    """
    where, extra = "task = ?", ()
    if model_events is not None:
        where, extra = "task = ? AND model_event = ?", (int(model_events),)
    deleted = 0
    for task_id in task_ids:
        for table in ("events", "event_logs"):
            result = tx.conn.exec_driver_sql(f"DELETE FROM {table} WHERE {where}", (task_id, *extra))
            deleted += max(result.rowcount, 0)
        for table in ("event_series", "event_blocks"):
            tx.conn.exec_driver_sql(f"DELETE FROM {table} WHERE {where}", (task_id, *extra))
    return deleted


def refresh_series(tx: Transaction, series: tuple[str, int, str, str]) -> None:
    """Recount one scalar series and its blocks from its points (after points were replaced)."""
    row = tx.conn.exec_driver_sql(
        f"SELECT {_SERIES_STATS} FROM events WHERE {SERIES_KEY} AND type = ? AND iter != ?",
        (*series, SCALAR, SINGLE_VALUE_ITERATION),
    ).one()
    for table in ("event_series", "event_blocks"):
        tx.conn.exec_driver_sql(f"DELETE FROM {table} WHERE {SERIES_KEY}", series)
    for size in BLOCK_SIZES:
        tx.conn.exec_driver_sql(_fill_blocks(size, f" AND {SERIES_KEY}"), series)
    if row[0]:
        tx.conn.exec_driver_sql(
            "INSERT INTO event_series VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*series, *row)
        )


# --- rows as events -----------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_time(timestamp_ms: Any) -> str | None:
    """``2026-12-08T01:02:03.456Z`` for a valid timestamp, ``None`` for anything else stored."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int | float):
        return None
    if not (0 <= timestamp_ms <= MAX_TIMESTAMP_MS) or not math.isfinite(timestamp_ms):
        return None
    moment = _EPOCH + timedelta(milliseconds=int(timestamp_ms))  # exact (a float of seconds is not)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_dict(row: Sequence[Any]) -> dict[str, Any]:
    """An ``events`` row (:data:`EVENT_COLUMNS`) as the event the SDK reported."""
    task, model_event, etype, metric, variant, iteration, value, timestamp, doc = row
    event: dict[str, Any] = {
        "timestamp": timestamp,
        "type": etype,
        "task": task,
        "iter": iteration,
        "metric": metric,
        "variant": variant,
        "@timestamp": iso_time(timestamp),
    }
    if etype == SCALAR:
        event["value"] = value
    if model_event:
        event["model_event"] = True
    if doc:
        event.update(json.loads(doc))
    return event


def log_dict(row: Sequence[Any]) -> dict[str, Any]:
    """An ``event_logs`` row (:data:`LOG_COLUMNS`) as the console event the SDK reported."""
    _, task, model_event, timestamp, level, worker, msg = row
    event = {
        "timestamp": timestamp,
        "type": LOG,
        "task": task,
        "level": level,
        "worker": worker,
        "msg": msg,
        "@timestamp": iso_time(timestamp),
    }
    if model_event:
        event["model_event"] = True
    return event


# --- downsampled scalar series ------------------------------------------------------------------------
MetricFilter = dict[str, set[str] | None]


def wanted(filter_: MetricFilter | None, metric: str, variant: str) -> bool:
    """Whether ``metric``/``variant`` passes a ``{metric: variants-or-None}`` filter (None: all)."""
    if filter_ is None:
        return True
    if metric not in filter_:
        return False
    variants = filter_[metric]
    return variants is None or variant in variants


def bucket_width(points: int, low: int, high: int, samples: int) -> int:
    """clearml-server's interval: 1 below ``samples`` points, else ``ceil(range / samples)``."""
    if points < samples:
        return 1
    return max(1, math.ceil((high - low + 1) / samples))


def block_plan(points: int, low: int, high: int, samples: int) -> tuple[int, int, int] | None:
    """``(block size, bucket width, first bucket's start)`` to sum blocks, or None to read points.

    Blocks serve a series of more than :data:`POINTS_READ_LIMIT` points when clearml-server's width
    is at least two of the smallest blocks: the width is then rounded up to whole blocks of the
    largest size with at least two in it (so about 1.5 times wider at most: two thirds of the
    points clearml-server gives) and the buckets start at a block boundary, never more than
    ``samples`` of them. The blocks read are the largest that divide the width (one per bucket
    when the width is a block size).
    """
    exact = bucket_width(points, low, high, samples)
    if points <= POINTS_READ_LIMIT:
        return None
    sizes = [size for size in BLOCK_SIZES if 2 * size <= exact]
    if not sizes:
        return None
    rounded = -(-exact // sizes[-1]) * sizes[-1]
    for size in reversed(BLOCK_SIZES):
        if rounded % size:
            continue
        width, start = rounded, low // size * size
        while (high - start) // width >= samples:
            width += size
        if size == sizes[-1] or 2 * width <= 3 * exact:
            return size, width, start
    raise AssertionError("unreachable: the rounding size divides the width")


def scalar_histogram(
    store: Store,
    task_id: str,
    key: HistogramKey = "iter",
    samples: int = DEFAULT_HISTOGRAM_SAMPLES,
    model_events: bool = False,
    metrics: MetricFilter | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """A task's scalars, downsampled: ``{metric: {variant: {name, x, y}}}``, x ascending.

    Each series has at most ``samples`` points. As in clearml-server, a series of fewer points than
    ``samples`` comes whole (by time: points of the same millisecond averaged); a longer one is cut
    into buckets of ``ceil((last x - first x + 1) / samples)`` along x (iteration or timestamp), each
    point the mean of its bucket's values (``null`` when all are NaN) at the bucket's start. The
    buckets start at the series' first x (clearml-server's start at multiples of the width, which
    can give ``samples + 1`` points). By iteration, a bucket of several blocks is summed from
    ``event_blocks`` (see :func:`block_plan`). Single values and, by time, invalid timestamps are
    left out; ``iso_time`` gives x as ISO strings.

    Args:
        store: the server's store.
        task_id: the task (or model, with ``model_events``).
        key: the x axis: ``iter``, ``timestamp`` (ms) or ``iso_time``.
        samples: the most points per series (1 to :data:`MAX_HISTOGRAM_SAMPLES`).
        model_events: read a model's events.
        metrics: only these metrics/variants (see :func:`wanted`).
    """
    if key not in HISTOGRAM_KEYS:
        raise ValueError(f"key must be one of {HISTOGRAM_KEYS}, not {key!r}")
    if not 1 <= samples <= MAX_HISTOGRAM_SAMPLES:
        raise ValueError(f"samples must be between 1 and {MAX_HISTOGRAM_SAMPLES}, not {samples}")
    by_time = key != "iter"
    # x of a bucket: its start, in ms or (formatted by SQLite, as iso_time() does) as an ISO string
    x_sql = "? + bucket * ?"
    if key == "iso_time":
        x_sql = f"strftime('%Y-%m-%dT%H:%M:%fZ', ({x_sql}) / 1000.0, 'unixepoch')"
    column = "timestamp" if by_time else "iter"
    where = f"{SERIES_KEY} AND type = ? AND iter != ?" + (f" AND {_VALID_TIME}" if by_time else "")
    result: dict[str, dict[str, dict[str, Any]]] = {}
    with store.reading() as conn:
        series = conn.exec_driver_sql(
            "SELECT metric, variant, points, min_iter, max_iter, min_timestamp, max_timestamp"
            " FROM event_series WHERE task = ? AND model_event = ? ORDER BY metric, variant",
            (task_id, int(model_events)),
        ).fetchall()
        for metric, variant, points, min_iter, max_iter, min_ts, max_ts in series:
            low, high = (min_ts, max_ts) if by_time else (min_iter, max_iter)
            if low is None or not wanted(metrics, metric, variant):
                continue
            key_params = (task_id, int(model_events), metric, variant)
            params = (*key_params, SCALAR, SINGLE_VALUE_ITERATION)
            width = bucket_width(points, low, high, samples)
            plan = None if by_time else block_plan(points, low, high, samples)
            if plan is not None:
                size, width, start = plan
                if width == size:  # one block per bucket: read them in key order
                    rows = conn.exec_driver_sql(
                        "SELECT block - ?, valued, total FROM event_blocks"
                        f" WHERE {SERIES_KEY} AND size = ? ORDER BY block",
                        (start // size, *key_params, size),
                    ).fetchall()
                else:
                    rows = conn.exec_driver_sql(
                        "SELECT (block - ?) / ? AS bucket, SUM(valued), SUM(total) FROM event_blocks"
                        f" WHERE {SERIES_KEY} AND size = ? GROUP BY bucket ORDER BY bucket",
                        (start // size, width // size, *key_params, size),
                    ).fetchall()
                xs = [start + row[0] * width for row in rows]
                ys = [row[2] / row[1] if row[1] else None for row in rows]
            elif width == 1 and not by_time:  # every point, straight from the clustered key
                rows = conn.exec_driver_sql(
                    f"SELECT iter, value FROM events WHERE {where} ORDER BY iter", params
                ).fetchall()
                xs, ys = [row[0] for row in rows], [row[1] for row in rows]
            else:
                rows = conn.exec_driver_sql(
                    f"SELECT bucket, mean, {x_sql} FROM (SELECT CAST(({column} - ?) / ? AS INTEGER)"
                    f" AS bucket, AVG(value) AS mean FROM events WHERE {where} GROUP BY bucket)"
                    " ORDER BY bucket",
                    (low, width, low, width, *params),
                ).fetchall()
                xs, ys = [row[2] for row in rows], [row[1] for row in rows]
            result.setdefault(metric, {})[variant] = {"name": variant, "x": xs, "y": ys}
    return result
