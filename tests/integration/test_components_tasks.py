"""Components as standalone ClearML tasks on a real clearml-agent: clone, edit a value, enqueue."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest


def _wait(task, timeout_s: float = 300.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task.reload()
        if task.get_status() in ("completed", "failed", "stopped"):
            break
        time.sleep(2)
    return task.get_status()


def _console(task) -> str:
    return "\n".join(map(str, task.get_reported_console_output(30)))


@pytest.mark.slow
def test_cloned_and_edited_component_tasks_run_the_edited_values(clearml_server, tmp_path: Path) -> None:
    from clearml import Model, Task

    from components.common import create_component_task, read_output
    from components.evaluate_register import DEFAULTS as ER_DEFAULTS
    from components.version_data import DEFAULTS as VD_DEFAULTS
    from federated.config import FederatedConfig
    from queues.agents import start_agents, stop_agents
    from queues.definitions import ensure_queue

    project = f"fleetfl-test/tasks-{uuid.uuid4().hex[:6]}"
    queue = f"components-{uuid.uuid4().hex[:6]}"
    ensure_queue(queue)
    params = {**VD_DEFAULTS, "source": "synthetic:10", "clients": 2, "project": project, "imgsz": 64}
    template = create_component_task("version_data", params, project=project)
    assert template.get_parameter("General/clients") == "2"
    start_agents(queue, 1, state_dir=tmp_path / "agents")
    try:
        clone = Task.clone(template, name="version_data (3 clients)")
        clone.set_parameter("General/clients", 3)  # the UI edit
        Task.enqueue(clone, queue_name=queue)
        assert _wait(clone) == "completed", _console(clone)
        data = read_output(clone.id)
        assert len(data["clients"]) == 3 and data["partition"]["clients"] == 3

        config = FederatedConfig().replace(imgsz=96, batch=4, device="cpu")
        weights_task = create_component_task(
            "evaluate_register",
            {**ER_DEFAULTS, "weights": "", "eval_dataset_id": data["eval"], "project": project},
            project=project,
            config=config,
            task_type="qc",
        )
        weights = _register_untrained_weights(project, tmp_path)
        evaluate = Task.clone(weights_task, name="evaluate_register (edited)")
        evaluate.set_parameter("General/weights", weights)
        evaluate.set_parameter("federated/imgsz", 64)
        Task.enqueue(evaluate, queue_name=queue)
        assert _wait(evaluate) == "completed", _console(evaluate)
    finally:
        stop_agents(state_dir=tmp_path / "agents")
    result = read_output(evaluate.id)
    model = Model(model_id=result["model_id"])
    assert "candidate" in model.tags
    assert model.config_dict["imgsz"] == 64  # the edited config value was used
    assert Task.get_task(evaluate.id).get_parameter("federated/imgsz") == "64"


def _register_untrained_weights(project: str, tmp_path: Path) -> str:
    """An untrained yolov9t checkpoint in the registry: its model id is the weights source."""
    from components.evaluate_register import register_model
    from datasets.classes import default_class_map
    from federated.run_dir import save_checkpoint
    from federated.yolo_task import build_model, get_weights, named_weights, state_keys

    model = build_model("yolov9t.yaml", dict(enumerate(default_class_map().classes)))
    path = save_checkpoint(tmp_path / "run", 1, named_weights(state_keys(model), get_weights(model)))
    return register_model(path, {"map50": 0.0, "map50_95": 0.0}, project=project, tags=("seed",))
