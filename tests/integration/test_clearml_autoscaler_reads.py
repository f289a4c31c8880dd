"""Contract (f): what ClearML's AutoScaler reads, through the SDK's own APIClient and helpers."""

from __future__ import annotations

import time

from tests.fixtures.clearml import ClearMLServer, api_call


def test_autoscaler_sees_queue_entries_and_worker_timestamps(clearml_server: ClearMLServer) -> None:
    """Queues with entries, workers with id/task/register/activity/report times, as AutoScaler reads."""
    from clearml.automation.auto_scaler import WorkerId, worker_last_time
    from clearml.backend_api.session.client import APIClient

    queue = api_call(clearml_server, "queues.create", {"name": "scale-q"})["data"]["id"]
    waiting = []
    for i in range(2):
        task = api_call(clearml_server, "tasks.create", {"name": f"scale-{i}", "type": "training"})["data"][
            "id"
        ]
        api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})
        waiting.append(task)
    busy = api_call(clearml_server, "tasks.create", {"name": "scale-busy", "type": "training"})["data"]["id"]
    worker_id = "fleetfl-scaler:cpu:t3.micro:i-0123456789"
    api_call(clearml_server, "workers.register", {"worker": worker_id, "queues": [queue]})
    api_call(
        clearml_server,
        "workers.status_report",
        {"worker": worker_id, "task": busy, "queue": queue, "timestamp": int(time.time() * 1000)},
    )

    client = APIClient()
    names = {q.name: q.id for q in client.queues.get_all(only_fields=["id", "name"])}
    assert names["scale-q"] == queue
    entries = client.queues.get_by_id(queue).entries
    assert [e.task for e in entries] == waiting
    (worker,) = [w for w in client.workers.get_all() if w.id == worker_id]
    parsed = WorkerId(worker.id)
    assert (parsed.prefix, parsed.name, parsed.instance_type, parsed.cloud_id) == (
        "fleetfl-scaler",
        "cpu",
        "t3.micro",
        "i-0123456789",
    )
    assert worker.task.id == busy
    assert abs(worker_last_time(worker) - time.time()) < 60
    assert [q.name for q in worker.queues] == ["scale-q"]

    # idle again: no task, as AutoScaler's is_worker_still_idle() checks
    api_call(clearml_server, "workers.status_report", {"worker": worker_id, "timestamp": 0})
    (worker,) = [w for w in client.workers.get_all() if w.id == worker_id]
    assert getattr(worker, "task", None) is None
    api_call(clearml_server, "workers.unregister", {"worker": worker_id})
    assert worker_id not in [w.id for w in client.workers.get_all()]
