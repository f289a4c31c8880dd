"""Ingest of ``events.add_batch`` / ``events.add``: decode, check each event, store in one transaction.

All events of one request are written in ONE transaction with ``executemany``, together with the
tasks' ``last_metrics`` / ``last_iteration``
(:meth:`~clearml_local.store.Transaction.update_task_metrics`) and the per-series counts of
``event_series``; the reply is sent after COMMIT, so an acknowledged event is durable.

What is refused, as clearml-server does:

* a malformed line fails the whole request (400 naming the line, nothing written);
* an event that names an unknown or published task, has an unknown type or no numeric ``value``
  is counted in ``errors`` / ``errors_info`` while the others are stored (200); when no event at
  all could be stored the request answers 400 (subcode 131, "events not added");
* an event whose ``iter`` is not a 64-bit integer or whose ``timestamp`` is not milliseconds since
  1970 (0 to :data:`~clearml_local.event_store.MAX_TIMESTAMP_MS`: a timestamp in microseconds or
  negative is refused) is counted the same way, the others are stored, and the request answers 400
  naming the refused events (clearml-server stores the rest too, then fails the request for an
  out-of-range iteration).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from clearml_local.api import ApiError, validation_error
from clearml_local.event_store import (
    ADD_TO_BLOCKS,
    BLOCK_SIZES,
    EVENT_COLUMNS,
    EVENT_TYPES,
    LOG,
    MAX_ITERATION,
    MAX_TIMESTAMP_MS,
    MIN_ITERATION,
    SCALAR,
    SERIES_KEY,
    SINGLE_VALUE_ITERATION,
    refresh_series,
)
from clearml_local.store import ScalarValue, Store, Transaction

#: clearml-server's ``errors_info`` key for an iteration beyond 64 bits.
ITERATION_RANGE_ERROR = f"Iteration number should not exceed {MAX_ITERATION}"
TIMESTAMP_RANGE_ERROR = f"Invalid timestamp: not milliseconds since 1970 (0 to {MAX_TIMESTAMP_MS})"
#: Refused events described in the 400 message (the rest are only counted).
_DESCRIBED = 5
#: Iterations per ``IN (...)`` lookup of points that may already be stored.
_LOOKUP_CHUNK = 500

#: A scalar series: (task, model_event, metric, variant).
SeriesKey = tuple[str, int, str, str]

# Fields of an event that describe the request, not the event (never stored).
_REQUEST_FIELDS = frozenset({"allow_locked", "method"})
# Fields kept in columns of the ``events`` table (the rest of a non-scalar event goes to ``doc``).
_COLUMN_FIELDS = frozenset({"task", "type", "metric", "variant", "iter", "value", "timestamp", "model_event"})


@dataclass
class IngestResult:
    """What ``events.add_batch`` answers: counts of stored and refused events, and why."""

    added: int
    errors: int
    errors_info: dict[str, int]
    #: Events refused for an invalid ``iter`` / ``timestamp``: "event N: why" (the first few).
    invalid: list[str] = field(default_factory=list)
    invalid_count: int = 0

    def as_data(self) -> dict[str, Any]:
        return {"added": self.added, "errors": self.errors, "errors_info": self.errors_info}

    def reply(self) -> dict[str, Any]:
        """The reply's ``data``, or the 400 the request answers (see the module's docstring)."""
        if self.errors and not self.added:
            reasons = "; ".join(f"{reason} ({count})" for reason, count in self.errors_info.items())
            raise ApiError(400, 131, f"Events not added: {reasons}")
        if self.invalid_count:
            more = self.invalid_count - len(self.invalid)
            described = "; ".join(self.invalid) + (f"; and {more} more" if more > 0 else "")
            raise validation_error(
                f"{self.invalid_count} event(s) refused, the other {self.added} stored: {described}"
            )
        return self.as_data()


class _EventError(Exception):
    """One event refused (counted in ``errors_info`` under its message)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        #: Set for an invalid field value: what the 400 says about this event.
        self.detail = detail


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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise validation_error(f"events body is not valid JSON: {exc}") from None
        if not isinstance(decoded, list):
            raise validation_error("events body must be json-lines or a JSON array")
        return decoded
    lines = [line for line in text.split(b"\n") if line.strip()]
    try:  # one C-level parse of the whole batch: several times faster than a loop
        return json.loads(b"[" + b",".join(lines) + b"]")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        pass
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise validation_error(f"events body line {number} is not valid JSON: {exc}") from None
    raise validation_error("events body is not valid json-lines")  # e.g. a line ending in a comma


def _checked_int(
    event: dict[str, Any], name: str, low: int, high: int, reason: str, *, round_floats: bool = False
) -> int | None:
    """Field ``name`` as an int in ``[low, high]`` (integral floats accepted, or any float rounded
    with ``round_floats``), None when absent."""
    value = event.get(name)
    if value is None:
        return None
    number = value
    if isinstance(value, float) and math.isfinite(value) and (round_floats or value.is_integer()):
        number = round(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise _EventError(reason, f"field '{name}' is {shown}: {reason}")
    return number


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
    #: The series' points in the batch (the same dict as ``_Batch.points`` holds for it).
    points: dict[int, tuple[int, float | None]]

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
        # Per scalar series (task, model_event, metric, variant): {iteration: (timestamp, value)}
        # of the batch's points (value None for NaN).
        self.points: defaultdict[SeriesKey, dict[int, tuple[int, float | None]]] = defaultdict(dict)
        self.last_iteration: dict[str, int] = {}
        self.errors: Counter[str] = Counter()
        self.invalid: list[str] = []
        self.invalid_count = 0
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
            if exc.detail is not None:
                self.invalid_count += 1
                if len(self.invalid) < _DESCRIBED:
                    self.invalid.append(f"event {position + 1}: {exc.detail}")

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
            and SINGLE_VALUE_ITERATION < iteration <= MAX_ITERATION
            and 0 <= timestamp <= MAX_TIMESTAMP_MS
            and not event.get("model_event")
            and not event.get("allow_locked")
        ):
            return False
        if self._owners.get((task_id, False, False), "") is not None:
            self._check_owner(task_id, False, False)  # first event of this task: look it up (or raise)
        self.event_rows.append((task_id, 0, SCALAR, metric, variant, iteration, value, timestamp, None))
        summary = self.series.get((task_id, metric, variant))
        if summary is None:
            point, points = (value, iteration), self.points[(task_id, 0, metric, variant)]
            summary = self.series[(task_id, metric, variant)] = _SeriesSummary(
                metric, variant, point, point, point, (iteration, position), points
            )
        else:
            summary.add(value, iteration, (iteration, position))
        summary.points[iteration] = (timestamp, value)
        if iteration > self.last_iteration.get(task_id, SINGLE_VALUE_ITERATION):
            self.last_iteration[task_id] = iteration
        return True

    def _add(self, event: Any, position: int) -> None:
        if not isinstance(event, dict):
            raise _EventError("event must be a JSON object")
        etype = event.get("type")
        if not isinstance(etype, str) or etype not in EVENT_TYPES:
            raise _EventError(f"unknown event type {etype!r}")
        task_id = event.get("task")
        if not isinstance(task_id, str) or not task_id:
            raise _EventError("field 'task' is required")
        model_event = bool(event.get("model_event", False))
        self._check_owner(task_id, model_event, bool(event.get("allow_locked", False)))
        timestamp = _checked_int(
            event, "timestamp", 0, MAX_TIMESTAMP_MS, TIMESTAMP_RANGE_ERROR, round_floats=True
        )
        timestamp = self.now if timestamp is None else timestamp
        if etype == LOG:
            level, worker, msg = (
                event.get("level") or "info",
                event.get("worker") or self.worker,
                event.get("msg"),
            )
            if msg is not None and not isinstance(msg, str):
                msg = json.dumps(msg)
            if not isinstance(level, str) or not (worker is None or isinstance(worker, str)):
                raise _EventError("fields 'level' and 'worker' of a log event must be strings")
            self.log_rows.append((task_id, int(model_event), timestamp, level, worker, msg))
            return
        metric, variant = _as_name(event, "metric"), _as_name(event, "variant")
        iteration = _checked_int(event, "iter", MIN_ITERATION, MAX_ITERATION, ITERATION_RANGE_ERROR) or 0
        if etype == SCALAR:
            self._add_scalar(event, position, (task_id, model_event, metric, variant), iteration, timestamp)
            return
        doc = {k: v for k, v in event.items() if k not in _COLUMN_FIELDS and k not in _REQUEST_FIELDS}
        if "worker" not in doc and self.worker:
            doc["worker"] = self.worker
        self.event_rows.append(
            (task_id, int(model_event), etype, metric, variant, iteration, None, timestamp, json.dumps(doc))
        )
        if not model_event:
            self._raise_iteration(task_id, iteration)

    def _add_scalar(
        self,
        event: dict[str, Any],
        position: int,
        key: tuple[str, bool, str, str],
        iteration: int,
        timestamp: int,
    ) -> None:
        task_id, model_event, metric, variant = key
        value = event.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _EventError("scalar event needs a numeric 'value'")
        try:
            value = float(value)
        except OverflowError:
            raise _EventError("field 'value' is beyond the range of a double") from None
        stored = None if math.isnan(value) else value
        row = (task_id, int(model_event), SCALAR, metric, variant, iteration, stored, timestamp, None)
        self.event_rows.append(row)
        single = iteration == SINGLE_VALUE_ITERATION
        if not single:
            self.points[(task_id, int(model_event), metric, variant)][iteration] = (timestamp, stored)
        if stored is not None and not model_event:
            self._summarise(task_id, metric, variant, value, None if single else iteration, position)
            if not single:
                self._raise_iteration(task_id, iteration)

    def _summarise(
        self, task_id: str, metric: str, variant: str, value: float, iteration: int | None, position: int
    ) -> None:
        key = (iteration if iteration is not None else SINGLE_VALUE_ITERATION, position)
        summary = self.series.get((task_id, metric, variant))
        if summary is None:
            point = (value, iteration)
            self.series[(task_id, metric, variant)] = _SeriesSummary(
                metric, variant, point, point, point, key, self.points[(task_id, 0, metric, variant)]
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
        self.points = defaultdict(
            dict, {key: value for key, value in self.points.items() if (key[0], bool(key[1])) not in gone}
        )

    def _count_series(self, tx: Transaction) -> list[SeriesKey]:
        """Before the INSERT: add the batch's new points to ``event_series`` and ``event_blocks``.

        A point beyond the stored iterations of its series is new; one within them may replace a
        stored point, which is looked up. Returns the series where points were replaced (recounted
        from their rows after the INSERT).
        """
        replaced = []
        blocks: list[tuple[Any, ...]] = []
        for key, points in self.points.items():
            if not points:  # a series with only single values in this batch
                continue
            row = tx.conn.exec_driver_sql(
                "SELECT points, min_iter, max_iter, min_timestamp, max_timestamp FROM event_series"
                f" WHERE {SERIES_KEY}",
                key,
            ).first()
            iterations, stamps = list(points), [stamp for stamp, _ in points.values()]
            if row is None:
                stats = (len(points), min(iterations), max(iterations), min(stamps), max(stamps))
            else:
                if self._replaces(tx, key, [i for i in iterations if row[1] <= i <= row[2]]):
                    replaced.append(key)
                    continue
                low_ts = min(stamps) if row[3] is None else min(row[3], *stamps)
                high_ts = max(stamps) if row[4] is None else max(row[4], *stamps)
                stats = (
                    row[0] + len(points),
                    min(row[1], *iterations),
                    max(row[2], *iterations),
                    low_ts,
                    high_ts,
                )
            tx.conn.exec_driver_sql(
                "INSERT OR REPLACE INTO event_series VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*key, *stats)
            )
            blocks.extend(_block_sums(key, points))
        if blocks:
            tx.conn.exec_driver_sql(ADD_TO_BLOCKS, blocks)
        return replaced

    @staticmethod
    def _replaces(tx: Transaction, key: SeriesKey, iterations: list[int]) -> bool:
        """Whether any of ``iterations`` is stored in series ``key`` (one range count first: batches
        that arrive out of order usually fill a gap)."""
        if not iterations:
            return False
        around = tx.conn.exec_driver_sql(
            f"SELECT 1 FROM events WHERE {SERIES_KEY} AND type = ? AND iter BETWEEN ? AND ? LIMIT 1",
            (*key, SCALAR, min(iterations), max(iterations)),
        ).first()
        if around is None:
            return False
        for start in range(0, len(iterations), _LOOKUP_CHUNK):
            chunk = iterations[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(chunk))
            found = tx.conn.exec_driver_sql(
                f"SELECT 1 FROM events WHERE {SERIES_KEY} AND type = ? AND iter IN ({marks}) LIMIT 1",
                (*key, SCALAR, *chunk),
            ).first()
            if found is not None:
                return True
        return False

    def write(self) -> IngestResult:
        """Store everything in one transaction (returns after COMMIT)."""
        if self.event_rows or self.log_rows:
            with self.store.transaction() as tx:
                self._drop_vanished_owners()
                replaced = self._count_series(tx)
                if self.event_rows:
                    tx.conn.exec_driver_sql(
                        f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        self.event_rows,
                    )
                for key in replaced:
                    refresh_series(tx, key)
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
        return IngestResult(
            added=len(self.event_rows) + len(self.log_rows),
            errors=sum(self.errors.values()),
            errors_info=dict(self.errors),
            invalid=self.invalid,
            invalid_count=self.invalid_count,
        )


def _block_sums(key: SeriesKey, points: dict[int, tuple[int, float | None]]) -> list[tuple[Any, ...]]:
    """``event_blocks`` rows of new points: per block size and block, points, values and their sum.

    The smallest blocks are summed from the points, each larger size from the size below it.
    """
    smallest = BLOCK_SIZES[0]
    sums: dict[int, list[Any]] = {}
    for iteration, (_, value) in points.items():
        block = sums.get(iteration // smallest)
        if block is None:
            block = sums[iteration // smallest] = [0, 0, 0.0]
        block[0] += 1
        if value is not None:
            block[1] += 1
            block[2] += value
    rows = [(*key, smallest, index, *block) for index, block in sums.items()]
    below = smallest
    for size in BLOCK_SIZES[1:]:
        larger: dict[int, list[Any]] = {}
        for index, (count, valued, total) in sums.items():
            block = larger.get(index * below // size)
            if block is None:
                larger[index * below // size] = [count, valued, total]
            else:
                block[0], block[1], block[2] = block[0] + count, block[1] + valued, block[2] + total
        rows.extend((*key, size, index, *block) for index, block in larger.items())
        sums, below = larger, size
    return rows


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
