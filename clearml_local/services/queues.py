"""``queues.*``: named FIFO queues of task ids; ``get_next_task`` pops atomically.

A queue document holds its ``entries`` (``[{task, added}]``) in order. Every change happens inside
one store transaction (one writer at a time), so concurrent ``get_next_task`` callers each receive a
different entry and no entry is handed out twice.
"""

from __future__ import annotations

from typing import Any

from clearml_local.api import (
    ApiError,
    RequestContext,
    endpoint,
    opt_bool,
    opt_str,
    require_str,
    str_list,
    validation_error,
)
from clearml_local.query import run_query
from clearml_local.query_filters import QUEUE_QUERY
from clearml_local.services.common import conflict, load, load_for_update, not_hidden, upsert_metadata
from clearml_local.store import Store, Transaction, new_id, utc_now

DEFAULT_QUEUE_NAME = "default"
DEFAULT_TAG = "default"
SUBCODE_QUEUE_NOT_EMPTY = 702
SUBCODE_TASK_NOT_QUEUED = 703
#: clearml-server answers a duplicate name with 400/801 ``expected_unique_data`` (a unique index).
SUBCODE_QUEUE_EXISTS = 801


def _new_queue(name: str, user: str, tags: list[str], system_tags: list[str]) -> dict[str, Any]:
    now = utc_now()
    return {
        "id": new_id(),
        "name": name,
        "user": user,
        "company": "fleetfl",
        "created": now,
        "last_update": now,
        "tags": tags,
        "system_tags": system_tags,
        "entries": [],
        "metadata": {},
    }


def find_by_name(store: Store, name: str) -> dict[str, Any] | None:
    """The queue named exactly ``name``."""
    return next((q for q in store.all("queues") if q["name"] == name), None)


def default_queue(tx: Transaction, user: str) -> str:
    """The id of the queue tagged ``default`` (created, named ``default``, on first use)."""
    found = next((q for q in tx.store.all("queues") if DEFAULT_TAG in q.get("system_tags", [])), None)
    if found is not None:
        return found["id"]
    existing = find_by_name(tx.store, DEFAULT_QUEUE_NAME)
    if existing is not None:
        queue = tx.get("queues", existing["id"])
        queue["system_tags"] = [*queue.get("system_tags", []), DEFAULT_TAG]
    else:
        queue = _new_queue(DEFAULT_QUEUE_NAME, user, [], [DEFAULT_TAG])
    tx.put("queues", queue)
    return queue["id"]


def resolve_queue(
    tx: Transaction, queue_id: str | None, queue_name: str | None, user: str, create: bool
) -> str:
    """A queue id from an id, a name (created if ``create``), or the default queue."""
    if queue_id and queue_name:
        raise validation_error("pass either 'queue' or 'queue_name', not both")
    if queue_id:
        load(tx.store, "queues", queue_id)
        return queue_id
    if queue_name:
        found = find_by_name(tx.store, queue_name)
        if found is not None:
            return found["id"]
        if not create:
            raise ApiError(400, 701, f"Invalid queue id: name={queue_name}")
        queue = _new_queue(queue_name, user, [], [])
        tx.put("queues", queue)
        return queue["id"]
    return default_queue(tx, user)


def add_entry(tx: Transaction, queue_id: str, task_id: str) -> None:
    """Append ``task_id`` to the queue (no duplicate entries)."""
    queue = load_for_update(tx, "queues", queue_id)
    if any(e["task"] == task_id for e in queue["entries"]):
        return
    queue["entries"].append({"task": task_id, "added": utc_now()})
    queue["last_update"] = utc_now()
    tx.put("queues", queue)


def remove_entry(tx: Transaction, queue_id: str, task_id: str) -> bool:
    """Remove ``task_id`` from the queue; whether it was there."""
    queue = tx.get("queues", queue_id)
    if queue is None:
        return False
    kept = [e for e in queue["entries"] if e["task"] != task_id]
    if len(kept) == len(queue["entries"]):
        return False
    queue["entries"] = kept
    queue["last_update"] = utc_now()
    tx.put("queues", queue)
    return True


def _name_taken(name: str) -> ApiError:
    return conflict(
        f"Value combination already exists (unique field already contains this value): name={name}",
        SUBCODE_QUEUE_EXISTS,
    )


@endpoint("queues.create")
def create(ctx: RequestContext, body: dict) -> dict:
    """Create a queue with a unique name."""
    name = require_str(body, "name")
    queue = _new_queue(name, ctx.user, str_list(body, "tags"), str_list(body, "system_tags"))
    with ctx.store.transaction() as tx:  # checked inside the write lock: parallel creates make one queue
        if find_by_name(tx.store, name) is not None:
            raise _name_taken(name)
        tx.put("queues", queue)
    return {"id": queue["id"]}


@endpoint("queues.get_by_id")
def get_by_id(ctx: RequestContext, body: dict) -> dict:
    """One queue with its entries."""
    return {"queue": load(ctx.store, "queues", require_str(body, "queue"))}


@endpoint("queues.get_all")
def get_all(ctx: RequestContext, body: dict) -> dict:
    """Queues (name is a regex; tags with operators)."""
    extra = [] if opt_bool(body, "search_hidden") else [not_hidden]
    return {"queues": run_query(ctx.store.all("queues"), body, options=QUEUE_QUERY, extra=extra)}


endpoint("queues.get_all_ex")(get_all)


@endpoint("queues.get_default")
def get_default(ctx: RequestContext, body: dict) -> dict:
    """The default queue (created on first use)."""
    with ctx.store.transaction() as tx:
        queue_id = default_queue(tx, ctx.user)
        name = tx.get("queues", queue_id)["name"]
    return {"id": queue_id, "name": name}


@endpoint("queues.update")
def update(ctx: RequestContext, body: dict) -> dict:
    """Rename or retag a queue."""
    queue_id = require_str(body, "queue")
    with ctx.store.transaction() as tx:
        queue = load_for_update(tx, "queues", queue_id)
        fields: dict[str, Any] = {}
        name = opt_str(body, "name")
        if name is not None and name != queue["name"]:
            if find_by_name(tx.store, name) is not None:
                raise _name_taken(name)
            fields["name"] = name
        for key in ("tags", "system_tags"):
            if key in body:
                fields[key] = str_list(body, key)
        queue.update(fields)
        queue["last_update"] = utc_now()
        tx.put("queues", queue)
    return {"updated": 1, "fields": fields}


@endpoint("queues.delete")
def delete(ctx: RequestContext, body: dict) -> dict:
    """Delete a queue; refused while it has entries unless ``force`` (then its tasks are dequeued)."""
    queue_id = require_str(body, "queue")
    with ctx.store.transaction() as tx:
        queue = load_for_update(tx, "queues", queue_id)
        if queue["entries"] and not opt_bool(body, "force"):
            raise conflict(f"Queue is not empty: queue={queue_id}", SUBCODE_QUEUE_NOT_EMPTY)
        for entry in queue["entries"]:
            task = tx.get("tasks", entry["task"])
            if task is not None and task["status"] == "queued":
                task["status"], task["status_changed"] = "created", utc_now()
                task.setdefault("execution", {})["queue"] = None
                tx.put("tasks", task)
        tx.delete("queues", queue_id)
    return {"deleted": 1}


@endpoint("queues.add_task")
def add_task(ctx: RequestContext, body: dict) -> dict:
    """Append a task to a queue (low level: the task's status is not changed)."""
    queue_id, task_id = require_str(body, "queue"), require_str(body, "task")
    load(ctx.store, "tasks", task_id)
    with ctx.store.transaction() as tx:
        add_entry(tx, queue_id, task_id)
    return {"added": 1}


@endpoint("queues.remove_task")
def remove_task(ctx: RequestContext, body: dict) -> dict:
    """Remove a task from a queue (low level: the task's status is not changed)."""
    queue_id, task_id = require_str(body, "queue"), require_str(body, "task")
    with ctx.store.transaction() as tx:
        load_for_update(tx, "queues", queue_id)
        removed = remove_entry(tx, queue_id, task_id)
    if not removed:
        raise conflict(f"Task is not in the queue: queue={queue_id} task={task_id}", SUBCODE_TASK_NOT_QUEUED)
    return {"removed": 1}


@endpoint("queues.get_next_task")
def get_next_task(ctx: RequestContext, body: dict) -> dict:
    """Pop the first entry whose task is still queued: ``{"entry": {task, added}}`` or ``{}``.

    Atomic: the pop happens in one write transaction, so concurrent callers never share an entry.
    Entries of deleted or no-longer-queued tasks are dropped on the way.
    """
    queue_id = require_str(body, "queue")
    with ctx.store.transaction() as tx:
        queue = load_for_update(tx, "queues", queue_id)
        entries = queue["entries"]
        before = len(entries)
        found = None
        while entries:
            entry = entries.pop(0)
            task = tx.get("tasks", entry["task"])
            if task is not None and task.get("status") == "queued":
                found = entry
                break
        if len(entries) != before:
            queue["last_update"] = utc_now()
            tx.put("queues", queue)
    if found is None:
        return {}
    result: dict[str, Any] = {"entry": found}
    if opt_bool(body, "get_task_info"):
        task = ctx.store.get("tasks", found["task"]) or {}
        result["task_info"] = {"company": task.get("company", ""), "user": task.get("user", "")}
    return result


@endpoint("queues.peek_task")
def peek_task(ctx: RequestContext, body: dict) -> dict:
    """The first task id in the queue, without removing it."""
    queue = load(ctx.store, "queues", require_str(body, "queue"))
    return {"task": queue["entries"][0]["task"] if queue["entries"] else None}


@endpoint("queues.get_num_entries")
def get_num_entries(ctx: RequestContext, body: dict) -> dict:
    """How many entries the queue holds."""
    return {"num": len(load(ctx.store, "queues", require_str(body, "queue"))["entries"])}


def _move(ctx: RequestContext, body: dict, where: str) -> dict:
    queue_id, task_id = require_str(body, "queue"), require_str(body, "task")
    count = body.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise validation_error("field 'count' must be a positive integer")
    with ctx.store.transaction() as tx:
        queue = load_for_update(tx, "queues", queue_id)
        entries = queue["entries"]
        index = next((i for i, e in enumerate(entries) if e["task"] == task_id), None)
        if index is None:
            raise conflict(
                f"Task is not in the queue: queue={queue_id} task={task_id}", SUBCODE_TASK_NOT_QUEUED
            )
        entry = entries.pop(index)
        target = {
            "forward": max(index - count, 0),
            "backward": min(index + count, len(entries)),
            "front": 0,
            "back": len(entries),
        }[where]
        entries.insert(target, entry)
        tx.put("queues", queue)
    return {"position": target}


for _where in ("forward", "backward"):
    endpoint(f"queues.move_task_{_where}")(lambda ctx, body, w=_where: _move(ctx, body, w))
for _where in ("front", "back"):
    endpoint(f"queues.move_task_to_{_where}")(lambda ctx, body, w=_where: _move(ctx, body, w))


@endpoint("queues.add_or_update_metadata")
def add_or_update_metadata(ctx: RequestContext, body: dict) -> dict:
    """Upsert metadata items (``[{key, type, value}]``)."""
    return upsert_metadata(ctx.store, "queues", require_str(body, "queue"), body, touch=False)


@endpoint("queues.get_queue_metrics")
def get_queue_metrics(ctx: RequestContext, body: dict) -> dict:
    """Queue metrics history is not kept: one sample per queue, now."""
    ids = str_list(body, "queue_ids")
    result = []
    for queue in ctx.store.all("queues"):
        if ids and queue["id"] not in ids:
            continue
        result.append({"queue": queue["id"], "dates": [], "avg_waiting_times": [], "queue_lengths": []})
    return {"queues": result}
