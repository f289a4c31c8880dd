"""Durability: SIGKILL the server while events and tasks stream in; every acknowledged write survives.

A write is acknowledged when its HTTP reply says 200 (the server replies after COMMIT, and the
database runs WAL with synchronous=FULL). Writes in flight at the kill may or may not be there;
acknowledged ones must all be.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.clearml import start_server, stop_process

EVENTS_PER_BATCH = 200


class ServerProcess:
    """The embedded server process over ``data_dir`` (see ``tests/fixtures/clearml.py``), killable."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc, state = start_server(data_dir)
        self.api = state["api_host"]
        self.files = state["files_host"]
        creds = json.loads((data_dir / "credentials.json").read_text())
        reply = requests.get(
            f"{self.api}/auth.login", auth=(creds["access_key"], creds["secret_key"]), timeout=30
        )
        self.token = reply.json()["data"]["token"]

    def session(self) -> requests.Session:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {self.token}"
        return http

    def call(self, http: requests.Session, name: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = http.post(f"{self.api}/v2.23/{name}", json=body, timeout=30)
        payload = reply.json()
        assert payload["meta"]["result_code"] == 200, payload["meta"]["result_msg"]
        return payload["data"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)


def stream_events(server: ServerProcess, task_id: str, acked: list[int], stop: threading.Event) -> None:
    """Send batches of scalars (batch k = iterations k*200 .. k*200+199); record acknowledged k."""
    http = server.session()
    k = 0
    while not stop.is_set():
        lines = [
            json.dumps(
                {
                    "type": "training_stats_scalar",
                    "task": task_id,
                    "iter": k * EVENTS_PER_BATCH + i,
                    "metric": "loss",
                    "variant": "train",
                    "value": float(i),
                }
            )
            for i in range(EVENTS_PER_BATCH)
        ]
        try:
            reply = http.post(
                f"{server.api}/v2.23/events.add_batch",
                data="\n".join(lines),
                headers={"Content-Type": "application/json-lines"},
                timeout=30,
            )
            data = reply.json()
        except (requests.RequestException, ValueError):
            return  # the server is gone
        if reply.status_code == 200 and data["data"]["added"] == EVENTS_PER_BATCH:
            acked.append(k)
        k += 1


def stream_tasks(server: ServerProcess, project: str, acked: list[str], stop: threading.Event) -> None:
    """Create tasks one after another; record the ids of acknowledged ones."""
    http = server.session()
    i = 0
    while not stop.is_set():
        try:
            reply = http.post(
                f"{server.api}/v2.23/tasks.create",
                json={"name": f"durable-{i}", "type": "training", "project": project},
                timeout=30,
            )
            data = reply.json()
        except (requests.RequestException, ValueError):
            return
        if reply.status_code == 200:
            acked.append(data["data"]["id"])
        i += 1


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir)
    try:
        http = server.session()
        project = server.call(http, "projects.create", {"name": "durability", "description": "test"})["id"]
        task_id = server.call(
            http, "tasks.create", {"name": "events", "type": "training", "project": project}
        )["id"]
        acked_batches: list[int] = []
        acked_tasks: list[str] = []
        stop = threading.Event()
        writers = [
            threading.Thread(target=stream_events, args=(server, task_id, acked_batches, stop)),
            threading.Thread(target=stream_tasks, args=(server, project, acked_tasks, stop)),
        ]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 30
        while (len(acked_batches) < 5 or len(acked_tasks) < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # mid-stream: both writers have requests in flight
        stop.set()
        for writer in writers:
            writer.join(timeout=60)
    finally:
        server.stop()
    assert len(acked_batches) >= 5 and len(acked_tasks) >= 20, "too few writes before the kill"

    server = ServerProcess(data_dir)
    try:
        http = server.session()
        found = server.call(http, "tasks.get_all", {"id": acked_tasks, "only_fields": ["id"]})["tasks"]
        assert {t["id"] for t in found} == set(acked_tasks)
        points = server.call(
            http, "events.get_scalar_metric_data", {"task": task_id, "metric": "loss", "no_scroll": True}
        )["events"]
        stored = {event["iter"] for event in points if event["variant"] == "train"}
        expected = {k * EVENTS_PER_BATCH + i for k in acked_batches for i in range(EVENTS_PER_BATCH)}
        assert expected <= stored
        # batches are atomic: every stored batch is complete
        assert len(stored) % EVENTS_PER_BATCH == 0
        task = server.call(http, "tasks.get_by_id", {"task": task_id})["task"]
        assert task["last_iteration"] >= max(expected)
    finally:
        server.stop()
    assert os.path.exists(data_dir / "server.db")
