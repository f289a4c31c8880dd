"""``projects.*``: projects nest by path (``a/b/.datasets/x``); missing parents are created."""

from __future__ import annotations

from typing import Any

from clearml_local.api import (
    RequestContext,
    endpoint,
    opt_bool,
    opt_str,
    require_str,
    str_list,
    validation_error,
)
from clearml_local.query import run_query
from clearml_local.query_filters import PROJECT_QUERY
from clearml_local.services.common import conflict, load, load_for_update, not_hidden
from clearml_local.store import Store, Transaction, new_id, utc_now

#: clearml-server: 400/801 ``expected_unique_data`` "Project with the same name already exists".
SUBCODE_PROJECT_EXISTS = 801
SUBCODE_PROJECT_HAS_TASKS = 402
_EDITABLE = ("description", "tags", "system_tags", "default_output_destination")


def _normalize(name: str) -> str:
    parts = [p.strip() for p in name.split("/")]
    if not all(parts):
        raise validation_error(f"invalid project name {name!r} (empty path segment)")
    return "/".join(parts)


def find_by_name(store: Store, name: str) -> dict[str, Any] | None:
    """The project whose full path is ``name``."""
    return next((p for p in store.all("projects") if p["name"] == name), None)


def ensure_project(tx: Transaction, name: str, user: str, **fields: Any) -> tuple[str, bool]:
    """The id of project ``name``, creating it and its missing parents; returns (id, created)."""
    name = _normalize(name)
    existing = find_by_name(tx.store, name) or _pending_by_name(tx, name)
    if existing is not None:
        return existing["id"], False
    parent_id = None
    if "/" in name:
        parent_id, _ = ensure_project(tx, name.rsplit("/", 1)[0], user)
    now = utc_now()
    doc = {
        "id": new_id(),
        "name": name,
        "basename": name.rsplit("/", 1)[-1],
        "parent": parent_id,
        "description": "",
        "user": user,
        "company": "fleetfl",
        "tags": [],
        "system_tags": [],
        "created": now,
        "last_update": now,
    }
    doc.update({k: v for k, v in fields.items() if v is not None})
    tx.put("projects", doc)
    return doc["id"], True


def _pending_by_name(tx: Transaction, name: str) -> dict[str, Any] | None:
    for (collection, _), doc in tx._pending.items():
        if collection == "projects" and doc is not None and doc["name"] == name:
            return doc
    return None


def subproject_ids(store: Store, project_ids: list[str]) -> set[str]:
    """``project_ids`` and the ids of every project nested under them."""
    names = {p["name"] for p in store.all("projects") if p["id"] in project_ids}
    result = set(project_ids)
    for p in store.all("projects"):
        if any(p["name"].startswith(n + "/") for n in names):
            result.add(p["id"])
    return result


@endpoint("projects.create")
def create(ctx: RequestContext, body: dict) -> dict:
    """Create a project (and its missing parents); 400 if the name exists."""
    name = _normalize(require_str(body, "name"))
    fields = {k: body.get(k) for k in _EDITABLE}
    with ctx.store.transaction() as tx:  # checked inside the write lock: parallel creates make one
        if find_by_name(tx.store, name) is not None:
            raise conflict(f"Project with the same name already exists: name={name}", SUBCODE_PROJECT_EXISTS)
        project_id, _ = ensure_project(tx, name, ctx.user, **fields)
    return {"id": project_id}


@endpoint("projects.get_by_id")
def get_by_id(ctx: RequestContext, body: dict) -> dict:
    """One project."""
    return {"project": load(ctx.store, "projects", require_str(body, "project"))}


@endpoint("projects.get_all")
def get_all(ctx: RequestContext, body: dict) -> dict:
    """Projects filtered by name regex, tags, parent; hidden ones only with ``search_hidden``."""
    extra = []
    # like clearml-server's _hidden_query: explicit ids find hidden projects too (Dataset.list_datasets
    # maps its results' project ids to names this way)
    if not opt_bool(body, "search_hidden") and not body.get("id"):
        extra.append(not_hidden)
    parents = str_list(body, "parent")
    if parents:
        extra.append(lambda p: p.get("parent") in parents)
    elif opt_bool(body, "shallow_search"):
        extra.append(lambda p: "/" not in p["name"])
    projects = run_query(ctx.store.all("projects"), body, options=PROJECT_QUERY, extra=extra)
    return {"projects": projects}


endpoint("projects.get_all_ex")(get_all)


@endpoint("projects.update")
def update(ctx: RequestContext, body: dict) -> dict:
    """Edit description, tags, system tags, default output destination or name."""
    project_id = require_str(body, "project")
    new_name = opt_str(body, "name")
    with ctx.store.transaction() as tx:
        doc = load_for_update(tx, "projects", project_id)
        fields = {k: body[k] for k in _EDITABLE if k in body}
        for key in ("tags", "system_tags"):
            if key in fields:
                fields[key] = str_list(body, key)
        if new_name is not None and _normalize(new_name) != doc["name"]:
            new_name = _normalize(new_name)
            if find_by_name(tx.store, new_name) is not None:
                raise conflict(
                    f"Project with the same name already exists: name={new_name}", SUBCODE_PROJECT_EXISTS
                )
            _rename(tx, doc, new_name)
            fields["name"] = new_name
        doc.update(fields)
        doc["last_update"] = utc_now()
        tx.put("projects", doc)
    return {"updated": 1, "fields": fields}


def _rename(tx: Transaction, doc: dict[str, Any], new_name: str) -> None:
    old = doc["name"]
    for child in tx.store.all("projects"):
        if child["name"].startswith(old + "/"):
            moved = tx.get("projects", child["id"])
            moved["name"] = new_name + moved["name"][len(old) :]
            tx.put("projects", moved)
    doc["name"], doc["basename"] = new_name, new_name.rsplit("/", 1)[-1]


@endpoint("projects.delete")
def delete(ctx: RequestContext, body: dict) -> dict:
    """Delete a project and its subprojects; refused while it holds tasks/models unless ``force``."""
    project_id = require_str(body, "project")
    force = opt_bool(body, "force")
    delete_contents = opt_bool(body, "delete_contents")
    load(ctx.store, "projects", project_id)
    scope = subproject_ids(ctx.store, [project_id])
    tasks = [t for t in ctx.store.all("tasks") if t.get("project") in scope]
    models = [m for m in ctx.store.all("models") if m.get("project") in scope]
    if (tasks or models) and not force and not delete_contents:
        raise conflict(
            f"Project has tasks or models: project={project_id} tasks={len(tasks)} models={len(models)}",
            SUBCODE_PROJECT_HAS_TASKS,
        )
    with ctx.store.transaction() as tx:
        for collection, docs in (("tasks", tasks), ("models", models)):
            for doc in docs:
                if delete_contents:
                    tx.delete(collection, doc["id"])
                else:
                    moved = tx.get(collection, doc["id"])
                    moved["project"] = None
                    tx.put(collection, moved)
        for pid in scope:
            tx.delete("projects", pid)
    return {
        "deleted": len(scope),
        "disassociated_tasks": 0 if delete_contents else len(tasks),
        "deleted_tasks": len(tasks) if delete_contents else 0,
        "deleted_models": len(models) if delete_contents else 0,
        "urls": {},
    }


def _tags_of(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    tags = sorted({t for d in docs for t in d.get("tags") or ()})
    system_tags = sorted({t for d in docs for t in d.get("system_tags") or ()})
    return {"tags": tags, "system_tags": system_tags}


@endpoint("projects.get_task_tags")
def get_task_tags(ctx: RequestContext, body: dict) -> dict:
    """All tags used by tasks (optionally of some projects)."""
    projects = str_list(body, "projects")
    docs = [t for t in ctx.store.all("tasks") if not projects or t.get("project") in projects]
    return _tags_of(docs)


@endpoint("projects.get_model_tags")
def get_model_tags(ctx: RequestContext, body: dict) -> dict:
    """All tags used by models (optionally of some projects)."""
    projects = str_list(body, "projects")
    docs = [m for m in ctx.store.all("models") if not projects or m.get("project") in projects]
    return _tags_of(docs)


@endpoint("projects.get_unique_metric_variants")
def get_unique_metric_variants(ctx: RequestContext, body: dict) -> dict:
    """The metric/variant pairs reported by the tasks of a project (from ``last_metrics``)."""
    project = opt_str(body, "project")
    scope = subproject_ids(ctx.store, [project]) if project else None
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for task in ctx.store.all("tasks"):
        if scope is not None and task.get("project") not in scope:
            continue
        for metric_hash, variants in (task.get("last_metrics") or {}).items():
            for variant_hash, entry in variants.items():
                key = (entry.get("metric", ""), entry.get("variant", ""))
                seen[key] = {
                    "metric": key[0],
                    "metric_hash": metric_hash,
                    "variant": key[1],
                    "variant_hash": variant_hash,
                }
    return {"metrics": sorted(seen.values(), key=lambda m: (m["metric"], m["variant"]))}
