"""evaluate_register against the embedded server: real ultralytics evaluation, real model registry."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from components.evaluate_register import WeightsError, evaluate_register, load_weights

CONFIG = {"imgsz": 64, "batch": 4, "device": "cpu"}


def _checkpoint(run_dir: Path) -> Path:
    """A FleetFL checkpoint of an untrained yolov9t (what a federated run writes each round)."""
    from datasets.classes import default_class_map
    from federated.run_dir import save_checkpoint
    from federated.yolo_task import build_model, get_weights, named_weights, state_keys

    model = build_model("yolov9t.yaml", dict(enumerate(default_class_map().classes)))
    return save_checkpoint(run_dir, 1, named_weights(state_keys(model), get_weights(model)))


@pytest.mark.slow
def test_candidate_is_evaluated_and_registered_with_metrics(clearml_server, tmp_path: Path) -> None:
    from clearml import Model

    from components.version_data import version_data
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=True)
    project = f"fleetfl-test/er-{uuid.uuid4().hex[:6]}"
    data = version_data("synthetic:12", clients=2, project=project, imgsz=64, eval_fraction=0.25)
    weights = _checkpoint(tmp_path / "run")
    out = evaluate_register(str(weights), data["eval"], project=project, config=CONFIG)
    assert set(out) >= {"model_id", "map50", "map50_95", "per_class"}
    assert 0.0 <= out["map50_95"] <= out["map50"] <= 1.0

    found = Model.query_models(project_name=project, tags=["candidate"])
    assert [model.id for model in found] == [out["model_id"]]
    model = found[0]
    assert model.name == "fleetfl-yolo"
    assert model.get_metadata_casted("map50_95") == pytest.approx(out["map50_95"])
    assert model.get_metadata("eval_dataset_id") == data["eval"]
    assert model.get_metadata("model_yaml") == "yolov9t.yaml"
    assert Path(model.get_local_copy()).read_bytes() == weights.read_bytes()  # uploaded as is


@pytest.mark.slow
def test_weights_that_do_not_match_the_model_are_refused(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from federated.config import FederatedConfig
    from federated.yolo_task import build_model, export_ultralytics, get_weights

    model = build_model("yolov9t.yaml", {0: "car"})
    path = tmp_path / "w.safetensors"
    save_file({"model/not.a.key": np.zeros(2, dtype=np.float32)}, str(path))
    with pytest.raises(WeightsError, match="does not match the model"):
        load_weights(path, model)
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": model, "hook": os.getcwd}, hostile)  # a callable in the pickle: refused
    with pytest.raises(WeightsError, match=r"refused global 'posix\.getcwd'"):
        load_weights(hostile, model)
    final = export_ultralytics(get_weights(model), {0: "car"}, FederatedConfig(), tmp_path / "final.pt")
    assert all(  # an ultralytics checkpoint: its layers are inert records, only the tensors are kept
        np.array_equal(a, b) for a, b in zip(load_weights(final, model), get_weights(model), strict=True)
    )
    state = tmp_path / "state.pt"
    torch.save(model.state_dict(), state)  # a plain state_dict
    assert len(load_weights(state, model)) == len(model.state_dict())


def test_a_registry_model_carrying_a_payload_runs_nothing(clearml_server, tmp_path: Path) -> None:
    """Weights uploaded to the file server and fetched by model id are read as tensors only."""
    import torch

    from components.evaluate_register import register_model, resolve_weights
    from tests.fixtures.payloads import Call, evil_checkpoint

    marker = tmp_path / "marker"
    project = f"fleetfl-test/er-{uuid.uuid4().hex[:6]}"
    reduce_payload = tmp_path / "reduce.pt"
    torch.save({"model": Call(os.system, f"touch {marker}")}, reduce_payload)
    hostile = {
        "refused global 'posix.system'": reduce_payload,
        "not a pickled torch module": evil_checkpoint(tmp_path / "final.pt", marker),
    }
    model = torch.nn.Linear(2, 2)  # the file is refused while it is read, before any model matching
    for message, path in hostile.items():
        model_id = register_model(path, {"map50": 0.9, "map50_95": 0.7}, project=project)
        local = resolve_weights(model_id)
        assert local.read_bytes() == path.read_bytes()  # what the file server holds
        with pytest.raises(WeightsError, match=message):
            load_weights(local, model)
    assert not marker.exists()


def test_an_edited_clearml_parameter_cannot_name_a_hostile_model_yaml(
    clearml_server, tmp_path: Path, repo_root: Path
) -> None:
    """The component run as an agent runs it: its task's ``federated/model`` edited on the server."""
    import subprocess
    import sys

    from components.common import create_component_task
    from components.evaluate_register import DEFAULTS
    from federated.config import FederatedConfig
    from tests.fixtures.payloads import evil_model_yaml

    marker = tmp_path / "marker"
    evil = evil_model_yaml(tmp_path / "evil.yaml", marker)
    project = f"fleetfl-test/er-{uuid.uuid4().hex[:6]}"
    task = create_component_task("evaluate_register", DEFAULTS, project=project, config=FederatedConfig())
    task.set_parameter("federated/model", str(evil))  # a UI edit: the server takes any text
    result = subprocess.run(
        [sys.executable, "-m", "components.evaluate_register"],
        cwd=repo_root,
        env={**clearml_server.env, "CLEARML_TASK_ID": task.id, "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"task {task.id} parameters 'federated': model: {evil}: activation:" in output, output[-3000:]
    assert not marker.exists()
