"""The web UI's pages (GET): projects, experiments, a task's tabs, compare, pipelines, queues, models."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from clearml_local.web import views
from clearml_local.web.core import page, render, state

#: Rows per experiments-table page (the ``size`` query parameter may ask for 10..500).
PAGE_SIZE = 50
_SORTABLE = {"name", "type", "status", "last_update", "started", "created", "last_iteration"}
_TABLE_FIELDS = [
    "id", "name", "type", "status", "tags", "system_tags", "project", "execution.queue", "last_worker",
    "started", "last_update", "last_iteration", "parent", "comment",
]  # fmt: skip
TASK_TYPES = ("training", "testing", "inference", "data_processing", "application", "monitor",
              "controller", "optimizer", "service", "qc", "custom")  # fmt: skip
STATUSES = ("created", "queued", "in_progress", "stopped", "completed", "published", "failed", "closed")


async def home(request: Request) -> Response:
    return RedirectResponse("/projects", status_code=303)


@page
async def projects(request: Request) -> Response:
    gw = state(request).gateway
    found = (await gw.call("projects.get_all", {"order_by": ["name"]}))["projects"]
    # projects.get_all_ex has no ``include_stats`` here: count what each project's table shows
    # (tasks not archived) from one tasks.get_all, and the running ones from a second, served by
    # the status index. No ``only_fields``: in process, the handler then hands back the store's
    # read-only documents instead of building 10,000 projections (2.5x slower, benchmarks/web_ui.py).
    shown: dict[str, Any] = {"system_tags": ["-archived"]}
    tasks = await gw.tasks(shown)
    running = await gw.tasks({**shown, "status": ["in_progress"]})
    counts = views.task_counts(tasks, running)
    return render(request, "projects.html", projects=found, counts=counts, total=len(tasks))


def _table_query(request: Request, project: str) -> dict[str, Any]:
    """The ``tasks.get_all`` body and the shown settings for the experiments table's query string."""
    q = request.query_params
    metrics = views.chosen_metrics(q.getlist("metric"))
    sort = q.get("sort") or "-last_update"
    field = sort.lstrip("-")
    if field.startswith("metric:"):
        order = ("-" if sort.startswith("-") else "") + views.metric_path(field[7:]) + ".value"
    else:
        order = sort if field in _SORTABLE else "-last_update"
    try:
        number = max(0, int(q.get("page") or 0))
        size = min(500, max(10, int(q.get("size") or PAGE_SIZE)))
    except ValueError:
        number, size = 0, PAGE_SIZE
    body: dict[str, Any] = {
        "order_by": [order],
        "page": number,
        "page_size": size + 1,  # one more tells whether there is a next page
        "only_fields": _TABLE_FIELDS + [views.metric_path(m) for m in metrics],
        "system_tags": ["archived"] if q.get("archived") == "1" else ["-archived"],
    }
    if project != "*":
        body["project"] = [project]
    for key in ("status", "type"):
        values = [v for v in q.getlist(key) if v]
        if values:
            body[key] = values
    if q.get("tag"):
        body["tags"] = [q["tag"]]
    if q.get("name"):
        body["name"] = re.escape(q["name"])
    shown = {"metrics": metrics, "sort": sort, "page": number, "size": size}
    return {"body": body, "shown": shown}


async def experiments_rows(request: Request, project: str) -> dict[str, Any]:
    """The experiments table's rows and settings (also used by the benchmark and auto-refresh)."""
    gw = state(request).gateway
    query = _table_query(request, project)
    rows = await gw.tasks(query["body"])
    size = query["shown"]["size"]
    queue_ids = sorted({(t.get("execution") or {}).get("queue") for t in rows[:size]} - {None, ""})
    queues = {}
    if queue_ids:
        found = (await gw.call("queues.get_all", {"id": queue_ids, "only_fields": ["id", "name"]}))["queues"]
        queues = {q["id"]: q["name"] for q in found}
    return {"rows": rows[:size], "has_next": len(rows) > size, "queues": queues, **query["shown"]}


@page
async def experiments(request: Request) -> Response:
    project_id = request.path_params["project"]
    gw = state(request).gateway
    project = None
    if project_id != "*":
        project = (await gw.call("projects.get_by_id", {"project": project_id}))["project"]
    table = await experiments_rows(request, project_id)
    return render(
        request,
        "experiments.html",
        project=project,
        project_id=project_id,
        statuses=STATUSES,
        types=TASK_TYPES,
        query=request.query_params,
        metric_query=views.metric_query(table["metrics"]),
        **table,
    )


@page
async def task_page(request: Request) -> Response:
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    tab = views.tab_for_tail(request.path_params.get("tail", ""))
    metrics = views.chosen_metrics(request.query_params.getlist("metric"))
    context: dict[str, Any] = {"task": task, "tab": tab, "base": _task_base(task)}
    context.update(first_metrics=views.chart_titles_first(metrics), metric_query=views.metric_query(metrics))
    if tab in ("info", "execution"):
        context["project"] = await _project_name(request, task.get("project"))
        if task.get("parent"):
            found = await gw.tasks({"id": [task["parent"]], "only_fields": ["id", "name", "project"]})
            context["parent"] = found[0] if found else None
        queue_id = (task.get("execution") or {}).get("queue")
        if queue_id:
            found = (await gw.call("queues.get_all", {"id": [queue_id]}))["queues"]
            context["queue"] = found[0] if found else None
    elif tab == "configuration":
        context["hyperparams"] = views.hyperparam_rows(task)
    elif tab == "scalars":
        context["summary"] = views.metric_summary(task)
    elif tab == "plots":
        context["plots"] = (await gw.call("events.get_task_plots", {"task": task["id"], "no_scroll": True}))[
            "plots"
        ]
    elif tab == "debug":
        reply = await gw.call("events.debug_images", {"metrics": [{"task": task["id"]}], "iters": 5})
        images = [
            {**ev, "link": views.files_link(ev.get("url"), state(request).files_host)}
            for item in reply["metrics"]
            for it in item["iterations"]
            for ev in it["events"]
        ]
        context["images"] = images
    elif tab == "artifacts":
        files_host = state(request).files_host
        context["artifacts"] = [
            {**a, "link": views.files_link(a.get("uri"), files_host)}
            for a in (task.get("execution") or {}).get("artifacts") or []
        ]
    elif tab == "models":
        context["models"] = await _task_models(request, task)
    elif tab == "trials":
        context.update(await _trials(request, task))
    context["queues"] = (
        await gw.call("queues.get_all", {"order_by": ["name"], "only_fields": ["id", "name"]})
    )["queues"]
    return render(request, "task.html", **context)


def _task_base(task: dict[str, Any]) -> str:
    return f"/projects/{task.get('project') or '*'}/tasks/{task['id']}"


async def _project_name(request: Request, project_id: str | None) -> str:
    if not project_id:
        return ""
    found = (await state(request).gateway.call("projects.get_all", {"id": [project_id]}))["projects"]
    return found[0]["name"] if found else project_id


async def _task_models(request: Request, task: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    refs = task.get("models") or {}
    ids = [m.get("model") for kind in ("input", "output") for m in refs.get(kind) or [] if m.get("model")]
    found = {}
    if ids:
        found = views.by_id((await state(request).gateway.call("models.get_all", {"id": ids}))["models"])
    return {
        kind: [{**m, "doc": found.get(m.get("model"))} for m in refs.get(kind) or []]
        for kind in ("input", "output")
    }


async def _trials(request: Request, task: dict[str, Any]) -> dict[str, Any]:
    """The HPO trials (child tasks) of an optimizer, best objective first."""
    objective = request.query_params.get("objective") or views.DEFAULT_METRIC
    children = await state(request).gateway.tasks({"parent": task["id"], "search_hidden": True})
    ranked = sorted(
        children,
        key=lambda t: (views.last_value(t, objective) is None, -(views.last_value(t, objective) or 0.0)),
    )
    diff = views.param_diff(ranked)
    return {
        "trials": ranked,
        "objective": objective,
        "trial_params": [r["name"] for r in diff if r["differs"]],
        "trial_values": {t["id"]: views.flat_params(t) for t in ranked},
    }


@page
async def compare(request: Request) -> Response:
    ids = list(dict.fromkeys(views.compare_ids(request.query_params.getlist("ids"))))
    gw = state(request).gateway
    tasks = []
    for task_id in ids:
        tasks.append(await gw.task(task_id))
    first = views.chart_titles_first(views.chosen_metrics(request.query_params.getlist("metric")))
    return render(
        request, "compare.html", tasks=tasks, diff=views.param_diff(tasks), ids=ids, first_metrics=first
    )


@page
async def pipelines(request: Request) -> Response:
    gw = state(request).gateway
    runs = await gw.tasks(
        {
            "type": ["controller"],
            "order_by": ["-created"],
            "search_hidden": True,
            "system_tags": ["-archived"],
        }
    )
    return render(request, "pipelines.html", runs=runs)


@page
async def pipeline_run(request: Request) -> Response:
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    layers = views.pipeline_dag(task)
    jobs = [s["job_id"] for layer in layers for s in layer if s.get("job_id")]
    step_tasks = views.by_id(await gw.tasks({"id": jobs, "search_hidden": True})) if jobs else {}
    args = sorted(
        ((task.get("hyperparams") or {}).get("Args") or {}).values(), key=lambda p: p.get("name", "")
    )
    queues = (await gw.call("queues.get_all", {"order_by": ["name"]}))["queues"]
    return render(
        request, "pipeline.html", task=task, layers=layers, step_tasks=step_tasks, args=args, queues=queues
    )


@page
async def queues_page(request: Request) -> Response:
    gw = state(request).gateway
    found = (await gw.call("queues.get_all", {"order_by": ["name"]}))["queues"]
    ids = [e["task"] for q in found for e in q.get("entries") or []]
    names = views.by_id(await gw.tasks({"id": ids, "only_fields": ["id", "name", "project"]})) if ids else {}
    return render(request, "queues.html", queues=found, names=names)


@page
async def workers_page(request: Request) -> Response:
    found = (await state(request).gateway.call("workers.get_all", {}))["workers"]
    return render(request, "workers.html", workers=found)


@page
async def models_page(request: Request) -> Response:
    gw = state(request).gateway
    body: dict[str, Any] = {"order_by": ["-created"], "system_tags": ["-archived"]}
    if request.query_params.get("tag"):
        body["tags"] = [request.query_params["tag"]]
    found = (await gw.call("models.get_all", body))["models"]
    return render(request, "models.html", models=found, tag=request.query_params.get("tag", ""))


@page
async def model_page(request: Request) -> Response:
    gw = state(request).gateway
    model = (await gw.call("models.get_by_id", {"model": request.path_params["model"]}))["model"]
    creator = None
    if model.get("task"):
        found = await gw.tasks({"id": [model["task"]], "only_fields": ["id", "name", "project"]})
        creator = found[0] if found else None
    link = views.files_link(model.get("uri"), state(request).files_host)
    return render(request, "model.html", model=model, creator=creator, link=link)


@page
async def datasets_page(request: Request) -> Response:
    found = await state(request).gateway.tasks(
        {"system_tags": ["dataset"], "order_by": ["-created"], "search_hidden": True}
    )
    return render(request, "datasets.html", datasets=found)


@page
async def dataset_page(request: Request) -> Response:
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    return render(request, "dataset.html", task=task, lineage=views.dataset_lineage(task))


ROUTES = [
    Route("/", home),
    Route("/projects", projects),
    Route("/projects/{project}", experiments),
    Route("/projects/{project}/experiments", experiments),
    Route("/projects/{project}/tasks", experiments),
    Route("/projects/{project}/experiments/{task}", task_page),
    Route("/projects/{project}/experiments/{task}/{tail:path}", task_page),
    Route("/projects/{project}/tasks/{task}", task_page),
    Route("/projects/{project}/tasks/{task}/{tail:path}", task_page),
    Route("/projects/{project}/models/{model}", model_page),
    Route("/compare", compare),
    Route("/pipelines", pipelines),
    Route("/pipelines/{project}/experiments/{task}", pipeline_run),
    Route("/pipelines/{project}/experiments/{task}/{tail:path}", pipeline_run),
    Route("/queues", queues_page),
    Route("/workers", workers_page),
    Route("/models", models_page),
    Route("/models/{model}", model_page),
    Route("/datasets", datasets_page),
    Route("/datasets/simple/{project}/experiments/{task}", dataset_page),
    Route("/datasets/{task}", dataset_page),
]
