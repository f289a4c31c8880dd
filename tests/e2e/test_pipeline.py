"""The pipeline "fleetfl-federated" end to end, and its parameter checks.

* bad parameters are refused (API and ``fleetfl pipeline run|enqueue``) before any task exists;
* the whole pipeline (version_data -> tune with 2 Optuna trials -> federate -> evaluate_register)
  completes on real clearml-agents, and every task is there with its parameters and scalars: the
  federate server task (per-round scalars, checkpoints, CA and address published, registered model)
  and its client tasks. The run is the package's one shared run (``pipeline_run`` in conftest.py,
  started from the web UI); cloning its federate task, editing ``federated/rounds`` and enqueuing
  the clone is checked in the browser by tests/e2e/test_web_ui.py.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from pipelines import fleetfl_pipeline as fp
from tests.e2e.conftest import EDITED_ROUNDS, SHARED_RUN_TEST_TIMEOUT_S, reported_iterations


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
def test_cli_refuses_bad_parameters_before_any_task(clearml_server, capfd, action: str) -> None:
    from clearml import Task

    from pipelines.cli import main

    project = f"fleetfl-test/pipe-bad-{uuid.uuid4().hex[:6]}"
    argv = ["pipeline", action, "--set", f"project={project}", "--set", "clients=2", "--set", "min_clients=5"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "min_clients: 5 is more than the 2 clients" in capfd.readouterr().err
    assert Task.get_tasks(project_name=project) == []
    with pytest.raises(SystemExit):
        main(["pipeline", action, "--set", "no_equals_sign"])


# ---------------------------------------------------------------------- slow: the whole pipeline
# The run itself is ``pipeline_run`` (tests/e2e/conftest.py): started once, from the web UI's New run,
# with ``rounds`` edited to EDITED_ROUNDS; tests/e2e/test_web_ui.py clones its federate task.


@pytest.mark.slow
@pytest.mark.timeout(SHARED_RUN_TEST_TIMEOUT_S)
def test_full_pipeline_completes_with_every_task_parameter_and_scalar(completed_run: dict) -> None:
    from clearml import Model, Task

    outputs, project = completed_run, completed_run["project"]
    # the controller and its four steps, each completed with its parameters
    controller = Task.get_task(task_id=outputs["pipeline_id"])
    args = controller.get_parameters_as_dict()[fp.PIPELINE_SECTION]
    assert set(fp.PARAMETERS) <= set(args)
    assert args["hpo_budget"] == "2" and args["project"] == project
    assert args["rounds"] == str(EDITED_ROUNDS)  # the value edited in the New run form
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
        assert reported_iterations(trial["task_id"], "global", "map50_95") == [1]
        trial_task = Task.get_task(task_id=trial["task_id"])
        assert float(trial_task.get_parameter("federated/lr0")) == pytest.approx(trial["params"]["lr0"])
    # evaluate_register: a candidate in the registry with its metrics
    candidate = outputs["candidate"]
    model = Model(model_id=candidate["model_id"])
    assert "candidate" in (model.tags or [])
    assert 0.0 <= candidate["map50_95"] <= 1.0


@pytest.mark.slow
@pytest.mark.timeout(SHARED_RUN_TEST_TIMEOUT_S)
def test_federate_server_and_client_tasks_report_every_round(completed_run: dict) -> None:
    from clearml import Model, Task

    from components.federate import PROP_ADDRESS, PROP_CA_SHA256

    federated, tuned = completed_run["federated"], completed_run["tuned"]
    server = Task.get_task(task_id=federated["server_task_id"])
    assert server.get_status() == "completed"
    params = server.get_parameters_as_dict()
    assert params["General"]["role"] == "server" and params["federated"]["imgsz"] == "64"
    assert float(params["federated"]["lr0"]) == pytest.approx(tuned["best_params"]["lr0"])  # best params used
    every_round = list(range(1, EDITED_ROUNDS + 1))
    assert [r["round"] for r in federated["rounds"]] == every_round
    for title, series in (
        ("global", "map50_95"),
        ("global", "map50"),
        ("client_loss", "client_0"),
        ("client_examples", "client_1"),
        ("round", "round_seconds"),
        ("bytes", "sent"),
    ):
        assert reported_iterations(server.id, title, series) == every_round, (title, series)
    assert {"checkpoint-round-0001", "superlink-ca", "metrics.jsonl", "output"} <= set(server.artifacts)
    props = server.get_user_properties(value_only=True)
    assert props[PROP_ADDRESS].startswith("127.0.0.1:") and len(props[PROP_CA_SHA256]) == 64
    assert len(federated["client_task_ids"]) == 2
    for index, client_id in enumerate(federated["client_task_ids"]):
        client = Task.get_task(task_id=client_id)
        assert client.get_status() == "completed" and client.parent == server.id
        assert client.get_parameter("General/dataset_id") == completed_run["datasets"]["clients"][index]
    model = Model(model_id=federated["model_id"])
    assert model.url and model.task == server.id


@pytest.mark.slow
@pytest.mark.timeout(SHARED_RUN_TEST_TIMEOUT_S)
def test_demo_story_after_the_pipeline(completed_run: dict) -> None:
    """What ``fleetfl demo`` does after the pipeline, on the same real run: the pipeline page link
    is the one PipelineController printed; the final run's round-1 checkpoint (a run cut short)
    is evaluated and registered by an ``evaluate_register`` task on an agent, and the monitor
    decides it against the production model as its rule says."""
    from clearml import Model, Task

    from components.monitor import decide, should_roll_back
    from pipelines.demo import CUT_SHORT_ARTIFACT, register_cut_short

    run = completed_run
    pipeline_id, project = run["pipeline_id"], run["project"]
    url = fp.pipeline_page_url(pipeline_id, web_host="http://web")
    controller = Task.get_task(task_id=pipeline_id)
    assert url == f"http://web/pipelines/{controller.project}/experiments/{pipeline_id}"
    log = "\n".join(map(str, controller.get_reported_console_output(200)))
    printed = re.search(r"ClearML pipeline page: (\S+)", log)  # what PipelineController logged
    assert printed and printed.group(1).endswith(url.removeprefix("http://web")), log[-2000:]

    params = fp.check_parameters(controller.get_parameters_as_dict()["Args"])  # strings, as from the UI
    first = decide(run["candidate"]["model_id"], project=project)
    assert first["decision"] == "first"
    second = register_cut_short(params, run, queue=run["queues"]["server"], timeout_s=300)
    server = Task.get_task(task_id=run["federated"]["server_task_id"])
    assert second["weights"] == server.artifacts[CUT_SHORT_ARTIFACT].url
    model = Model(model_id=second["model_id"])
    assert model.tags == ["candidate"] and model.get_metadata("weights_source") == second["weights"]
    assert float(model.get_metadata("map50_95")) == pytest.approx(second["map50_95"])
    record = decide(second["model_id"], project=project, threshold=0.10)
    refused = should_roll_back(second["map50_95"], first["candidate_map50_95"], 0.10)
    assert record["decision"] == ("rolled_back" if refused else "promoted")


def test_demo_summary_and_table(tmp_path) -> None:
    from pipelines.demo import DEMO_PARAMETERS, build_summary, format_table

    params = fp.check_parameters(DEMO_PARAMETERS)
    outputs = {
        "pipeline_id": "p" * 32,
        "datasets": {
            "source": "s" * 32,
            "eval": "e" * 32,
            "clients": ["a" * 32, "b" * 32],
            "partition": {"splits": {"client_0": {"images": 20, "boxes": 90}, "client_1": {"images": 19}}},
        },
        "tuned": {
            "best_params": {"lr0": 0.01},
            "best_task_id": "t2" * 16,
            "trials": [
                {"task_id": "t1" * 16, "params": {"lr0": 0.001}, "map50_95": 0.02},
                {"task_id": "t2" * 16, "params": {"lr0": 0.01}, "map50_95": 0.1},
            ],
        },
        "federated": {
            "rounds": [
                {"round": 1, "map50": 0.2, "map50_95": 0.1},
                {"round": 2, "map50_95": 0.05, "rolled_back_to": 1},
            ],
            "server_task_id": "f" * 32,
            "client_task_ids": ["c1", "c2"],
        },
        "candidate": {"model_id": "m" * 32, "map50_95": 0.1},
        "final_run_params": {"lr0": 0.01},
    }
    alert = f"ALERT: candidate model {'w' * 32} rolled back: mAP50-95 0.0000 is 100.0% below production"
    monitor = {
        "decision": "first",
        "production_model_id": "m" * 32,
        "monitor_task_id": "n" * 32,
        "challenger": {
            "model_id": "w" * 32,
            "map50_95": 0.0,
            "decision": "rolled_back",
            "relative_drop": 1.0,
        },
        "alert": alert,
    }
    summary = build_summary(params, outputs, monitor, tmp_path / "clearml", tmp_path, 12.3)
    assert {"datasets", "best_params", "rounds", "model_id", "monitor_decision"} <= set(summary)
    assert summary["datasets"]["clients"] == ["a" * 32, "b" * 32] and summary["monitor_decision"] == "first"
    assert all({"round", "map50_95"} <= set(row) for row in summary["rounds"])
    assert summary["second_candidate"]["decision"] == "rolled_back" and summary["alert"] == alert
    assert summary["best_trial_id"] == "t2" * 16 and summary["final_run_params"] == {"lr0": 0.01}
    json.dumps(summary)  # JSON-able
    table = format_table(summary)
    assert "lr0=0.0100" in table and "rolled back to round 1" in table and "(20 images, 90 boxes)" in table
    assert "0.1000  <- best" in table and "final run used      lr0=0.0100" in table
    assert "refused it: production stays (100% below production)" in table and alert in table


def test_enqueue_creates_a_queued_controller_with_every_parameter(clearml_server) -> None:
    from clearml import Task

    from queues.definitions import ensure_queue

    queue = f"p2e-services-{uuid.uuid4().hex[:6]}"
    ensure_queue(queue)
    project = f"fleetfl-test/pipe-enq-{uuid.uuid4().hex[:6]}"
    with pytest.raises(fp.PipelineParameterError, match="does not exist"):
        fp.enqueue_pipeline({"project": project}, queue=f"{queue}-missing")
    pipeline_id = fp.enqueue_pipeline({"project": project, "rounds": 4, "config": {"imgsz": 96}}, queue=queue)
    controller = Task.get_task(task_id=pipeline_id)
    try:
        assert controller.get_status() == "queued"
        args = controller.get_parameters_as_dict()[fp.PIPELINE_SECTION]
        assert set(fp.PARAMETERS) <= set(args)
        assert args["rounds"] == "4" and json.loads(args["config"]) == {"imgsz": 96}
        assert controller.data.script.entry_point.endswith("pipelines.fleetfl_pipeline")
    finally:
        Task.dequeue(controller)
        controller.mark_stopped(force=True)
