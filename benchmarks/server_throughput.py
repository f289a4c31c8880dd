"""Throughput of the embedded ClearML server; prints one JSON object.

Measures, against a real server process on free ports in a temporary data dir:

* ``events.events_per_s``: scalar events ingested through ``events.add_batch`` (json-lines
  batches of ``--batch`` events, as the SDK sends them; each reply comes after COMMIT) by one
  client from ``--ingest-threads`` threads, all into one task (10 series of ``loss``);
* ``histogram``: ``events.scalar_metrics_iter_histogram`` latency (p50/p95/max ms) on that task
  once it holds all ``--events`` events: by iteration with the default ``samples`` (what
  ``Task.get_reported_scalars`` and the scalar charts send) and with 2000, by timestamp and by ISO
  time. ``server_cpu_ms_per_call`` (and ``events_per_server_cpu_s`` for the ingest) is the server
  process's CPU time, which a busy machine inflates far less than the wall-clock latency;
* ``get_all``: ``tasks.get_all`` latency (p50/p95/max ms) with ``--tasks`` tasks in the database,
  for the queries the SDK, pipelines and HPO send (ids + status projection, a project page sorted
  by last update, a name regex, HPO's ``order_by`` on a ``last_metrics`` value);
* ``files``: file-server upload and download MB/s for a ``--file-mb`` object.

Usage::

    .venv/bin/python benchmarks/server_throughput.py [--tasks 10000] [--events 250000]
    .venv/bin/python benchmarks/server_throughput.py --parts events   # ingest + histogram only

The 10,000 tasks are seeded fast: one task is created through the API, then the server is stopped,
its stored document is copied under new ids straight into the SQLite file, and the server restarts
(so every document has exactly the shape ``tasks.create`` gives it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
FREE_PORTS = ("--api-port", "0", "--files-port", "0", "--web-port", "0")
#: Series the ingested events are spread over (``loss/v0`` ... ``loss/v9``).
HISTOGRAM_VARIANTS = 10
PARTS = ("events", "get_all", "files")


class Server:
    """A ``python -m clearml_local.server`` process on free ports over ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = self.files = ""
        self.http = requests.Session()

    def start(self, timeout: float = 30.0) -> None:
        state_file = self.data_dir / "server.json"
        state_file.unlink(missing_ok=True)
        log = (self.data_dir / "bench-server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clearml_local.server", "--data", str(self.data_dir), *FREE_PORTS],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not state_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start, see {self.data_dir / 'bench-server.log'}")
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        self.api, self.files = state["api_host"], state["files_host"]
        creds = json.loads((self.data_dir / "credentials.json").read_text())
        reply = self.http.get(f"{self.api}/auth.login", auth=(creds["access_key"], creds["secret_key"]))
        reply.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {reply.json()['data']['token']}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all threads; Linux ``/proc``): unlike
        wall-clock latency, it hardly depends on what else runs on the machine."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.post(f"{self.api}/v2.23/{name}", json=body)
        payload = reply.json()
        if payload["meta"]["result_code"] != 200:
            raise RuntimeError(f"{name}: {payload['meta']['result_msg']}")
        return payload["data"]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def seed_tasks(server: Server, count: int) -> tuple[str, list[str]]:
    """Create ``count`` tasks (one through the API, the rest as copies); return project and ids."""
    project = server.call(
        "projects.create", {"name": f"bench-{uuid.uuid4().hex[:6]}", "description": "bench"}
    )["id"]
    first = server.call("tasks.create", {"name": "bench-0", "type": "training", "project": project})["id"]
    server.stop()
    db = sqlite3.connect(server.data_dir / "server.db")
    (doc_text,) = db.execute("SELECT doc FROM tasks WHERE id = ?", (first,)).fetchone()
    template = json.loads(doc_text)
    ids = [first]
    rows = []
    for i in range(1, count):
        doc = dict(template, id=uuid.uuid4().hex, name=f"bench-{i}", parent=first if i % 10 == 0 else None)
        doc["last_metrics"] = {
            _md5("val"): {_md5("mAP"): {"metric": "val", "variant": "mAP", "value": (i % 997) / 997}}
        }
        ids.append(doc["id"])
        rows.append((doc["id"], json.dumps(doc)))
    with db:
        db.executemany("INSERT INTO tasks (id, doc) VALUES (?, ?)", rows)
    db.close()
    server.start()
    return project, ids


def bench_get_all(server: Server, project: str, ids: list[str], repeats: int) -> dict[str, Any]:
    """Latency of typical ``tasks.get_all`` queries (ms)."""
    order = f"-last_metrics.{_md5('val')}.{_md5('mAP')}.value"
    queries = {
        "ids_status": {
            "id": ids[:: max(1, len(ids) // 10)][:10],
            "only_fields": ["status", "status_message"],
        },
        "project_page": {
            "project": [project],
            "order_by": ["-last_update"],
            "page": 0,
            "page_size": 100,
            "only_fields": ["id", "name", "status", "last_update"],
        },
        "name_regex": {"name": "^bench-12", "only_fields": ["id", "name"]},
        "hpo_top": {
            "parent": ids[0],
            "order_by": [order],
            "page_size": 1,
            "only_fields": ["id", "last_metrics"],
        },
    }
    result: dict[str, Any] = {}
    everything: list[float] = []
    for label, body in queries.items():
        server.call("tasks.get_all", body)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            server.call("tasks.get_all", body)
            times.append((time.perf_counter() - start) * 1000)
        everything += times
        result[label] = _summary(times)
    result["all"] = _summary(everything)
    return result


def _summary(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(ordered[-1], 2),
    }


def _scalar_batches(task_id: str, total: int, batch: int, variants: int) -> list[bytes]:
    """json-lines bodies of ``total`` scalar events: ``variants`` series of ``loss``, one point each
    per iteration, timestamps 1 ms apart (what a training loop reports)."""
    bodies = []
    for start in range(0, total, batch):
        lines = [
            json.dumps(
                {
                    "timestamp": 1_700_000_000_000 + n,
                    "type": "training_stats_scalar",
                    "task": task_id,
                    "iter": n // variants,
                    "metric": "loss",
                    "variant": f"v{n % variants}",
                    "value": (n % 1000) / 1000,
                }
            )
            for n in range(start, min(start + batch, total))
        ]
        bodies.append("\n".join(lines).encode())
    return bodies


def bench_events(server: Server, task_id: str, total: int, batch: int, threads: int) -> dict[str, Any]:
    """Scalar events per second through ``events.add_batch`` (json-lines, one reply per batch),
    sent by one client from ``threads`` threads (each its own HTTP connection)."""
    url = f"{server.api}/v2.23/events.add_batch"
    headers = {"Content-Type": "application/json-lines", **server.http.headers}
    bodies = _scalar_batches(task_id, total, batch, HISTOGRAM_VARIANTS)

    def send(share: list[bytes]) -> int:
        added = 0
        with requests.Session() as http:
            for body in share:
                reply = http.post(url, data=body, headers=headers).json()
                if reply["meta"]["result_code"] != 200 or reply["data"]["errors"]:
                    raise RuntimeError(f"add_batch failed: {reply['meta']['result_msg']} {reply['data']}")
                added += reply["data"]["added"]
        return added

    cpu, start = server.cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        added = sum(pool.map(send, [bodies[i::threads] for i in range(threads)]))
    elapsed, cpu = time.perf_counter() - start, server.cpu_seconds() - cpu
    return {
        "events": added,
        "batch": batch,
        "threads": threads,
        "seconds": round(elapsed, 3),
        "events_per_s": round(added / elapsed),
        "events_per_server_cpu_s": round(added / cpu) if cpu else None,
    }


def bench_histogram(server: Server, task_id: str, repeats: int) -> dict[str, Any]:
    """Latency (ms) of ``events.scalar_metrics_iter_histogram`` on the task the ingest filled, as
    ``Task.get_reported_scalars`` sends it (``key`` iter, default ``samples``) and by time."""
    bodies = {
        "iter_default_samples": {"task": task_id, "key": "iter"},
        "iter_2000_samples": {"task": task_id, "key": "iter", "samples": 2000},
        "timestamp_500_samples": {"task": task_id, "key": "timestamp", "samples": 500},
        "iso_time_max_samples": {"task": task_id, "key": "iso_time", "samples": 6000},
    }
    result: dict[str, Any] = {}
    for label, body in bodies.items():
        reply = server.call("events.scalar_metrics_iter_histogram", body)  # warm-up
        points = max(len(curve["x"]) for curve in reply["loss"].values())
        times = []
        cpu = server.cpu_seconds()
        for _ in range(repeats):
            start = time.perf_counter()
            server.call("events.scalar_metrics_iter_histogram", body)
            times.append((time.perf_counter() - start) * 1000)
        cpu_ms = (server.cpu_seconds() - cpu) * 1000 / repeats
        result[label] = {
            **_summary(times),
            "server_cpu_ms_per_call": round(cpu_ms, 1),
            "series": len(reply["loss"]),
            "points_per_series": points,
        }
    return result


def bench_files(server: Server, size_mb: int, repeats: int) -> dict[str, Any]:
    """Upload and download MB/s of one ``size_mb`` object through the file server."""
    payload = os.urandom(size_mb * 1024 * 1024)
    up, down = [], []
    for i in range(repeats):
        name = f"/bench/task.{i}/artifacts/blob/blob.bin"
        start = time.perf_counter()
        reply = server.http.post(f"{server.files}/", files={name: ("blob.bin", payload)})
        reply.raise_for_status()
        up.append(size_mb / (time.perf_counter() - start))
        start = time.perf_counter()
        received = 0
        with server.http.get(f"{server.files}{name}", stream=True) as reply:
            reply.raise_for_status()
            for chunk in reply.iter_content(1024 * 1024):
                received += len(chunk)
        down.append(size_mb / (time.perf_counter() - start))
        if received != len(payload):
            raise RuntimeError(f"downloaded {received} bytes, expected {len(payload)}")
    return {
        "object_mb": size_mb,
        "upload_mb_per_s": round(statistics.median(up), 1),
        "download_mb_per_s": round(statistics.median(down), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the database for get_all")
    parser.add_argument("--events", type=int, default=250_000, help="scalar events to ingest")
    parser.add_argument("--batch", type=int, default=10_000, help="events per add_batch request")
    parser.add_argument("--ingest-threads", type=int, default=3, help="client threads sending batches")
    parser.add_argument("--histogram-repeats", type=int, default=20, help="timed calls per histogram")
    parser.add_argument("--get-all-repeats", type=int, default=50, help="timed calls per get_all query")
    parser.add_argument("--file-mb", type=int, default=64, help="size of the file-server object")
    parser.add_argument("--file-repeats", type=int, default=3)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="fleetfl-bench-") as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            project, ids = seed_tasks(server, args.tasks if "get_all" in parts else 1)
            result: dict[str, Any] = {
                "cpu_count": os.cpu_count(),
                "load_avg_1m_at_start": load,  # other jobs on the machine slow every number down
                "tasks": len(ids),
            }
            if "events" in parts:
                result["events"] = bench_events(server, ids[0], args.events, args.batch, args.ingest_threads)
                result["histogram"] = bench_histogram(server, ids[0], args.histogram_repeats)
            if "get_all" in parts:
                result["get_all"] = bench_get_all(server, project, ids, args.get_all_repeats)
            if "files" in parts:
                result["files"] = bench_files(server, args.file_mb, args.file_repeats)
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
