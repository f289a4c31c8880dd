"""The ``events.*`` service: scalars, plots, debug images and console logs of tasks (and models).

This module registers the endpoint handlers; storage and the downsampled scalar series live in
:mod:`clearml_local.event_store`, the checks and writes of the ingest in
:mod:`clearml_local.event_ingest`.

Reads used by the SDK (``Task.get_reported_scalars``, ``get_all_reported_scalars``,
``get_reported_plots``, ``get_reported_console_output``, ``get_debug_samples``,
``get_reported_single_values``), HyperParameterOptimizer's objective
(``scalar_metrics_iter_histogram``) and PipelineController's multi-pipeline plots
(``get_task_plots``). Scroll ids are opaque base64 JSON cursors (keyset, never offsets into a
changing list, except for plots); a scroll id that does not decode to this request's cursor is a
400, as is any field of the wrong type or an integer beyond 64 bits.

Single values (``Logger.report_single_value``) are scalars at iteration ``-2**31``: they go to
``last_metrics`` and ``get_task_single_value_metrics`` but not into histograms or ``last_iteration``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import defaultdict
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
from clearml_local.event_ingest import ingest_events, parse_json_lines
from clearml_local.event_store import (
    DEFAULT_HISTOGRAM_SAMPLES,
    EVENT_COLUMNS,
    EVENT_TYPES,
    HISTOGRAM_KEYS,
    IMAGE,
    LOG,
    LOG_COLUMNS,
    MAX_HISTOGRAM_SAMPLES,
    MAX_ITERATION,
    MIN_ITERATION,
    PLOT,
    SCALAR,
    SINGLE_VALUE_ITERATION,
    MetricFilter,
    delete_task_events,
    event_dict,
    init_store,
    log_dict,
    scalar_histogram,
    wanted,
)
from clearml_local.store import Store

__all__ = ["SINGLE_VALUE_ITERATION", "delete_task_events", "init_store", "scalar_histogram"]

#: Default and maximal page size of the scrolling reads.
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10000
#: Plots per page of ``get_task_plots`` (unless ``no_scroll``).
PLOTS_PAGE_SIZE = 500
#: The largest ``threshold_sec`` of ``clear_task_log`` (about 30 years).
MAX_THRESHOLD_SEC = 10**9


# --- ingest -------------------------------------------------------------------------------------------
@endpoint("events.add_batch", raw_body=True)
def add_batch(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Store a json-lines batch of events (see :mod:`clearml_local.event_ingest` for what is refused)."""
    events = parse_json_lines(ctx.raw_body)
    if not events:
        raise bad_request("Batch request contains no items", 11)
    return ingest_events(ctx.store, events, ctx.worker).reply()


@endpoint("events.add")
def add(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Store one event."""
    return ingest_events(ctx.store, [body], ctx.worker).reply()


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


def _is_int64(value: Any) -> bool:
    return type(value) is int and MIN_ITERATION <= value <= MAX_ITERATION


def _scroll_int(state: dict[str, Any], name: str, default: int = 0) -> int:
    """A non-negative integer of a decoded scroll id (400 for anything else a client made up)."""
    value = state.get(name, default)
    if not _is_int64(value) or value < 0:
        raise bad_request("Invalid scroll id for this request")
    return value


def _scroll_after(state: dict[str, Any], types: tuple[type, ...]) -> list[Any] | None:
    """The cursor key of a decoded scroll id: None, or one value of each of ``types`` (ints of 64 bits)."""
    after = state.get("after")
    if after is None:
        return None
    valid = isinstance(after, list) and len(after) == len(types)
    if valid:
        valid = all(_is_int64(v) if t is int else type(v) is t for v, t in zip(after, types, strict=True))
    if not valid:
        raise bad_request("Invalid scroll id for this request")
    return after


def _require_owner(ctx: RequestContext, task_id: str, model_events: bool) -> dict[str, Any]:
    doc = ctx.store.get("models" if model_events else "tasks", task_id)
    if doc is None:
        if model_events:
            raise not_found("model", 201, task_id)
        raise not_found("task", SUBCODE_INVALID_TASK_ID, task_id)
    return doc


def _positive(body: dict[str, Any], name: str, default: int, maximum: int = MAX_ITERATION) -> int:
    value = opt_int(body, name, default)
    if value is None or not 1 <= value <= maximum:
        raise validation_error(f"field '{name}' must be an integer from 1 to {maximum}")
    return value


def _batch_size(body: dict[str, Any], default: int = DEFAULT_BATCH_SIZE) -> int:
    return min(_positive(body, "batch_size", default), MAX_BATCH_SIZE)


def _strings(item: dict[str, Any], name: str, where: str) -> list[str]:
    value = item.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise validation_error(f"field '{where}.{name}' must be an array of strings")
    return value


def _metric_filter(body: dict[str, Any]) -> MetricFilter | None:
    """``metrics: [{metric, variants}]`` as {metric: variants-or-None}; ``None`` when absent."""
    items = opt_list(body, "metrics")
    if not items:
        return None
    wanted_metrics: MetricFilter = {}
    any_metric = False
    for item in items:
        if not isinstance(item, dict):
            raise validation_error("field 'metrics' must be an array of {metric, variants}")
        metric = item.get("metric")
        if metric is not None and not isinstance(metric, str):
            raise validation_error("field 'metrics.metric' must be a string")
        variants = _strings(item, "variants", "metrics")
        if metric is None:
            any_metric = True  # "any metric"
        else:
            wanted_metrics[metric] = set(variants) if variants else None
    return None if any_metric else wanted_metrics


# --- reads: scalars -----------------------------------------------------------------------------------
def _histogram_args(body: dict[str, Any]) -> tuple[Any, int]:
    key = opt_str(body, "key", "iter") or "iter"
    if key not in HISTOGRAM_KEYS:
        raise validation_error(f"field 'key' must be one of {', '.join(HISTOGRAM_KEYS)}")
    return key, _positive(body, "samples", DEFAULT_HISTOGRAM_SAMPLES, MAX_HISTOGRAM_SAMPLES)


@endpoint("events.scalar_metrics_iter_histogram")
def scalar_metrics_iter_histogram(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Scalars of a task as ``{metric: {variant: {name, x, y}}}``, at most ``samples`` points each.

    ``samples``: 1 to 6000, default 2000; ``key``: ``iter`` (default), ``timestamp``, ``iso_time``
    (see :func:`~clearml_local.event_store.scalar_histogram`).
    """
    task_id = require_str(body, "task")
    model_events = opt_bool(body, "model_events")
    _require_owner(ctx, task_id, model_events)
    key, samples = _histogram_args(body)
    return scalar_histogram(ctx.store, task_id, key, samples, model_events, _metric_filter(body))


@endpoint("events.multi_task_scalar_metrics_iter_histogram")
def multi_task_scalar_metrics_iter_histogram(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Scalars of several tasks: ``{metrics: {metric: {variant: {task_id: {name, x, y}}}}}``."""
    task_ids = str_list(body, "tasks", required=True)
    model_events = opt_bool(body, "model_events")
    key, samples = _histogram_args(body)
    metrics_filter = _metric_filter(body)
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for task_id in task_ids:
        owner = _require_owner(ctx, task_id, model_events)
        histogram = scalar_histogram(ctx.store, task_id, key, samples, model_events, metrics_filter)
        for metric, variants in histogram.items():
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
    after = _scroll_after(state, (str, int))  # (variant, iter) of the last event returned
    with ctx.store.reading() as conn:
        total = conn.exec_driver_sql(f"SELECT COUNT(*) FROM events WHERE {where}", params).scalar_one()
        if after is not None:
            where, params = where + " AND (variant, iter) > (?, ?)", (*params, *after)
        rows = conn.exec_driver_sql(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY variant, iter LIMIT ?",
            (*params, limit),
        ).fetchall()
    after = [rows[-1][4], rows[-1][5]] if rows else after
    return {
        "events": [event_dict(row) for row in rows],
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
    phase = _scroll_int(state, "phase")
    if phase >= len(tables):
        raise bad_request("Invalid scroll id for this request")
    after_types = (int,) if tables[phase] == "event_logs" else (str, str, str, int)
    after = _scroll_after(state, after_types)
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
                marks = ", ".join("?" * len(key))
                where += f" AND ({', '.join(key)}) {'>' if order == 'asc' else '<'} ({marks})"
                params.extend(after)
            columns, to_dict = (LOG_COLUMNS, log_dict) if is_log else (EVENT_COLUMNS, event_dict)
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
    if from_ts is not None and not (_is_int64(from_ts) or (type(from_ts) is float and abs(from_ts) < 2**63)):
        raise validation_error("field 'from_timestamp' must be milliseconds since 1970 (a 64-bit number)")
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
            f"SELECT {LOG_COLUMNS} FROM event_logs WHERE {where}"
            f" ORDER BY timestamp {direction}, seq {direction} LIMIT ?",
            (*params, size),
        ).fetchall()
    events = [log_dict(row) for row in rows]
    if (earlier and order == "asc") or (not earlier and order == "desc"):
        events.reverse()
    return {"events": events, "returned": len(events), "total": total}


@endpoint("events.clear_task_log")
def clear_task_log(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Delete a task's console lines (those older than ``threshold_sec`` if given)."""
    task_id = require_str(body, "task")
    _require_owner(ctx, task_id, False)
    threshold = opt_int(body, "threshold_sec")
    if threshold is not None and not 0 <= threshold <= MAX_THRESHOLD_SEC:
        raise validation_error(f"field 'threshold_sec' must be from 0 to {MAX_THRESHOLD_SEC}")
    where, params = "task = ?", [task_id]
    if threshold:
        where += " AND timestamp < ?"
        params.append(int((time.time() - threshold) * 1000))
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
        deleted = delete_task_events(tx, [model_id], model_events=True)
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
            f"SELECT {EVENT_COLUMNS} FROM events WHERE task = ? AND model_event = ? AND type = ?"
            " ORDER BY metric, variant, iter DESC",
            (task_id, int(model_events), etype),
        )
        for row in rows:
            metric, variant, iteration = row[3], row[4], row[5]
            if not wanted(filter_, metric, variant):
                continue
            kept = seen[(metric, variant)]
            if iteration not in kept:
                if len(kept) >= iters:
                    continue
                kept.append(iteration)
            result.append(event_dict(row))
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
        start = _scroll_int(state, "offset")
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
    bounds = (state or {}).get("bounds", {})
    if not isinstance(bounds, dict) or not all(_is_int64(v) for v in bounds.values()):
        raise bad_request("Invalid scroll id for this request")
    response_metrics = []
    with ctx.store.reading() as conn:
        for item in requested:
            if not isinstance(item, dict) or not isinstance(item.get("task"), str):
                raise validation_error("every item of 'metrics' needs a 'task' (a string)")
            task_id, metric = item["task"], item.get("metric")
            if metric is not None and not isinstance(metric, str):
                raise validation_error("field 'metrics.metric' must be a string")
            _require_owner(ctx, task_id, model_events)
            variants = set(_strings(item, "variants", "metrics"))
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
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where}"
                f" ORDER BY iter {direction}, metric, variant",
                tuple(params),
            )
            iterations: dict[int, list[dict[str, Any]]] = {}
            for row in rows:
                if variants and row[4] not in variants:
                    continue
                if row[5] not in iterations and len(iterations) >= iters:
                    break
                iterations.setdefault(row[5], []).append(event_dict(row))
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
