"""The pipeline "fleetfl-federated" end to end, and its parameter checks.

* bad parameters are refused (API and ``fleetfl pipeline run|enqueue``) before any task exists;
* the whole pipeline (version_data -> tune with 2 Optuna trials -> federate -> evaluate_register)
  completes on real clearml-agents, and every task is there with its parameters and scalars.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from pipelines import fleetfl_pipeline as fp

TINY_CONFIG = {"imgsz": 64, "batch": 4, "nbs": 4, "model": "yolov8n.yaml", "device": "cpu"}


# ---------------------------------------------------------------------- fast: parameter checks
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sourse": "synthetic:8"}, "pipeline parameter 'sourse' is unknown"),
        ({"source": "pictures:/nowhere"}, "source/split"),
        ({"split": "dirichlet:abc"}, "source/split"),
        ({"clients": "two"}, "clients: expected int"),
        ({"clients": 0}, "clients: must be >= 1"),
        ({"rounds": 0}, "rounds: must be >= 1"),
        ({"strategy": "fedmagic"}, "strategy: 'fedmagic' is not one of"),
        ({"min_clients": 3, "clients": 2}, "min_clients: 3 is more than the 2 clients"),
        ({"config": '{"imgsz": 16}'}, "imgsz: must be >= 32"),
        ({"config": "[1, 2]"}, "config: expected dict"),
        ({"hpo_budget": -1}, "hpo_budget: must be >= 0"),
        ({"search_space": '{"lr": {"min": 0.1, "max": 0.2}}'}, "not a federated config key"),
        ({"rollback_threshold": 1.0}, r"rollback_threshold: must be in \[0, 1\)"),
        ({"promotion_threshold": "nan"}, "promotion_threshold: expected float"),
        ({"hpo_pruner": "random"}, "hpo_pruner"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
    ],
)
def test_bad_parameters_are_refused(values, message) -> None:
    with pytest.raises(fp.PipelineParameterError, match=message):
        fp.check_parameters(values)


def test_parameters_from_the_ui_are_converted() -> None:
    params = fp.check_parameters(
        {"clients": "3", "rounds": "2.0", "config": '{"imgsz": 96}', "hpo_budget": "0"}
    )
    assert (params["clients"], params["rounds"], params["config"], params["hpo_budget"]) == (
        3,
        2,
        {"imgsz": 96},
        0,
    )
    config = fp.federated_config(params, tuned={"lr0": 0.02})
    assert (config.imgsz, config.rounds, config.min_clients, config.lr0) == (96, 2, 3, 0.02)
    assert set(fp.default_parameters()) == set(fp.PARAMETERS)


@pytest.mark.parametrize("action", ["run", "enqueue"])
def test_cli_refuses_bad_parameters_before_any_task(clearml_server, capsys, action: str) -> None:
    from clearml import Task

    from pipelines.cli import main

    project = f"fleetfl-test/pipe-bad-{uuid.uuid4().hex[:6]}"
    argv = ["pipeline", action, "--set", f"project={project}", "--set", "clients=2", "--set", "min_clients=5"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "min_clients: 5 is more than the 2 clients" in capsys.readouterr().err
    assert Task.get_tasks(project_name=project) == []
    with pytest.raises(SystemExit):
        main(["pipeline", action, "--set", "no_equals_sign"])


# ---------------------------------------------------------------------- slow: the whole pipeline
@pytest.fixture(scope="module")
def pipeline_queues(clearml_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Unique queues with one server agent, two client agents and one HPO agent."""
    from queues.agents import start_agents, stop_agents, wait_for_workers

    suffix = uuid.uuid4().hex[:6]
    queues = {
        "server_queue": f"p2e-srv-{suffix}",
        "client_queue": f"p2e-cli-{suffix}",
        "hpo_queue": f"p2e-hpo-{suffix}",
    }
    state = tmp_path_factory.mktemp("p2e-agents")
    records = []
    for queue, count in ((queues["server_queue"], 1), (queues["client_queue"], 2), (queues["hpo_queue"], 1)):
        records += start_agents(queue, count, state_dir=state)
    try:
        assert wait_for_workers([r.worker_id for r in records], timeout_s=90), "agents did not register"
        yield queues
    finally:
        stop_agents(state_dir=state)


@pytest.mark.slow
def test_full_pipeline_completes_with_every_task_parameter_and_scalar(
    pipeline_queues: dict[str, str],
) -> None:
    from clearml import Model, Task

    project = f"fleetfl-test/pipeline-{uuid.uuid4().hex[:6]}"
    outputs = fp.run_pipeline(
        {
            "source": "synthetic:16",
            "clients": 2,
            "data_imgsz": 64,
            "rounds": 1,
            "hpo_budget": 2,
            "hpo_rounds": 1,
            "config": json.dumps(TINY_CONFIG),
            "search_space": {
                "lr0": {"min": 0.005, "max": 0.02, "log": True},
                "mosaic": {"values": [0.0, 1.0]},
            },
            "project": project,
            "client_wait_s": 240,
            **pipeline_queues,
        }
    )
    # the controller and its four steps, each completed with its parameters
    controller = Task.get_task(task_id=outputs["pipeline_id"])
    args = controller.get_parameters_as_dict()[fp.PIPELINE_SECTION]
    assert set(fp.PARAMETERS) <= set(args)
    assert args["hpo_budget"] == "2" and args["project"] == project
    for step in ("version_data", "tune", "federate", "evaluate_register"):
        step_task = Task.get_task(task_id=outputs[f"{step}_task_id"])
        assert step_task.get_status() == "completed" and step_task.parent == controller.id
    # datasets
    datasets = outputs["datasets"]
    assert len(datasets["clients"]) == 2 and datasets["eval"]
    # tune: two Optuna trials, each a federate server task that reported the objective per round
    tuned = outputs["tuned"]
    assert len(tuned["trials"]) == 2 and set(tuned["best_params"]) == {"lr0", "mosaic"}
    for trial in tuned["trials"]:
        trial_task = Task.get_task(task_id=trial["task_id"])
        scalars = trial_task.get_reported_scalars()
        assert scalars["global"]["map50_95"]["x"] == [1]
        assert float(trial_task.get_parameter("federated/lr0")) == pytest.approx(trial["params"]["lr0"])
    # federate: the best parameters were used, rounds reported as iterations, clients completed
    federated = outputs["federated"]
    server = Task.get_task(task_id=federated["server_task_id"])
    assert float(server.get_parameter("federated/lr0")) == pytest.approx(tuned["best_params"]["lr0"])
    assert server.get_parameter("federated/imgsz") == "64"
    assert server.get_reported_scalars()["global"]["map50_95"]["x"] == [1]
    assert [r["round"] for r in federated["rounds"]] == [1]
    assert all(Task.get_task(task_id=c).get_status() == "completed" for c in federated["client_task_ids"])
    # evaluate_register: a candidate in the registry with its metrics
    candidate = outputs["candidate"]
    model = Model(model_id=candidate["model_id"])
    assert "candidate" in (model.tags or [])
    assert 0.0 <= candidate["map50_95"] <= 1.0
