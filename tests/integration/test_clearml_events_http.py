"""``events.*`` over HTTP on the real server: json-lines (chunked too), error envelopes, reset."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests


@pytest.fixture
def api(clearml_server) -> Iterator[tuple[str, requests.Session]]:
    http = requests.Session()
    reply = http.get(
        f"{clearml_server.api_host}/auth.login", auth=(clearml_server.access_key, clearml_server.secret_key)
    )
    http.headers["Authorization"] = f"Bearer {reply.json()['data']['token']}"
    yield f"{clearml_server.api_host}/v2.23", http
    http.close()


def call(api: tuple[str, requests.Session], name: str, body: dict, expect: int = 200) -> dict:
    base, http = api
    reply = http.post(f"{base}/{name}", json=body)
    payload = reply.json()
    assert reply.status_code == payload["meta"]["result_code"] == expect, payload["meta"]
    return payload


def new_task(api: tuple[str, requests.Session]) -> str:
    project = call(api, "projects.create", {"name": f"events-http-{uuid.uuid4().hex[:8]}", "description": ""})
    body = {"name": "events", "type": "training", "project": project["data"]["id"]}
    return call(api, "tasks.create", body)["data"]["id"]


def lines(task_id: str, count: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "type": "training_stats_scalar",
                "task": task_id,
                "iter": i,
                "metric": "m",
                "variant": "v",
                "value": i * 0.5,
            }
        ).encode()
        for i in range(count)
    ]


def test_chunked_json_lines_and_reset(api: tuple[str, requests.Session]) -> None:
    base, http = api
    task_id = new_task(api)

    def body() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked, as the SDK may send
        for line in lines(task_id, 50):
            yield line + b"\n"

    reply = http.post(
        f"{base}/events.add_batch", data=body(), headers={"Content-Type": "application/json-lines"}
    ).json()
    assert reply["data"] == {"added": 50, "errors": 0, "errors_info": {}}
    task = call(api, "tasks.get_by_id", {"task": task_id})["data"]["task"]
    assert task["last_iteration"] == 49
    hist = call(api, "events.scalar_metrics_iter_histogram", {"task": task_id})["data"]
    assert hist["m"]["v"]["y"][-1] == 24.5

    call(api, "tasks.reset", {"task": task_id, "force": True})
    assert call(api, "events.get_task_events", {"task": task_id})["data"]["total"] == 0


def test_error_envelopes(api: tuple[str, requests.Session]) -> None:
    base, http = api
    task_id = new_task(api)
    raw = b"\n".join([*lines(task_id, 2), b'{"type": "log", "task": '])
    reply = http.post(
        f"{base}/events.add_batch", data=raw, headers={"Content-Type": "application/json-lines"}
    )
    meta = reply.json()["meta"]
    assert reply.status_code == 400 and meta["result_code"] == 400 and "line 3" in meta["result_msg"]
    assert call(api, "events.get_task_events", {"task": task_id})["data"]["total"] == 0

    missing = call(api, "events.get_task_events", {"task": "no-such-task"}, expect=400)
    assert missing["meta"]["result_subcode"] == 100
    call(api, "events.get_task_log", {"task": task_id, "order": "sideways"}, expect=400)
    call(api, "events.get_task_events", {"task": task_id, "scroll_id": "not-a-scroll"}, expect=400)
    call(api, "events.scalar_metrics_iter_histogram", {}, expect=400)


def test_out_of_range_event_answers_400_and_the_rest_is_read_back(api: tuple[str, requests.Session]) -> None:
    base, http = api
    task_id = new_task(api)
    stamps = [1_765_000_000_000, 1_765_000_000_000_000, 1_765_000_000_002]  # the 2nd in microseconds
    events = [
        {**json.loads(line), "timestamp": ts} for line, ts in zip(lines(task_id, 3), stamps, strict=True)
    ]
    raw = "\n".join(json.dumps(event) for event in events).encode()
    reply = http.post(
        f"{base}/events.add_batch", data=raw, headers={"Content-Type": "application/json-lines"}
    )
    meta = reply.json()["meta"]
    assert reply.status_code == 400 and meta["result_subcode"] == 12, meta
    assert "event 2: field 'timestamp'" in meta["result_msg"] and "the other 2 stored" in meta["result_msg"]
    by_time = call(api, "events.scalar_metrics_iter_histogram", {"task": task_id, "key": "iso_time"})
    assert by_time["data"]["m"]["v"]["x"] == ["2025-12-06T05:46:40.000Z", "2025-12-06T05:46:40.002Z"]
    call(api, "events.scalar_metrics_iter_histogram", {"task": task_id, "metrics": "m"}, expect=400)
    call(api, "events.scalar_metrics_iter_histogram", {"task": task_id, "samples": 6001}, expect=400)
    call(api, "events.get_task_events", {"task": task_id, "batch_size": 2**70}, expect=400)
