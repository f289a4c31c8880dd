"""``tasks.*``: task documents, the status state machine, queues, parameters, artifacts, models.

Status changes follow clearml-server's state machine (:data:`STATE_MACHINE`); a change it does not
allow is refused with 400/110 unless the request says ``force``. ``tasks.edit`` needs status
``created`` (or ``force``); parameter, configuration and requirement edits are also allowed while
the task runs (the SDK writes them from inside a running task) but not once it finished.
"""

from __future__ import annotations

import importlib
from typing import Any

from clearml_local.api import (
    SUBCODE_INVALID_TASK_STATUS,
    ApiError,
    RequestContext,
    endpoint,
    id_list,
    opt_bool,
    opt_dict,
    opt_int,
    opt_list,
    opt_str,
    require_str,
    str_list,
    validation_error,
)
from clearml_local.query import candidates, run_query
from clearml_local.query_filters import TASK_QUERY
from clearml_local.services import queues
from clearml_local.services.common import (
    ARCHIVED_TAG,
    changed_fields,
    load,
    load_for_update,
    not_hidden,
    register_archive_many,
)
from clearml_local.services.projects import subproject_ids
from clearml_local.store import Store, Transaction, copy_doc, new_id, utc_now

TASK_TYPES = (
    "training",
    "testing",
    "inference",
    "data_processing",
    "application",
    "monitor",
    "controller",
    "optimizer",
    "service",
    "qc",
    "custom",
)

CREATED, QUEUED, IN_PROGRESS, STOPPED = "created", "queued", "in_progress", "stopped"
COMPLETED, FAILED, CLOSED, PUBLISHING, PUBLISHED = "completed", "failed", "closed", "publishing", "published"

#: Allowed status changes (clearml-server's task state machine); same-status changes are allowed.
STATE_MACHINE: dict[str, frozenset[str]] = {
    CREATED: frozenset({QUEUED, IN_PROGRESS}),
    QUEUED: frozenset({CREATED, IN_PROGRESS, STOPPED}),
    IN_PROGRESS: frozenset({STOPPED, FAILED, CREATED, COMPLETED}),
    STOPPED: frozenset({CLOSED, CREATED, FAILED, QUEUED, IN_PROGRESS, PUBLISHED, PUBLISHING, COMPLETED}),
    CLOSED: frozenset({CREATED, FAILED, PUBLISHED, PUBLISHING, STOPPED}),
    FAILED: frozenset({CREATED, STOPPED, PUBLISHED, QUEUED}),
    PUBLISHING: frozenset({PUBLISHED}),
    PUBLISHED: frozenset(),
    COMPLETED: frozenset({PUBLISHED, IN_PROGRESS, CREATED}),
}
#: Statuses in which the SDK may still write parameters/configuration/requirements without force.
_PARAM_EDIT_STATUSES = frozenset({CREATED, QUEUED, IN_PROGRESS})
_STOPPING = "stopping"
#: Fields ``tasks.create``/``tasks.edit`` take as they are.
_DOC_FIELDS = ("comment", "parent", "script", "container", "runtime", "models", "input")
_SUBCODE_TASK_PUBLISHED = 113
_SUBCODE_TASK_IN_PROGRESS = 112


def _invalid_status(message: str) -> ApiError:
    return ApiError(400, SUBCODE_INVALID_TASK_STATUS, message)


def new_task_doc(user: str, name: str, task_type: str, project: str | None) -> dict[str, Any]:
    """A task in status ``created`` with every collection defaulted (``execution.artifacts`` ...)."""
    now = utc_now()
    return {
        "id": new_id(),
        "name": name,
        "type": task_type,
        "status": CREATED,
        "status_changed": now,
        "status_reason": "",
        "status_message": "",
        "project": project,
        "user": user,
        "company": "fleetfl",
        "comment": "",
        "parent": None,
        "tags": [],
        "system_tags": [],
        "created": now,
        "last_update": now,
        "last_change": now,
        "last_changed_by": user,
        "last_iteration": 0,
        "last_metrics": {},
        "execution": {"artifacts": [], "parameters": {}},
        "script": {},
        "hyperparams": {},
        "configuration": {},
        "container": {},
        "models": {"input": [], "output": []},
        "runtime": {},
        "output": {},
    }


def _check_type(value: Any) -> str:
    if value not in TASK_TYPES:
        raise validation_error(f"field 'type' must be one of {', '.join(TASK_TYPES)}, got {value!r}")
    return value


def _check_project(ctx: RequestContext, project: Any) -> str | None:
    if project is None or project == "":
        return None
    if not isinstance(project, str):
        raise validation_error("field 'project' must be a string")
    load(ctx.store, "projects", project)
    return project


def _apply_edit(ctx: RequestContext, task: dict[str, Any], body: dict[str, Any]) -> None:
    """Apply the editable fields of a create/edit body to ``task``."""
    if "name" in body:
        task["name"] = require_str(body, "name")
    if "type" in body:
        task["type"] = _check_type(body["type"])
    if "project" in body:
        task["project"] = _check_project(ctx, body["project"])
    for key in ("tags", "system_tags"):
        if key in body:
            task[key] = str_list(body, key)
    for key in _DOC_FIELDS:
        if key in body:
            value = body[key]
            if key not in ("comment", "parent") and value is not None and not isinstance(value, dict):
                raise validation_error(f"field '{key}' must be an object")
            task[key] = value if value is not None else ({} if key not in ("comment", "parent") else value)
    if "models" in body and isinstance(task["models"], dict):
        task["models"] = {"input": [], "output": [], **task["models"]}
    if "execution" in body:
        execution = opt_dict(body, "execution") or {}
        artifacts = task.get("execution", {}).get("artifacts", [])
        task["execution"] = {"artifacts": artifacts, "parameters": {}, **execution}
    if "hyperparams" in body:
        task["hyperparams"] = opt_dict(body, "hyperparams") or {}
    if "configuration" in body:
        task["configuration"] = opt_dict(body, "configuration") or {}
    if "output_dest" in body:
        task.setdefault("output", {})["destination"] = opt_str(body, "output_dest")


def _touch(task: dict[str, Any], user: str) -> None:
    now = utc_now()
    task["last_update"] = now
    task["last_change"] = now
    task["last_changed_by"] = user


# --- create / read --------------------------------------------------------------------------------
@endpoint("tasks.create")
def create(ctx: RequestContext, body: dict) -> dict:
    """Create a task in status ``created``."""
    name = require_str(body, "name")
    task_type = _check_type(body.get("type", "training"))
    task = new_task_doc(ctx.user, name, task_type, _check_project(ctx, body.get("project")))
    _apply_edit(ctx, task, body)
    with ctx.store.transaction() as tx:
        tx.put("tasks", task)
    return {"id": task["id"]}


@endpoint("tasks.validate")
def validate(ctx: RequestContext, body: dict) -> dict:
    """Check a create body without creating anything."""
    require_str(body, "name")
    _check_type(body.get("type", "training"))
    _check_project(ctx, body.get("project"))
    return {}


@endpoint("tasks.get_by_id")
def get_by_id(ctx: RequestContext, body: dict) -> dict:
    """One task."""
    return {"task": load(ctx.store, "tasks", require_str(body, "task"))}


@endpoint("tasks.get_all")
def get_all(ctx: RequestContext, body: dict) -> dict:
    """Tasks matching the query (see :mod:`clearml_local.query`)."""
    extra = []
    explicit_ids = body.get("id")
    if not opt_bool(body, "search_hidden") and not explicit_ids:
        extra.append(not_hidden)
    project_ids = id_list(body, "project", allow_null=True)
    if project_ids is not None:
        if opt_bool(body, "include_subprojects"):
            scope = subproject_ids(ctx.store, [p for p in project_ids if p])
            if None in project_ids:
                scope.add(None)
            extra.append(lambda t: t.get("project") in scope)
        else:
            wanted = set(project_ids)
            extra.append(lambda t: t.get("project") in wanted)
    indexed = ["parent", "status", "type"]
    if not opt_bool(body, "include_subprojects"):
        indexed.append("project")
    docs = candidates(ctx.store, "tasks", body, indexed)
    tasks = run_query(docs, body, options=TASK_QUERY, extra=extra, skip=("project",))
    return {"tasks": tasks}


endpoint("tasks.get_all_ex")(get_all)
endpoint("tasks.get_by_id_ex")(get_all)


@endpoint("tasks.get_types")
def get_types(ctx: RequestContext, body: dict) -> dict:
    """The task types in use (optionally within some projects)."""
    projects = str_list(body, "projects")
    types = {t["type"] for t in ctx.store.all("tasks") if not projects or t.get("project") in projects}
    return {"types": sorted(types)}


# --- edits ----------------------------------------------------------------------------------------
def _for_edit(tx: Transaction, task_id: str, force: bool, allowed: frozenset[str]) -> dict[str, Any]:
    task = load_for_update(tx, "tasks", task_id)
    if not force and task["status"] not in allowed:
        raise _invalid_status(
            f"Invalid task status: expected one of {sorted(allowed)}, status={task['status']} "
            f"(pass force=true to override)"
        )
    return task


@endpoint("tasks.edit")
def edit(ctx: RequestContext, body: dict) -> dict:
    """Edit a task's definition (status ``created``, or ``force``)."""
    task_id = require_str(body, "task")
    force = opt_bool(body, "force")
    with ctx.store.transaction() as tx:
        task = _for_edit(tx, task_id, force, frozenset({CREATED}))
        before = copy_doc(task)
        _apply_edit(ctx, task, body)
        _touch(task, ctx.user)
        tx.put("tasks", task)
    fields = changed_fields(before, task)
    fields.pop("last_update", None)
    fields.pop("last_change", None)
    return {"updated": 1, "fields": fields}


@endpoint("tasks.update")
def update(ctx: RequestContext, body: dict) -> dict:
    """Update name, comment, tags, system tags, project or output error (any status)."""
    task_id = require_str(body, "task")
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        before = copy_doc(task)
        if "name" in body:
            task["name"] = require_str(body, "name")
        if "comment" in body:
            task["comment"] = opt_str(body, "comment") or ""
        for key in ("tags", "system_tags"):
            if key in body:
                task[key] = str_list(body, key)
        if "project" in body:
            task["project"] = _check_project(ctx, body["project"])
        if "output__error" in body:
            task.setdefault("output", {})["error"] = opt_str(body, "output__error")
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": 1, "fields": changed_fields(before, task)}


@endpoint("tasks.set_requirements")
def set_requirements(ctx: RequestContext, body: dict) -> dict:
    """Set ``script.requirements``."""
    task_id = require_str(body, "task")
    requirements = opt_dict(body, "requirements")
    if requirements is None:
        raise validation_error("field 'requirements' must be an object")
    with ctx.store.transaction() as tx:
        task = _for_edit(tx, task_id, opt_bool(body, "force"), _PARAM_EDIT_STATUSES)
        task.setdefault("script", {})["requirements"] = requirements
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": 1, "fields": {"script.requirements": requirements}}


@endpoint("tasks.ping")
def ping(ctx: RequestContext, body: dict) -> dict:
    """A keep-alive from the task's process (refreshes ``last_update``)."""
    task_id = require_str(body, "task")
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        task["last_update"] = utc_now()
        tx.put("tasks", task)
    return {}


# --- hyper-parameters and configuration ---------------------------------------------------------
def _items(body: dict[str, Any], name: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    items = opt_list(body, name)
    if items is None:
        raise validation_error(f"missing required field '{name}'")
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in keys):
            raise validation_error(f"every item of '{name}' must be an object with string {', '.join(keys)}")
    return items


@endpoint("tasks.edit_hyper_params")
def edit_hyper_params(ctx: RequestContext, body: dict) -> dict:
    """Add/replace hyper-parameters (``replace_hyperparams``: none | section | all)."""
    task_id = require_str(body, "task")
    items = _items(body, "hyperparams", ("section", "name"))
    replace = opt_str(body, "replace_hyperparams", "none")
    if replace not in ("none", "section", "all"):
        raise validation_error("field 'replace_hyperparams' must be none, section or all")
    with ctx.store.transaction() as tx:
        task = _for_edit(tx, task_id, opt_bool(body, "force"), _PARAM_EDIT_STATUSES)
        params = {} if replace == "all" else task.get("hyperparams") or {}
        if replace == "section":
            for section in {i["section"] for i in items}:
                params[section] = {}
        for item in items:
            entry = {k: item[k] for k in ("section", "name", "value", "type", "description") if k in item}
            if "value" in entry and not isinstance(entry["value"], str):
                entry["value"] = str(entry["value"])
            params.setdefault(item["section"], {})[item["name"]] = entry
        task["hyperparams"] = params
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": 1}


@endpoint("tasks.get_hyper_params")
def get_hyper_params(ctx: RequestContext, body: dict) -> dict:
    """Hyper-parameters of several tasks, as flat item lists."""
    result = []
    for task_id in str_list(body, "tasks", required=True):
        task = load(ctx.store, "tasks", task_id)
        items = [item for section in (task.get("hyperparams") or {}).values() for item in section.values()]
        result.append({"task": task_id, "hyperparams": items})
    return {"params": result}


@endpoint("tasks.delete_hyper_params")
def delete_hyper_params(ctx: RequestContext, body: dict) -> dict:
    """Delete parameters (``{section, name}``) or whole sections (``{section}``)."""
    task_id = require_str(body, "task")
    items = _items(body, "hyperparams", ("section",))
    deleted = 0
    with ctx.store.transaction() as tx:
        task = _for_edit(tx, task_id, opt_bool(body, "force"), _PARAM_EDIT_STATUSES)
        params = task.get("hyperparams") or {}
        for item in items:
            section = params.get(item["section"])
            if section is None:
                continue
            if item.get("name") is None:
                deleted += len(params.pop(item["section"]))
            elif section.pop(item["name"], None) is not None:
                deleted += 1
        task["hyperparams"] = params
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"deleted": deleted}


@endpoint("tasks.edit_configuration")
def edit_configuration(ctx: RequestContext, body: dict) -> dict:
    """Add/replace configuration items (``replace_configuration`` drops the others)."""
    task_id = require_str(body, "task")
    items = _items(body, "configuration", ("name",))
    with ctx.store.transaction() as tx:
        task = _for_edit(tx, task_id, opt_bool(body, "force"), _PARAM_EDIT_STATUSES)
        config = {} if opt_bool(body, "replace_configuration") else task.get("configuration") or {}
        for item in items:
            config[item["name"]] = {k: item[k] for k in ("name", "value", "type", "description") if k in item}
        task["configuration"] = config
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": 1}


@endpoint("tasks.get_configurations")
def get_configurations(ctx: RequestContext, body: dict) -> dict:
    """Configuration items of several tasks (optionally only ``names``)."""
    names = set(str_list(body, "names"))
    result = []
    for task_id in str_list(body, "tasks", required=True):
        config = load(ctx.store, "tasks", task_id).get("configuration") or {}
        items = [v for k, v in config.items() if not names or k in names]
        result.append({"task": task_id, "configuration": items})
    return {"configurations": result}


@endpoint("tasks.get_configuration_names")
def get_configuration_names(ctx: RequestContext, body: dict) -> dict:
    """Configuration item names of several tasks (``{task_id: {task, names}}``)."""
    result = {}
    for task_id in str_list(body, "tasks", required=True):
        config = load(ctx.store, "tasks", task_id).get("configuration") or {}
        result[task_id] = {"task": task_id, "names": sorted(config)}
    return {"configurations": result}  # keyed by task id, as the SDK's schema describes


@endpoint("tasks.delete_configuration")
def delete_configuration(ctx: RequestContext, body: dict) -> dict:
    """Delete configuration items by name."""
    task_id = require_str(body, "task")
    names = str_list(body, "configuration", required=True)
    with ctx.store.transaction() as tx:
        task = _for_edit(tx, task_id, opt_bool(body, "force"), _PARAM_EDIT_STATUSES)
        config = task.get("configuration") or {}
        deleted = sum(1 for n in names if config.pop(n, None) is not None)
        task["configuration"] = config
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"deleted": deleted}


# --- artifacts and models -------------------------------------------------------------------------
@endpoint("tasks.add_or_update_artifacts")
def add_or_update_artifacts(ctx: RequestContext, body: dict) -> dict:
    """Upsert artifacts by key and mode (default mode ``output``)."""
    task_id = require_str(body, "task")
    artifacts = _items(body, "artifacts", ("key", "type"))
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        execution = task.setdefault("execution", {})
        current = execution.setdefault("artifacts", [])
        for artifact in artifacts:
            artifact = {"mode": "output", **artifact}
            key = (artifact["key"], artifact["mode"])
            index = next(
                (i for i, a in enumerate(current) if (a["key"], a.get("mode", "output")) == key), None
            )
            if index is None:
                current.append(artifact)
            else:
                current[index] = artifact
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": len(artifacts)}


@endpoint("tasks.delete_artifacts")
def delete_artifacts(ctx: RequestContext, body: dict) -> dict:
    """Delete artifacts by key (and mode)."""
    task_id = require_str(body, "task")
    items = _items(body, "artifacts", ("key",))
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        current = task.setdefault("execution", {}).setdefault("artifacts", [])
        doomed = {(i["key"], i.get("mode", "output")) for i in items}
        kept = [a for a in current if (a["key"], a.get("mode", "output")) not in doomed]
        task["execution"]["artifacts"] = kept
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"deleted": len(current) - len(kept)}


@endpoint("tasks.add_or_update_model")
def add_or_update_model(ctx: RequestContext, body: dict) -> dict:
    """Attach a model to the task as ``input`` or ``output`` under ``name`` (upsert by name)."""
    task_id = require_str(body, "task")
    name = require_str(body, "name")
    model_id = require_str(body, "model")
    kind = require_str(body, "type")
    if kind not in ("input", "output"):
        raise validation_error("field 'type' must be input or output")
    load(ctx.store, "models", model_id)
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        models = task.setdefault("models", {"input": [], "output": []})
        entries = [m for m in models.setdefault(kind, []) if m.get("name") != name]
        entry: dict[str, Any] = {"name": name, "model": model_id}
        if opt_int(body, "iteration") is not None:
            entry["updated"] = utc_now()
        entries.append(entry)
        models[kind] = entries
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": 1}


@endpoint("tasks.delete_models")
def delete_models(ctx: RequestContext, body: dict) -> dict:
    """Detach models (``[{name, type}]``) from the task."""
    task_id = require_str(body, "task")
    items = _items(body, "models", ("name", "type"))
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        models = task.setdefault("models", {"input": [], "output": []})
        for item in items:
            models[item["type"]] = [m for m in models.get(item["type"], []) if m.get("name") != item["name"]]
        _touch(task, ctx.user)
        tx.put("tasks", task)
    return {"updated": 1}


# --- status changes -------------------------------------------------------------------------------
def set_status(
    task: dict[str, Any],
    new_status: str,
    *,
    force: bool,
    user: str,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Move ``task`` to ``new_status`` if the state machine allows it (or ``force``); return fields."""
    current = task.get("status", CREATED)
    if current == PUBLISHED and new_status != PUBLISHED and not force:
        raise ApiError(400, _SUBCODE_TASK_PUBLISHED, f"Task is published: id={task['id']}")
    if not force and new_status != current and new_status not in STATE_MACHINE.get(current, frozenset()):
        raise _invalid_status(
            f"Invalid status change: current_status={current} new_status={new_status} task={task['id']}"
        )
    now = utc_now()
    fields: dict[str, Any] = {"status": new_status, "status_changed": now}
    fields["status_reason"] = reason or ""
    fields["status_message"] = message or ""
    if new_status == current == IN_PROGRESS and task.get("status_message") == _STOPPING and not force:
        # the agent reports "started" several times, then the task's own SDK does again: a stop
        # request that arrived in between must survive the later reports
        fields["status_message"], fields["status_reason"] = _STOPPING, task.get("status_reason", "")
    task.update(fields)
    _touch(task, user)
    return fields


def _status_endpoint(name: str, new_status: str) -> None:
    def handler(ctx: RequestContext, body: dict) -> dict:
        task_id = require_str(body, "task")
        force = opt_bool(body, "force")
        with ctx.store.transaction() as tx:
            task = load_for_update(tx, "tasks", task_id)
            if task["status"] == QUEUED and new_status != QUEUED:
                _leave_queue(tx, task)
            fields = set_status(
                task,
                new_status,
                force=force,
                user=ctx.user,
                reason=opt_str(body, "status_reason"),
                message=opt_str(body, "status_message"),
            )
            now = fields["status_changed"]
            extra: dict[str, Any] = {}
            if new_status == IN_PROGRESS:
                task["started"] = now
                if ctx.worker:
                    task["last_worker"] = ctx.worker
                    task["last_worker_report"] = now
            elif new_status == COMPLETED:
                task["completed"] = now
                if opt_bool(body, "publish"):
                    fields = set_status(task, PUBLISHED, force=True, user=ctx.user, reason="completed")
                    task["published"] = now
                    extra["published"] = 1
            elif new_status == PUBLISHED:
                task["published"] = now
            elif new_status in (STOPPED, FAILED, CLOSED) and task.get("started"):
                task.setdefault("completed", now)
            tx.put("tasks", task)
        response: dict[str, Any] = {"updated": 1, "fields": fields, **extra}
        if name == "started":
            response["started"] = 1
        if name == "completed":
            response.setdefault("published", 0)
        return response

    handler.__name__ = name
    handler.__doc__ = f"Set the task's status to ``{new_status}`` (state machine, or ``force``)."
    endpoint(f"tasks.{name}")(handler)


for _name, _status in (
    ("started", IN_PROGRESS),
    ("stopped", STOPPED),
    ("completed", COMPLETED),
    ("failed", FAILED),
    ("close", CLOSED),
    ("publish", PUBLISHED),
):
    _status_endpoint(_name, _status)


def _leave_queue(tx: Transaction, task: dict[str, Any]) -> bool:
    queue_id = (task.get("execution") or {}).get("queue")
    return bool(queue_id) and queues.remove_entry(tx, queue_id, task["id"])


@endpoint("tasks.stop")
def stop(ctx: RequestContext, body: dict) -> dict:
    """Stop a task: queued or local (development) tasks stop now; agent-run tasks get "stopping".

    The agent (or the SDK's own monitor) sees ``status_message == "stopping"``, kills the process
    and reports ``tasks.stopped``. ``force`` stops immediately.
    """
    task_id = require_str(body, "task")
    force = opt_bool(body, "force")
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        status = task["status"]
        if status not in (IN_PROGRESS, QUEUED) and not force:
            raise _invalid_status(f"Invalid task status: expected in_progress or queued, status={status}")
        reason = opt_str(body, "status_reason") or "stopped"
        message = opt_str(body, "status_message")
        immediate = force or status == QUEUED or "development" in task.get("system_tags", [])
        immediate = immediate or not task.get("last_worker")
        if status == QUEUED:
            _leave_queue(tx, task)
        if immediate:
            fields = set_status(task, STOPPED, force=True, user=ctx.user, reason=reason, message=message)
        else:
            task["status_message"] = _STOPPING
            task["status_reason"] = reason
            _touch(task, ctx.user)
            fields = {"status_message": _STOPPING, "status_reason": reason}
        tx.put("tasks", task)
    return {"updated": 1, "fields": fields}


@endpoint("tasks.enqueue")
def enqueue(ctx: RequestContext, body: dict) -> dict:
    """Put the task on a queue (by id, by ``queue_name``, or the default queue); status ``queued``."""
    task_id = require_str(body, "task")
    with ctx.store.transaction() as tx:
        queue_id = queues.resolve_queue(
            tx, opt_str(body, "queue"), opt_str(body, "queue_name"), ctx.user, create=True
        )
        task = load_for_update(tx, "tasks", task_id)
        if task["status"] == QUEUED:
            raise ApiError(400, 706, f"Task already queued: task={task_id}")
        previous_status = task["status"]
        fields = set_status(
            task,
            QUEUED,
            force=opt_bool(body, "force"),
            user=ctx.user,
            reason=opt_str(body, "status_reason"),
            message=opt_str(body, "status_message"),
        )
        task.setdefault("execution", {})["queue"] = queue_id
        fields["execution.queue"] = queue_id
        task["enqueue_status"] = previous_status  # what tasks.dequeue goes back to, as clearml-server
        queues.add_entry(tx, queue_id, task_id)
        tx.put("tasks", task)
    response = {"queued": 1, "updated": 1, "fields": fields}
    if opt_bool(body, "verify_watched_queue"):
        served = {q.get("id") for w in ctx.store.all("workers") for q in w.get("queues") or ()}
        response["queue_watched"] = queue_id in served
    return response


#: ``status_reason`` of a task put back on its queue by :func:`requeue_orphans`.
REQUEUED_AT_START = "re-queued at server start: its queue entry was handed out but the task never started"


def requeue_orphans(store: Store) -> list[str]:
    """Put every ``queued`` task that is in no queue back at the front of its queue; return their ids.

    ``queues.get_next_task`` pops the entry and the task stays ``queued`` until the agent calls
    ``tasks.started``; a server killed before its reply reached the agent leaves the task queued in
    no queue, which no agent would ever pick. clearml-server leaves such a task stuck; this server
    re-queues it at start (see docs/clearml-server.md). A task whose queue is gone goes back to
    ``created``. Run at start, before any request: every popped entry is then an orphan.
    """
    queued_ids = {e["task"] for q in store.all("queues") for e in q.get("entries") or ()}
    orphans = [t["id"] for t in store.all("tasks") if t.get("status") == QUEUED and t["id"] not in queued_ids]
    with store.transaction() as tx:
        for task_id in orphans:
            task = load_for_update(tx, "tasks", task_id)
            queue_id = (task.get("execution") or {}).get("queue")
            queue = tx.get("queues", queue_id) if isinstance(queue_id, str) else None
            if queue is None:
                reason = "reset at server start: its queue entry was handed out and its queue is gone"
                set_status(task, CREATED, force=True, user=task.get("user") or "", reason=reason)
            else:
                queue["entries"].insert(0, {"task": task_id, "added": utc_now()})
                queue["last_update"] = utc_now()
                tx.put("queues", queue)
                task["status_reason"] = REQUEUED_AT_START
                task["status_changed"] = utc_now()
            tx.put("tasks", task)
    return orphans


@endpoint("tasks.dequeue")
def dequeue(ctx: RequestContext, body: dict) -> dict:
    """As clearml-server's ``dequeue_task``: off its queue, then a queued or running task goes back.

    A queued or ``in_progress`` task moves to ``new_status`` (else the status it had before it was
    enqueued, else ``created``): 200 ``{"dequeued": 1, "updated": 1, "fields"}``. Any other status
    is left alone: 200 ``{"dequeued": 1, "updated": 0}``; so is an unknown id, which is only taken
    off every queue. ``remove_from_all_queues`` also takes it off every other queue.
    """
    task_id = require_str(body, "task")
    new_status = opt_str(body, "new_status")
    if new_status and new_status not in STATE_MACHINE:
        raise validation_error(f"Invalid task status: {new_status}")
    with ctx.store.transaction() as tx:
        task = tx.get("tasks", task_id)
        if task is not None and task["status"] == QUEUED:
            _leave_queue(tx, task)
            task.setdefault("execution", {})["queue"] = None
        if task is None or opt_bool(body, "remove_from_all_queues"):
            for queue in tx.store.all("queues"):
                queues.remove_entry(tx, queue["id"], task_id)
        if task is None or task["status"] not in (QUEUED, IN_PROGRESS):
            return {"dequeued": 1, "updated": 0}
        fields = set_status(
            task,
            new_status or task.pop("enqueue_status", None) or CREATED,
            force=True,
            user=ctx.user,
            reason=opt_str(body, "status_reason"),
            message=opt_str(body, "status_message"),
        )
        tx.put("tasks", task)
    return {"dequeued": 1, "updated": 1, "fields": fields}


def _delete_events(tx: Transaction, task_ids: list[str]) -> None:
    try:
        events = importlib.import_module("clearml_local.events")
    except ModuleNotFoundError as exc:
        if exc.name != "clearml_local.events":
            raise
        return
    if hasattr(events, "delete_task_events"):
        events.delete_task_events(tx, task_ids)


@endpoint("tasks.reset")
def reset(ctx: RequestContext, body: dict) -> dict:
    """Back to ``created``: dequeue, clear results (metrics, output artifacts/models, events)."""
    task_id = require_str(body, "task")
    force = opt_bool(body, "force")
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        if task["status"] == PUBLISHED:
            raise ApiError(400, _SUBCODE_TASK_PUBLISHED, f"Task is published: id={task_id}")
        if task["status"] == IN_PROGRESS and not force:
            raise ApiError(400, _SUBCODE_TASK_IN_PROGRESS, f"Task is in progress (use force): id={task_id}")
        dequeued = _leave_queue(tx, task) if task["status"] == QUEUED else False
        fields = set_status(task, CREATED, force=True, user=ctx.user, reason="reset")
        execution = task.setdefault("execution", {})
        execution["artifacts"] = [a for a in execution.get("artifacts", []) if a.get("mode") == "input"]
        execution["queue"] = None
        task["models"] = {"input": (task.get("models") or {}).get("input", []), "output": []}
        task["last_metrics"], task["last_iteration"] = {}, 0
        for key in ("started", "completed", "published", "last_worker", "last_worker_report"):
            task.pop(key, None)
        task["output"] = {k: v for k, v in (task.get("output") or {}).items() if k == "destination"}
        task["runtime"] = {}
        _delete_events(tx, [task_id])
        tx.put("tasks", task)
    return {"updated": 1, "fields": fields, "dequeued": {"removed": int(dequeued)}, "events": {}, "urls": {}}


@endpoint("tasks.delete")
def delete(ctx: RequestContext, body: dict) -> dict:
    """Delete a task and its events; refused while running or published unless ``force``."""
    task_id = require_str(body, "task")
    force = opt_bool(body, "force")
    with ctx.store.transaction() as tx:
        task = load_for_update(tx, "tasks", task_id)
        if task["status"] in (IN_PROGRESS, PUBLISHED) and not force:
            raise _invalid_status(
                f"Cannot delete a task in status {task['status']} without force: id={task_id}"
            )
        if task["status"] == QUEUED:
            _leave_queue(tx, task)
        children = 0
        for child in ctx.store.all("tasks"):
            if child.get("parent") == task_id:
                moved = tx.get("tasks", child["id"])
                moved["parent"] = None
                tx.put("tasks", moved)
                children += 1
        _delete_events(tx, [task_id])
        tx.delete("tasks", task_id)
    return {"deleted": True, "updated_children": children, "updated_models": 0, "events": {}, "urls": {}}


def _set_archived(ctx: RequestContext, task_ids: list[str], archived: bool) -> int:
    count = 0
    with ctx.store.transaction() as tx:
        for task_id in task_ids:
            task = load_for_update(tx, "tasks", task_id)
            tags = [t for t in task.get("system_tags", []) if t != ARCHIVED_TAG]
            if archived:
                tags.append(ARCHIVED_TAG)
                if task["status"] == QUEUED:
                    _leave_queue(tx, task)
                    set_status(task, CREATED, force=True, user=ctx.user)
            task["system_tags"] = tags
            _touch(task, ctx.user)
            tx.put("tasks", task)
            count += 1
    return count


@endpoint("tasks.archive")
def archive(ctx: RequestContext, body: dict) -> dict:
    """Add the ``archived`` system tag (and dequeue)."""
    return {"archived": _set_archived(ctx, str_list(body, "tasks", required=True), True)}


register_archive_many("tasks", _set_archived)


# --- clone ----------------------------------------------------------------------------------------
_CLONED_FIELDS = ("type", "comment", "tags", "script", "hyperparams", "configuration", "container", "runtime")


@endpoint("tasks.clone")
def clone(ctx: RequestContext, body: dict) -> dict:
    """A new ``created`` task with the source's definition (not its results)."""
    source = load(ctx.store, "tasks", require_str(body, "task"))
    name = opt_str(body, "new_task_name") or f"Clone Of {source['name']}"
    project = body.get("new_task_project", source.get("project"))
    task = new_task_doc(ctx.user, name, source["type"], _check_project(ctx, project))
    for key in _CLONED_FIELDS:
        if key in source:
            task[key] = copy_doc(source[key])
    task["runtime"] = {}
    task["system_tags"] = [t for t in source.get("system_tags", []) if t not in (ARCHIVED_TAG, "development")]
    task["comment"] = opt_str(body, "new_task_comment", source.get("comment", "")) or ""
    task["parent"] = opt_str(body, "new_task_parent") or source.get("parent")
    if "new_task_tags" in body:
        task["tags"] = str_list(body, "new_task_tags")
    if "new_task_system_tags" in body:
        task["system_tags"] = str_list(body, "new_task_system_tags")
    execution = copy_doc(source.get("execution") or {})
    execution["artifacts"] = [a for a in execution.get("artifacts", []) if a.get("mode") == "input"]
    execution.pop("queue", None)
    execution.update(opt_dict(body, "execution_overrides") or {})
    task["execution"] = execution
    task["models"] = {"input": copy_doc((source.get("models") or {}).get("input", [])), "output": []}
    if "new_task_hyperparams" in body:
        task["hyperparams"] = opt_dict(body, "new_task_hyperparams") or {}
    if "new_task_configuration" in body:
        task["configuration"] = opt_dict(body, "new_task_configuration") or {}
    if "new_task_container" in body:
        task["container"] = opt_dict(body, "new_task_container") or {}
    with ctx.store.transaction() as tx:
        tx.put("tasks", task)
    return {"id": task["id"]}
