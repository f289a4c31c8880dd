"""Latency of the web UI on a large database; prints one JSON object.

Against a real server process (API + web UI) on free ports in a temporary data dir, with
``--tasks`` tasks (seeded as in ``server_throughput.py``) and one task holding ``--events`` scalar
events (10 variants, ingested through ``events.add_batch``), a logged-in browser session measures
(p50/p95/max ms over ``--repeats`` requests):

* ``experiments_table``: the experiments table page of the project (50 rows, sorted by last update,
  with the mAP column), sorted by a metric, and filtered by name;
* ``chart_data``: ``/data/tasks/<id>/scalars``, the request the Scalars tab makes (server-side
  downsampling to the chart's ``samples``), beside the same API call ``events.scalar_metrics_iter_
  histogram`` made directly, so the UI's own overhead shows as a ratio;
* ``scalars_tab``: the Scalars tab page plus its chart data (what opening the tab costs);
* ``projects_page``: the projects list with each project's experiment counts (counted over every task).

Targets (issue 11): table <= 300 ms p95 with 10,000 tasks; chart data <= 200 ms p95 for 250,000
events (the event store's speed is measured and owned by ``server_throughput.py``).

Usage::

    .venv/bin/python benchmarks/web_ui.py [--tasks 10000] [--events 250000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_throughput import Server, _summary, bench_events, seed_tasks


def _timed(get: Any, url: str, repeats: int) -> dict[str, float]:
    get(url).raise_for_status()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        get(url).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return _summary(times)


def web_session(server: Server) -> tuple[requests.Session, str]:
    """A logged-in session of the web UI and its base URL."""
    state = json.loads((server.data_dir / "server.json").read_text())
    creds = json.loads((server.data_dir / "credentials.json").read_text())
    web = requests.Session()
    reply = web.post(
        f"{state['web_host']}/login",
        data={"access_key": creds["access_key"], "secret_key": creds["secret_key"]},
        allow_redirects=False,
    )
    if reply.status_code != 303:
        raise RuntimeError(f"web login failed: {reply.status_code}")
    return web, state["web_host"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the database")
    parser.add_argument("--events", type=int, default=250_000, help="scalar events of the charted task")
    parser.add_argument("--repeats", type=int, default=30, help="timed requests per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleetfl-web-bench-") as folder:
        server = Server(Path(folder))
        server.start()
        try:
            project, ids = seed_tasks(server, args.tasks)
            ingest = bench_events(server, ids[1], args.events, 10_000)
            web, base = web_session(server)
            table = f"{base}/projects/{project}/experiments"
            result: dict[str, Any] = {
                "tasks": args.tasks,
                "events": ingest["events"],
                "experiments_table": {
                    "default": _timed(web.get, f"{table}?metric=val/mAP", args.repeats),
                    "sorted_by_metric": _timed(
                        web.get, f"{table}?metric=val/mAP&sort=-metric:val/mAP", args.repeats
                    ),
                    "name_filter": _timed(web.get, f"{table}?name=bench-12&metric=val/mAP", args.repeats),
                    "all_projects": _timed(web.get, f"{base}/projects/*/experiments", args.repeats),
                },
                "projects_page": _timed(web.get, f"{base}/projects", args.repeats),
            }
            chart = _timed(web.get, f"{base}/data/tasks/{ids[1]}/scalars", args.repeats)
            body = {"task": ids[1], "key": "iter", "samples": 1000}
            api = _timed(
                lambda url: server.http.post(url, json=body),
                f"{server.api}/events.scalar_metrics_iter_histogram",
                args.repeats,
            )
            points = web.get(f"{base}/data/tasks/{ids[1]}/scalars").json()
            per_series = max(len(s["x"]) for variants in points.values() for s in variants.values())
            result["chart_data"] = {
                "web": chart,
                "api": api,
                "web_over_api_p50": round(chart["p50_ms"] / max(api["p50_ms"], 1e-6), 2),
                "points_per_series": per_series,
            }

            def open_tab(url: str) -> requests.Response:
                web.get(url).raise_for_status()
                return web.get(f"{base}/data/tasks/{ids[1]}/scalars")

            result["scalars_tab"] = _timed(
                open_tab, f"{base}/projects/{project}/tasks/{ids[1]}/info-output/metrics/scalar", args.repeats
            )
        finally:
            server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
