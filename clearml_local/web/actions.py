"""Login/logout and the state-changing requests (POST, session + CSRF token): task, queue,
pipeline and model actions.

Each one is one or a few endpoint calls; the server's state machine decides, and its refusal is
shown on the page the form came from.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from clearml_local.api import validation_error
from clearml_local.web.core import action, back, current_session, render, safe_next, state
from clearml_local.web.session import COOKIE_NAME, SESSION_TTL_S

#: The login form is three short fields: anything larger is refused before it is read.
MAX_LOGIN_BODY = 4096

_SIMPLE_TASK_ACTIONS = {
    # form action -> (endpoint, extra body, what the notice says)
    "dequeue": ("tasks.dequeue", {}, "dequeued"),
    "abort": ("tasks.stop", {}, "aborted"),
    "reset": ("tasks.reset", {}, "reset to draft"),
    "publish": ("tasks.publish", {}, "published"),
    "archive": ("tasks.archive", {}, "archived"),
}


def _field(request: Request, name: str, default: str = "") -> str:
    value = request.state.form.get(name)
    return value.strip() if isinstance(value, str) else default


def _task_url(task: dict[str, Any]) -> str:
    return f"/projects/{task.get('project') or '*'}/tasks/{task['id']}"


@action
async def task_action(request: Request) -> Response:
    """Dequeue / abort / reset / publish / archive / restore one task."""
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    name = request.path_params["action"]
    if name == "restore":
        await gw.call("tasks.unarchive_many", {"ids": [task["id"]]})
        return back(request, notice="restored")
    if name not in _SIMPLE_TASK_ACTIONS:
        return back(request, error=f"unknown action {name!r}")
    endpoint, extra, done = _SIMPLE_TASK_ACTIONS[name]
    body = {"task": task["id"], **extra}
    if name == "archive":
        body = {"tasks": [task["id"]]}
    await gw.call(endpoint, body)
    return back(request, notice=f"{task['name']}: {done}")


@action
async def clone(request: Request) -> Response:
    """Clone to a Draft with a new name; opens the clone's configuration."""
    gw = state(request).gateway
    source = await gw.task(request.path_params["task"])
    name = _field(request, "name") or f"Clone Of {source['name']}"
    reply = await gw.call("tasks.clone", {"task": source["id"], "new_task_name": name})
    clone_doc = await gw.task(reply["id"])
    return back(request, notice=f"cloned to draft {name!r}", to=_task_url(clone_doc) + "/hyper-params")


@action
async def enqueue(request: Request) -> Response:
    """Enqueue on the chosen queue (by id)."""
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    queue = _field(request, "queue")
    if not queue:
        raise validation_error("choose a queue")
    await gw.call("tasks.enqueue", {"task": task["id"], "queue": queue})
    return back(request, notice=f"{task['name']}: enqueued")


@action
async def edit_hyperparams(request: Request) -> Response:
    """Set the values of the form's ``hp:<section>/<name>`` fields (Drafts only: the server checks)."""
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    current = task.get("hyperparams") or {}
    items = []
    for key, value in request.state.form.multi_items():
        if not key.startswith("hp:") or not isinstance(value, str):
            continue
        section, _, name = key[3:].partition("/")
        old = (current.get(section) or {}).get(name)
        if old is None:
            raise validation_error(f"no hyperparameter {section}/{name} on task {task['id']}")
        if str(old.get("value", "")) != value:
            items.append({**old, "section": section, "name": name, "value": value})
    new_name, new_value = _field(request, "new_name"), _field(request, "new_value")
    if new_name:
        section, sep, name = new_name.partition("/")
        if not sep or not section or not name:
            raise validation_error(f"new parameter {new_name!r}: expected Section/name")
        items.append({"section": section, "name": name, "value": new_value, "type": "str"})
    if not items:
        return back(request, notice="nothing changed")
    await gw.call("tasks.edit_hyper_params", {"task": task["id"], "hyperparams": items})
    return back(request, notice=f"{len(items)} hyperparameter(s) saved")


@action
async def edit_configuration(request: Request) -> Response:
    """Replace one configuration object's text (Drafts only: the server checks)."""
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    name = _field(request, "name")
    old = (task.get("configuration") or {}).get(name)
    if old is None:
        raise validation_error(f"no configuration object {name!r} on task {task['id']}")
    value = request.state.form.get("value")
    item = {**old, "name": name, "value": value if isinstance(value, str) else ""}
    await gw.call("tasks.edit_configuration", {"task": task["id"], "configuration": [item]})
    return back(request, notice=f"configuration {name!r} saved")


@action
async def edit_tags(request: Request) -> Response:
    """Replace a task's tags (comma-separated; any status, like ClearML)."""
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    tags = [t.strip() for t in _field(request, "tags").split(",") if t.strip()]
    await gw.call("tasks.update", {"task": task["id"], "tags": tags})
    return back(request, notice="tags saved")


@action
async def bulk(request: Request) -> Response:
    """Archive / restore the selected tasks of the experiments table."""
    gw = state(request).gateway
    ids = [v for v in request.state.form.getlist("ids") if isinstance(v, str) and v]
    if not ids:
        return back(request, error="no experiment selected")
    what = _field(request, "what")
    if what == "archive":
        await gw.call("tasks.archive_many", {"ids": ids})
    elif what == "restore":
        await gw.call("tasks.unarchive_many", {"ids": ids})
    else:
        return back(request, error=f"unknown bulk action {what!r}")
    return back(request, notice=f"{len(ids)} experiment(s): {what}d")


@action
async def queue_entry(request: Request) -> Response:
    """Move a queued task up/down, or take it off its queue (dequeue)."""
    gw = state(request).gateway
    queue, task = request.path_params["queue"], _field(request, "task")
    move = request.path_params["move"]
    endpoints = {"up": "queues.move_task_forward", "down": "queues.move_task_backward"}
    if move == "remove":
        await gw.call("tasks.dequeue", {"task": task})
    elif move in endpoints:
        await gw.call(endpoints[move], {"queue": queue, "task": task})
    else:
        return back(request, error=f"unknown move {move!r}")
    return back(request, notice=f"task {task}: {move}", to="/queues")


@action
async def new_pipeline_run(request: Request) -> Response:
    """Clone a pipeline controller, set its ``Args`` from the form, enqueue it.

    The same as ``fleetfl pipeline enqueue``: the controller checks the edited ``Args`` when it starts
    on the agent (``pipelines.fleetfl_pipeline.main``) and fails with the bad parameter's name.
    """
    gw = state(request).gateway
    source = await gw.task(request.path_params["task"])
    queue = _field(request, "queue")
    if not queue:
        raise validation_error("choose a queue")
    args = (source.get("hyperparams") or {}).get("Args") or {}
    items = []
    for key, value in request.state.form.multi_items():
        if key.startswith("arg:") and isinstance(value, str) and key[4:] in args:
            items.append({**args[key[4:]], "section": "Args", "name": key[4:], "value": value})
    reply = await gw.call("tasks.clone", {"task": source["id"], "new_task_name": source["name"]})
    if items:
        await gw.call("tasks.edit_hyper_params", {"task": reply["id"], "hyperparams": items})
    await gw.call("tasks.enqueue", {"task": reply["id"], "queue": queue})
    run_page = f"/pipelines/{source.get('project') or '*'}/experiments/{reply['id']}"
    return back(request, notice="new run enqueued", to=run_page)


@action
async def model_action(request: Request) -> Response:
    """Publish a model, or replace its tags."""
    gw = state(request).gateway
    model = (await gw.call("models.get_by_id", {"model": request.path_params["model"]}))["model"]
    if request.path_params["action"] == "publish":
        await gw.call("models.publish_many", {"ids": [model["id"]]})
        return back(request, notice="model published")
    tags = [t.strip() for t in _field(request, "tags").split(",") if t.strip()]
    await gw.call("models.update", {"model": model["id"], "tags": tags})
    return back(request, notice="model tags saved")


async def login_form(request: Request) -> Response:
    if current_session(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")) or "/projects", status_code=303)
    return render(request, "login.html", next=safe_next(request.query_params.get("next")) or "/projects")


async def login(request: Request) -> Response:
    """Check the server's key pair; open a session (HttpOnly, SameSite=Strict cookie)."""
    if int(request.headers.get("content-length") or MAX_LOGIN_BODY + 1) > MAX_LOGIN_BODY:
        return PlainTextResponse("Login form too large (or without Content-Length)", status_code=413)
    form = await request.form(max_files=0, max_fields=8)
    access_key, secret_key = form.get("access_key"), form.get("secret_key")
    target = safe_next(form.get("next")) or "/projects"
    sessions = state(request).sessions
    if not (isinstance(access_key, str) and isinstance(secret_key, str)) or not sessions.check_keys(
        access_key.strip(), secret_key.strip()
    ):
        return render(request, "login.html", status=401, next=target, error="Wrong access key or secret key")
    _, cookie = sessions.open()
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME, cookie, max_age=SESSION_TTL_S, httponly=True, samesite="strict", path="/"
    )
    return response


@action
async def logout(request: Request) -> Response:
    """End the session and drop its cookie."""
    state(request).sessions.close(request.state.session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/actions/tasks/bulk", bulk, methods=["POST"]),
    Route("/actions/tasks/{task}/clone", clone, methods=["POST"]),
    Route("/actions/tasks/{task}/enqueue", enqueue, methods=["POST"]),
    Route("/actions/tasks/{task}/hyperparams", edit_hyperparams, methods=["POST"]),
    Route("/actions/tasks/{task}/configuration", edit_configuration, methods=["POST"]),
    Route("/actions/tasks/{task}/tags", edit_tags, methods=["POST"]),
    Route("/actions/tasks/{task}/{action}", task_action, methods=["POST"]),
    Route("/actions/queues/{queue}/{move}", queue_entry, methods=["POST"]),
    Route("/actions/pipelines/{task}/run", new_pipeline_run, methods=["POST"]),
    Route("/actions/models/{model}/{action}", model_action, methods=["POST"]),
]
