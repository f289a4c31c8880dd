"""``workers.*``: agents register, report status (running task, queues) and unregister.

A worker that has not reported for its ``timeout`` (default 600 s, as clearml-server) is dropped
from ``get_all``. Timestamps are ISO strings as the AutoScaler reads them: ``register_time``,
``last_activity_time`` (last report with a task or registration) and ``last_report_time``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from clearml_local.api import (
    SUBCODE_INVALID_WORKER_ID,
    ApiError,
    RequestContext,
    endpoint,
    opt_int,
    opt_str,
    require_str,
    str_list,
)
from clearml_local.services import queues as queues_service
from clearml_local.store import utc_now

DEFAULT_TIMEOUT_S = 600


def _queue_entries(ctx: RequestContext, names_or_ids: list[str]) -> list[dict[str, Any]]:
    result = []
    for ref in names_or_ids:
        queue = ctx.store.get("queues", ref) or queues_service.find_by_name(ctx.store, ref)
        if queue is not None:
            result.append({"id": queue["id"], "name": queue["name"], "num_tasks": len(queue["entries"])})
    return result


def _new_worker(ctx: RequestContext, worker_id: str, timeout: int) -> dict[str, Any]:
    now = utc_now()
    return {
        "id": worker_id,
        "user": {"id": ctx.user, "name": "FleetFL"},
        "company": {"id": "fleetfl", "name": "FleetFL"},
        "register_time": now,
        "last_activity_time": now,
        "last_report_time": now,
        "queues": [],
        "tags": [],
        "system_tags": [],
        "key": f"worker_{worker_id}",
        "timeout": timeout,
    }


@endpoint("workers.register")
def register(ctx: RequestContext, body: dict) -> dict:
    """Register (or re-register) a worker serving some queues."""
    worker_id = require_str(body, "worker")
    timeout = opt_int(body, "timeout") or DEFAULT_TIMEOUT_S
    with ctx.store.transaction() as tx:
        worker = _new_worker(ctx, worker_id, timeout)
        worker["queues"] = _queue_entries(ctx, str_list(body, "queues"))
        worker["tags"] = str_list(body, "tags")
        worker["system_tags"] = str_list(body, "system_tags")
        tx.put("workers", worker)
    return {}


@endpoint("workers.unregister")
def unregister(ctx: RequestContext, body: dict) -> dict:
    """Remove a worker (no error if it is not registered, like clearml-server)."""
    worker_id = require_str(body, "worker")
    with ctx.store.transaction() as tx:
        tx.delete("workers", worker_id)
    return {}


@endpoint("workers.status_report")
def status_report(ctx: RequestContext, body: dict) -> dict:
    """A worker's heartbeat: the task it runs (if any), its queues, machine stats."""
    worker_id = require_str(body, "worker")
    task_id = opt_str(body, "task")
    with ctx.store.transaction() as tx:
        worker = tx.get("workers", worker_id) or _new_worker(ctx, worker_id, DEFAULT_TIMEOUT_S)
        now = utc_now()
        worker["last_report_time"] = now
        if "queues" in body:
            worker["queues"] = _queue_entries(ctx, str_list(body, "queues"))
        if "tags" in body:
            worker["tags"] = str_list(body, "tags")
        if task_id:
            task = ctx.store.get("tasks", task_id) or {}
            previous = worker.get("task") or {}
            started = previous.get("_started_ms") if previous.get("id") == task_id else None
            started = started or int(time.time() * 1000)
            worker["task"] = {
                "id": task_id,
                "name": task.get("name", ""),
                "running_time": int(time.time() * 1000) - started,
                "last_iteration": task.get("last_iteration", 0),
                "_started_ms": started,
            }
            worker["last_activity_time"] = now
            queue_ref = opt_str(body, "queue")
            entries = _queue_entries(ctx, [queue_ref]) if queue_ref else []
            worker["queue"] = entries[0] if entries else None
            if task:
                running = tx.get("tasks", task_id)
                running["last_worker"], running["last_worker_report"] = worker_id, now
                tx.put("tasks", running)
        else:
            worker["task"] = None
            worker["queue"] = None
        tx.put("workers", worker)
    return {}


def _public(worker: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in worker.items() if k != "timeout"}
    if isinstance(out.get("task"), dict):
        out["task"] = {k: v for k, v in out["task"].items() if not k.startswith("_")}
    return out


def _age_s(stamp: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()


@endpoint("workers.get_all")
def get_all(ctx: RequestContext, body: dict) -> dict:
    """Live workers (reported within their timeout and within ``last_seen`` seconds, default 3600)."""
    last_seen = opt_int(body, "last_seen") or 3600
    live = []
    for worker in ctx.store.all("workers"):
        age = _age_s(worker["last_report_time"])
        if age <= worker.get("timeout", DEFAULT_TIMEOUT_S) and age <= last_seen:
            live.append(_public(worker))
    return {"workers": sorted(live, key=lambda w: w["id"])}


@endpoint("workers.get_runtime_properties")
def get_runtime_properties(ctx: RequestContext, body: dict) -> dict:
    """Runtime properties are not supported: always none (the agent only needs the key)."""
    require_str(body, "worker")
    return {"runtime_properties": []}


@endpoint("workers.set_runtime_properties")
def set_runtime_properties(ctx: RequestContext, body: dict) -> dict:
    """Accepted and ignored (runtime properties are not kept)."""
    require_str(body, "worker")
    return {"added": []}


@endpoint("workers.get_activity_report")
def get_activity_report(ctx: RequestContext, body: dict) -> dict:
    """No activity history is kept: empty series."""
    empty = {"dates": [], "counts": []}
    return {"total": dict(empty), "active": dict(empty)}


@endpoint("workers.get_stats")
def get_stats(ctx: RequestContext, body: dict) -> dict:
    """No statistics history is kept: empty."""
    return {"workers": []}


@endpoint("workers.get_metric_keys")
def get_metric_keys(ctx: RequestContext, body: dict) -> dict:
    """No statistics are kept: no keys."""
    return {"categories": []}


def require_worker(ctx: RequestContext, worker_id: str) -> dict[str, Any]:
    """The registered worker or 400/1001."""
    worker = ctx.store.get("workers", worker_id)
    if worker is None:
        raise ApiError(400, SUBCODE_INVALID_WORKER_ID, f"Invalid worker id: id={worker_id}")
    return worker
