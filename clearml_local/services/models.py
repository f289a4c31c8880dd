"""``models.*``: the model registry (name, uri, framework, tags, task/project, ``ready`` = published)."""

from __future__ import annotations

from typing import Any

from clearml_local.api import (
    SUBCODE_INVALID_MODEL_ID,
    ApiError,
    RequestContext,
    endpoint,
    id_list,
    opt_bool,
    opt_str,
    require_str,
    str_list,
    validation_error,
)
from clearml_local.query import candidates, run_query
from clearml_local.query_filters import MODEL_QUERY
from clearml_local.services.common import (
    ARCHIVED_TAG,
    changed_fields,
    load,
    load_for_update,
    not_hidden,
    register_archive_many,
    upsert_metadata,
)
from clearml_local.services.projects import subproject_ids
from clearml_local.store import copy_doc, new_id, utc_now

SUBCODE_MODEL_IS_READY = 202
_STRING_FIELDS = ("name", "comment", "framework", "uri", "task", "project", "parent")
_OBJECT_FIELDS = ("design", "labels", "metadata", "ui_cache")


def _new_model(user: str, name: str) -> dict[str, Any]:
    now = utc_now()
    return {
        "id": new_id(),
        "name": name,
        "user": user,
        "company": "fleetfl",
        "created": now,
        "last_update": now,
        "last_change": now,
        "last_changed_by": user,
        "task": None,
        "project": None,
        "parent": None,
        "comment": "",
        "framework": None,
        "uri": None,
        "ready": False,
        "tags": [],
        "system_tags": [],
        "design": {},
        "labels": {},
        "metadata": {},
    }


def _touch(model: dict[str, Any], user: str) -> None:
    """Stamp a change: ``last_update`` and ``last_change``/``last_changed_by`` (what triggers poll)."""
    now = utc_now()
    model["last_update"] = model["last_change"] = now
    model["last_changed_by"] = user


def _apply(ctx: RequestContext, model: dict[str, Any], body: dict[str, Any]) -> None:
    for key in _STRING_FIELDS:
        if key in body:
            value = body[key]
            if value is not None and not isinstance(value, str):
                raise validation_error(f"field '{key}' must be a string")
            if key == "project" and value:
                load(ctx.store, "projects", value)
            if key == "task" and value:
                load(ctx.store, "tasks", value)
            model[key] = value
    for key in _OBJECT_FIELDS:
        if key in body:
            value = body[key]
            if value is not None and not isinstance(value, dict):
                raise validation_error(f"field '{key}' must be an object")
            model[key] = value or {}
    for key in ("tags", "system_tags"):
        if key in body:
            model[key] = str_list(body, key)
    if "ready" in body:
        model["ready"] = opt_bool(body, "ready")
    _touch(model, ctx.user)


@endpoint("models.create")
def create(ctx: RequestContext, body: dict) -> dict:
    """Register a model."""
    model = _new_model(ctx.user, require_str(body, "name"))
    _apply(ctx, model, body)
    with ctx.store.transaction() as tx:
        tx.put("models", model)
    return {"id": model["id"], "created": True}


@endpoint("models.get_by_id")
def get_by_id(ctx: RequestContext, body: dict) -> dict:
    """One model."""
    return {"model": load(ctx.store, "models", require_str(body, "model"))}


@endpoint("models.get_by_task_id")
def get_by_task_id(ctx: RequestContext, body: dict) -> dict:
    """The (last) output model of a task."""
    task = load(ctx.store, "tasks", require_str(body, "task"))
    outputs = (task.get("models") or {}).get("output") or []
    if not outputs:
        raise ApiError(400, SUBCODE_INVALID_MODEL_ID, f"No output model for task: task={task['id']}")
    return {"model": load(ctx.store, "models", outputs[-1]["model"])}


@endpoint("models.get_all")
def get_all(ctx: RequestContext, body: dict) -> dict:
    """Models filtered by name regex, tags, project (with subprojects), task, framework, ready..."""
    extra = []
    if not opt_bool(body, "search_hidden") and not body.get("id"):
        extra.append(not_hidden)
    ids = id_list(body, "project", allow_null=True)
    if ids is not None:
        scope = subproject_ids(ctx.store, ids) if opt_bool(body, "include_subprojects") else set(ids)
        extra.append(lambda m: m.get("project") in scope)
    indexed = ["task"] if opt_bool(body, "include_subprojects") else ["task", "project"]
    docs = candidates(ctx.store, "models", body, indexed)
    return {"models": run_query(docs, body, options=MODEL_QUERY, extra=extra, skip=("project",))}


endpoint("models.get_all_ex")(get_all)


def _edit(ctx: RequestContext, body: dict) -> dict:
    model_id = require_str(body, "model")
    with ctx.store.transaction() as tx:
        model = load_for_update(tx, "models", model_id)
        before = copy_doc(model)
        _apply(ctx, model, body)
        tx.put("models", model)
    fields = changed_fields(before, model)
    for stamp in ("last_update", "last_change", "last_changed_by"):
        fields.pop(stamp, None)
    return {"updated": 1, "fields": fields}


endpoint("models.edit")(_edit)
endpoint("models.update")(_edit)


@endpoint("models.update_for_task")
def update_for_task(ctx: RequestContext, body: dict) -> dict:
    """Create (or override) the output model of a task and attach it to the task."""
    task_id = require_str(body, "task")
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        override = opt_str(body, "override_model_id")
        created = override is None
        if override:
            model = load_for_update(tx, "models", override)
        else:
            model = _new_model(ctx.user, opt_str(body, "name") or task["name"])
            model["project"] = task.get("project")
        fields = {k: body[k] for k in ("uri", "name", "comment", "tags", "system_tags") if k in body}
        _apply(ctx, model, {**fields, "task": task_id})
        tx.put("models", model)
        outputs = [m for m in (task.get("models") or {}).get("output", []) if m.get("model") != model["id"]]
        outputs.append({"name": model["name"], "model": model["id"]})
        task.setdefault("models", {"input": [], "output": []})["output"] = outputs
        task["last_update"] = utc_now()
        tx.put("tasks", task)
    return {"id": model["id"], "created": created, "updated": int(not created), "fields": fields}


def _set_ready(ctx: RequestContext, model_ids: list[str], publish_task: bool) -> tuple[int, dict[str, Any]]:
    from clearml_local.services.tasks import PUBLISHED, set_status

    published_task: dict[str, Any] = {}
    with ctx.store.transaction() as tx:
        for model_id in model_ids:
            model = load_for_update(tx, "models", model_id)
            model["ready"] = True
            _touch(model, ctx.user)
            tx.put("models", model)
            task = tx.get("tasks", model["task"]) if model.get("task") and publish_task else None
            if task is not None and task["status"] != PUBLISHED:
                fields = set_status(task, PUBLISHED, force=True, user=ctx.user, reason="model published")
                task["published"] = fields["status_changed"]
                tx.put("tasks", task)
                published_task = {"id": task["id"], "data": {"updated": 1, "fields": fields}}
    return len(model_ids), published_task


@endpoint("models.set_ready")
def set_ready(ctx: RequestContext, body: dict) -> dict:
    """Publish a model (``ready``); optionally publish its task too."""
    updated, published = _set_ready(ctx, [require_str(body, "model")], opt_bool(body, "publish_task", True))
    return {"updated": updated, "published_task": published or None}


@endpoint("models.publish_many")
def publish_many(ctx: RequestContext, body: dict) -> dict:
    """Publish several models."""
    ids = str_list(body, "ids", required=True)
    _set_ready(ctx, ids, opt_bool(body, "publish_task", True))
    return {"succeeded": [{"id": i, "updated": 1} for i in ids], "failed": []}


def _set_archived(ctx: RequestContext, ids: list[str], archived: bool) -> None:
    with ctx.store.transaction() as tx:
        for model_id in ids:
            model = load_for_update(tx, "models", model_id)
            tags = [t for t in model.get("system_tags", []) if t != ARCHIVED_TAG]
            model["system_tags"] = [*tags, ARCHIVED_TAG] if archived else tags
            _touch(model, ctx.user)
            tx.put("models", model)


register_archive_many("models", _set_archived)


def _delete(ctx: RequestContext, model_id: str, force: bool) -> str | None:
    with ctx.store.transaction() as tx:
        model = load_for_update(tx, "models", model_id)
        if model.get("ready") and not force:
            raise ApiError(400, SUBCODE_MODEL_IS_READY, f"Model is published, use force: id={model_id}")
        for task in ctx.store.all("tasks"):
            models = task.get("models") or {}
            if any(m.get("model") == model_id for kind in ("input", "output") for m in models.get(kind, [])):
                edited = tx.get("tasks", task["id"])
                for kind in ("input", "output"):
                    edited["models"][kind] = [m for m in models.get(kind, []) if m.get("model") != model_id]
                tx.put("tasks", edited)
        tx.delete("models", model_id)
    return model.get("uri")


@endpoint("models.delete")
def delete(ctx: RequestContext, body: dict) -> dict:
    """Delete a model (published ones only with ``force``); detaches it from tasks."""
    uri = _delete(ctx, require_str(body, "model"), opt_bool(body, "force"))
    return {"deleted": True, "url": uri}


@endpoint("models.delete_many")
def delete_many(ctx: RequestContext, body: dict) -> dict:
    """Delete several models."""
    succeeded, failed = [], []
    for model_id in str_list(body, "ids", required=True):
        try:
            succeeded.append(
                {"id": model_id, "deleted": True, "url": _delete(ctx, model_id, opt_bool(body, "force"))}
            )
        except ApiError as exc:
            failed.append(
                {"id": model_id, "error": {"codes": [exc.result_code, exc.subcode], "msg": exc.message}}
            )
    return {"succeeded": succeeded, "failed": failed}


@endpoint("models.get_frameworks")
def get_frameworks(ctx: RequestContext, body: dict) -> dict:
    """Frameworks of the registered models."""
    projects = str_list(body, "projects")
    frameworks = {
        m["framework"]
        for m in ctx.store.all("models")
        if m.get("framework") and (not projects or m.get("project") in projects)
    }
    return {"frameworks": sorted(frameworks)}


@endpoint("models.add_or_update_metadata")
def add_or_update_metadata(ctx: RequestContext, body: dict) -> dict:
    """Upsert metadata items (``[{key, type, value}]``)."""
    return upsert_metadata(ctx.store, "models", require_str(body, "model"), body, touch=True)


@endpoint("models.delete_metadata")
def delete_metadata(ctx: RequestContext, body: dict) -> dict:
    """Delete metadata items by key."""
    model_id = require_str(body, "model")
    keys = str_list(body, "keys", required=True)
    with ctx.store.transaction() as tx:
        model = load_for_update(tx, "models", model_id)
        metadata = model.get("metadata") or {}
        for key in keys:
            metadata.pop(key, None)
        model["metadata"] = metadata
        _touch(model, ctx.user)
        tx.put("models", model)
    return {"updated": 1}
