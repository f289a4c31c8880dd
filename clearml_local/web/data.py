"""JSON reads for the page scripts: chart data (downsampled by the server), the console tail."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clearml_local.events import MAX_BATCH_SIZE
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


def _console_cursor(lines: list[dict], after: float | None, skip: int) -> dict[str, float | int | None]:
    """Where the next read starts: the last line's timestamp and how many lines at it were read."""
    if not lines:
        return {"after": after, "skip": skip}
    last = lines[-1]["timestamp"]
    at_last = sum(1 for line in lines if line["timestamp"] == last)
    return {"after": last, "skip": at_last + (skip if last == after else 0)}


@data
async def console(request: Request) -> Response:
    """Console lines, oldest first: the latest batch, or the next ones after a cursor.

    ``events.get_task_log`` pages by timestamp (``from_timestamp`` is exclusive), and several lines
    can share a millisecond: reading "after the last timestamp" would skip a line written in the
    same millisecond as the last one read. So the cursor is ``after`` (the last timestamp read) and
    ``skip`` (how many lines at that timestamp were read); the next read starts *at* ``after`` and
    drops those ``skip`` lines (lines of one timestamp come back in the order they were stored).
    The reply's ``cursor`` is the next read's; ``more`` says a full batch came back.
    """
    gw = state(request).gateway
    task = await gw.task(request.path_params["task"])
    body: dict = {"task": task["id"], "order": "asc"}
    after: float | None = None
    skip = 0
    if request.query_params.get("after"):
        try:
            after = float(request.query_params["after"])
            skip = max(0, int(request.query_params.get("skip") or 0))
        except ValueError:
            return JSONResponse({"error": "after: expected a timestamp, skip: a count"}, status_code=400)
        # ``from_timestamp`` is exclusive: after - 1 starts at or before ``after`` (lines before it
        # are dropped below; timestamps are whole milliseconds, so there are none).
        body.update(from_timestamp=after - 1, navigate_earlier=False)
    body["batch_size"] = min(LOG_BATCH + skip, MAX_BATCH_SIZE)
    reply = await gw.call("events.get_task_log", body)
    events = reply["events"]
    read = len(events)
    if after is not None:
        events = [e for e in events if e.get("timestamp", after) >= after]
        events = events[min(skip, sum(1 for e in events if e.get("timestamp") == after)) :]
    else:
        events = events[-LOG_BATCH:]
    lines = [{"timestamp": e.get("timestamp"), "msg": e.get("msg", "")} for e in events]
    return JSONResponse(
        {
            "lines": lines,
            "cursor": _console_cursor(lines, after, skip),
            "more": read >= body["batch_size"],
            "total": reply.get("total"),
            "status": task["status"],
        }
    )


ROUTES = [
    Route("/data/tasks/{task}/scalars", scalars),
    Route("/data/tasks/{task}/console", console),
    Route("/data/compare/scalars", compare_scalars),
]
