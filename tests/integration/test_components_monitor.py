"""The monitor against the real model registry (embedded server): promote, roll back, no false alarms."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from components.evaluate_register import register_model
from components.monitor import (
    PRODUCTION_TAG,
    ROLLED_BACK_TAG,
    create_monitor_task,
    decide,
    production_model,
)


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """A tiny weights file: the monitor only reads the registry's metrics."""
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"model/w": np.zeros(4, dtype=np.float32)}, str(path))
    return path


def _candidate(weights_file: Path, project: str, score: float) -> str:
    return register_model(weights_file, {"map50": score + 0.1, "map50_95": score}, project=project)


def _tags(model_id: str) -> list[str]:
    from clearml import Model

    return list(Model(model_id=model_id).tags)


def test_rollback_promotion_and_no_false_alarm(clearml_server, weights_file: Path, caplog) -> None:
    from clearml import Model

    project = f"fleetfl-test/monitor-{uuid.uuid4().hex[:6]}"
    first = _candidate(weights_file, project, 0.50)
    assert Model.query_models(project_name=project, tags=["candidate"])[0].id == first
    record = decide(first, project=project)
    assert record["decision"] == "first" and record["production_model_id"] == first

    worse = _candidate(weights_file, project, 0.425)  # 15% worse
    with caplog.at_level("WARNING", logger="components.monitor"):
        record = decide(worse, project=project, threshold=0.10)
    assert record["decision"] == "rolled_back"
    assert record["relative_drop"] == pytest.approx(0.15)
    assert record["production_model_id"] == first
    assert production_model(project).id == first  # production unchanged
    assert _tags(worse) == [ROLLED_BACK_TAG]
    assert any("ALERT" in message and worse in message for message in caplog.messages)
    rolled = Model(model_id=worse)
    assert rolled.get_metadata("monitor_decision") == "rolled_back"  # the rollback record
    assert rolled.get_metadata("production_model_id") == first

    slightly_worse = _candidate(weights_file, project, 0.475)  # 5% worse: promoted, no alarm
    record = decide(slightly_worse, project=project, threshold=0.10)
    assert record["decision"] == "promoted"
    assert production_model(project).id == slightly_worse
    assert _tags(slightly_worse) == [PRODUCTION_TAG]
    assert PRODUCTION_TAG not in _tags(first)
    assert [m.id for m in Model.query_models(project_name=project, tags=[PRODUCTION_TAG])] == [slightly_worse]

    # deciding again changes nothing (the monitor may see a candidate twice)
    assert decide(worse, project=project)["decision"] == "rolled_back"
    assert production_model(project).id == slightly_worse


@pytest.mark.slow
def test_monitor_service_task_on_an_agent(clearml_server, weights_file: Path, tmp_path: Path) -> None:
    """The monitor runs as a queued service task on a real clearml-agent, with edited parameters."""
    from clearml import Task

    from components.common import read_output
    from queues.agents import start_agents, stop_agents
    from queues.definitions import ensure_queue

    project = f"fleetfl-test/monitor-svc-{uuid.uuid4().hex[:6]}"
    queue = f"services-{uuid.uuid4().hex[:6]}"
    ensure_queue(queue)
    template = create_monitor_task(project=project, poll_s=1.0, max_decisions=1, timeout_s=300.0)
    clone = Task.clone(template, name="monitor (edited)")
    clone.set_parameter("General/max_decisions", 3)  # edited like in the UI: the run must honour it
    start_agents(queue, 1, state_dir=tmp_path / "agents")
    try:
        Task.enqueue(clone, queue_name=queue)
        ids = [_candidate(weights_file, project, score) for score in (0.50, 0.425, 0.475)]
        deadline = time.monotonic() + 240
        while clone.get_status() not in ("completed", "failed", "stopped") and time.monotonic() < deadline:
            time.sleep(2)
            clone.reload()
        console = "\n".join(map(str, clone.get_reported_console_output(20)))
        assert clone.get_status() == "completed", console
    finally:
        stop_agents(state_dir=tmp_path / "agents")
    decisions = read_output(clone.id)["decisions"]
    assert [(d["candidate_model_id"], d["decision"]) for d in decisions] == [
        (ids[0], "first"),
        (ids[1], "rolled_back"),
        (ids[2], "promoted"),
    ]
    assert production_model(project).id == ids[2]
    assert len(Task.get_task(clone.id).artifacts["decisions"].get()["decisions"]) == 3
    log = "\n".join(map(str, clone.get_reported_console_output(200)))
    assert f"ALERT: candidate model {ids[1]} rolled back" in log  # the alert, as a ClearML report
