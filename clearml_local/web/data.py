"""JSON reads for the page scripts: chart data (downsampled by the server), the console tail."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clearml_local.web.core import data, state
from clearml_local.web.views import compare_ids

#: Points per series the charts ask for (the server averages the events into this many buckets).
CHART_SAMPLES = 1000
#: Console lines per request.
LOG_BATCH = 500


def _key(request: Request) -> str:
    return "timestamp" if request.query_params.get("x") == "time" else "iter"


@data
async def scalars(request: Request) -> Response:
    """``{metric: {variant: {name, x, y}}}`` of one task."""
    body = {"task": request.path_params["task"], "key": _key(request), "samples": CHART_SAMPLES}
    return JSONResponse(await state(request).gateway.call("events.scalar_metrics_iter_histogram", body))


@data
async def compare_scalars(request: Request) -> Response:
    """``{metrics: {metric: {variant: {task_id: {name, x, y}}}}}`` of several tasks."""
    ids = compare_ids(request.query_params.getlist("ids"))
    body = {"tasks": ids, "key": _key(request), "samples": CHART_SAMPLES}
    reply = await state(request).gateway.call("events.multi_task_scalar_metrics_iter_histogram", body)
    return JSONResponse(reply)


@data
async def console(request: Request) -> Response:
    """Console lines, oldest first: the latest batch, or those after ``after`` (a timestamp)."""
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    body: dict = {"task": task["id"], "batch_size": LOG_BATCH}
    after = request.query_params.get("after")
    if after:
        try:
            body.update(from_timestamp=float(after), navigate_earlier=False, order="asc")
        except ValueError:
            return JSONResponse({"error": "after: expected a timestamp"}, status_code=400)
    else:
        body["order"] = "asc"
    reply = await gw.call("events.get_task_log", body)
    lines = [{"timestamp": e.get("timestamp"), "msg": e.get("msg", "")} for e in reply["events"]]
    return JSONResponse({"lines": lines, "total": reply.get("total"), "status": task["status"]})


ROUTES = [
    Route("/data/tasks/{task}/scalars", scalars),
    Route("/data/tasks/{task}/console", console),
    Route("/data/compare/scalars", compare_scalars),
]
