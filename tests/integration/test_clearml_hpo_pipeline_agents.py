"""Contract: HPO (OptimizerOptuna) and pipelines on queues, executed by real clearml-agents (b, c).

Trials and steps are tiny script tasks; each flow keeps to 2-3 trials or 3 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.clearml import ClearMLServer, api_call, ensure_queue, run_sdk_script

#: The base task HPO clones: reports loss/total = (lr - 0.3)^2 for a few iterations.
TRIAL = r"""
import time
from clearml import Task

task = Task.init(project_name="contract-hpo", task_name="{name}", auto_connect_frameworks=False,
                 auto_resource_monitoring=False, reuse_last_task_id=False)
params = task.connect({{"lr": 0.3, "steps": 3, "pause": 0.0}})
for step in range(int(params["steps"])):
    loss = (float(params["lr"]) - 0.3) ** 2
    task.get_logger().report_scalar("loss", "total", value=loss, iteration=step)
    task.flush(wait_for_uploads=True)
    time.sleep(float(params["pause"]))
print("TASK_ID", task.id)
"""

OPTIMIZER = r"""
import json
import optuna
from clearml import Task
from clearml.automation import DiscreteParameterRange, HyperParameterOptimizer
from clearml.automation.optuna import OptimizerOptuna

task = Task.init(project_name="contract-hpo", task_name="{name}", task_type=Task.TaskTypes.optimizer,
                 auto_connect_frameworks=False, auto_resource_monitoring=False, reuse_last_task_id=False)
optimizer = HyperParameterOptimizer(
    base_task_id="{base}",
    hyper_parameters=[DiscreteParameterRange("General/lr", values=[0.3, 0.5, 3.0])],
    objective_metric_title="loss",
    objective_metric_series="total",
    objective_metric_sign="min",
    optimizer_class=OptimizerOptuna,
    execution_queue="{queue}",
    max_number_of_concurrent_tasks=1,
    total_max_jobs=3,
    min_iteration_per_job=1,
    max_iteration_per_job=100,  # OptimizerOptuna fails without it (clearml 2.1.12)
    pool_period_min=0.02,
    optuna_sampler=optuna.samplers.GridSampler({{"General/lr": [0.3, 0.5, 3.0]}}),
    optuna_pruner=optuna.pruners.ThresholdPruner(upper=1.0),
)
optimizer.set_report_period(0.02)  # default 5 min: wait() would sleep that long
optimizer.{start}
optimizer.wait()
optimizer.stop()
top = optimizer.get_top_experiments(3)
study = optimizer.optimizer._study
print("RESULT", json.dumps({{
    "top": [(t.id, float(t.get_parameters()["General/lr"])) for t in top],
    "states": sorted(str(t.state).split(".")[-1] for t in study.trials),
    "children": Task.query_tasks(task_filter={{"parent": task.id}}),
}}))
"""


def _result(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _base_task(server: ClearMLServer, tmp_path: Path, name: str, pause: float) -> str:
    code = TRIAL.format(name=name).replace('"pause": 0.0', f'"pause": {pause}')
    out = run_sdk_script(server, code, tmp_path / name)
    return next(line.split()[1] for line in out.splitlines() if line.startswith("TASK_ID"))


def _check_hpo(server: ClearMLServer, result: dict) -> None:
    lrs = [lr for _, lr in result["top"]]
    assert lrs[:2] == [0.3, 0.5], result  # ordered by loss (min): 0.0, then 0.04
    assert "PRUNED" in result["states"], result  # lr=3.0 reports 7.29 > 1.0
    assert result["states"].count("COMPLETE") == 2, result
    assert {t for t, _ in result["top"]} <= set(result["children"])  # trials are the optimizer's children
    # the best trial's last_metrics, as the server computed them, agree
    best = api_call(server, "tasks.get_by_id", {"task": result["top"][0][0]})["data"]["task"]
    values = [v["value"] for m in best["last_metrics"].values() for v in m.values()]
    assert values == [0.0]


@pytest.mark.slow
def test_hpo_optuna_start_locally(clearml_server: ClearMLServer, tmp_path: Path) -> None:
    """(c) HyperParameterOptimizer + OptimizerOptuna, trials run locally; order and pruning."""
    base = _base_task(clearml_server, tmp_path, "hpo-base-local", pause=0.5)
    ensure_queue(clearml_server, "hpo-local-q")
    code = OPTIMIZER.format(name="hpo-local", base=base, queue="hpo-local-q", start="start_locally()")
    result = _result(run_sdk_script(clearml_server, code, tmp_path / "opt", timeout=600))
    _check_hpo(clearml_server, result)


PIPELINE_ON_QUEUE = r"""
from clearml import PipelineController

def make_data(n: int = 3):
    return list(range(int(n)))

def square(data):
    return [x * x for x in data]

def total(values):
    return sum(values)

pipe = PipelineController(name="ctl-remote", project="contract-pipe", version="0.1", pool_frequency=0.02,
                          add_pipeline_tags=False)
pipe.set_default_execution_queue("{steps_queue}")
pipe.add_parameter("n", 4)
pipe.add_function_step(name="make_data", function=make_data, function_kwargs={{"n": "${{pipeline.n}}"}},
                       function_return=["data"], cache_executed_step=False)
pipe.add_function_step(name="square", function=square, function_kwargs={{"data": "${{make_data.data}}"}},
                       function_return=["values"], parents=["make_data"], cache_executed_step=False)
pipe.add_function_step(name="total", function=total, function_kwargs={{"values": "${{square.values}}"}},
                       function_return=["result"], parents=["square"], cache_executed_step=False)
pipe.start(queue="{controller_queue}")
"""


@pytest.mark.slow
def test_pipeline_on_queue_executed_by_agents(
    clearml_server: ClearMLServer, clearml_agent, tmp_path: Path
) -> None:
    """(b) The controller runs on one agent's queue, its steps on another agent's queue."""
    from tests.fixtures.clearml import wait_for

    ensure_queue(clearml_server, "pipe-controller-q")
    ensure_queue(clearml_server, "pipe-steps-q")
    code = PIPELINE_ON_QUEUE.format(steps_queue="pipe-steps-q", controller_queue="pipe-controller-q")
    run_sdk_script(clearml_server, code, tmp_path / "pipe")  # enqueues the controller and exits
    found = api_call(
        clearml_server, "tasks.get_all", {"name": "^ctl-remote$", "only_fields": ["id", "status"]}
    )
    ((controller, queued),) = [(t["id"], t["status"]) for t in found["data"]["tasks"]]
    assert queued == "queued"
    controller_agent = clearml_agent("pipe-controller-q")
    steps_agent = clearml_agent("pipe-steps-q")

    def status(task_id: str) -> str:
        return api_call(clearml_server, "tasks.get_by_id", {"task": task_id})["data"]["task"]["status"]

    logs = lambda: f"CONTROLLER:\n{controller_agent.log()[-3000:]}\nSTEPS:\n{steps_agent.log()[-3000:]}"  # noqa: E731
    wait_for(lambda: status(controller) in ("completed", "failed", "stopped"), 600, f"the pipeline\n{logs()}")
    assert status(controller) == "completed", logs()
    steps = api_call(
        clearml_server, "tasks.get_all", {"parent": controller, "only_fields": ["name", "status"]}
    )
    assert sorted((t["name"], t["status"]) for t in steps["data"]["tasks"]) == [
        ("make_data", "completed"),
        ("square", "completed"),
        ("total", "completed"),
    ]


@pytest.mark.slow
def test_two_agents_pipeline_and_hpo_at_once_lose_and_duplicate_nothing(
    clearml_server: ClearMLServer, clearml_agent, tmp_path: Path
) -> None:
    """Two agents share one queue fed by an HPO run and extra clones while a pipeline runs locally.

    Also the (c) contract with an agent-served execution queue: trial order and a pruned trial
    (``_check_hpo``), and (b) a local PipelineController beside it.
    """
    import re
    from concurrent.futures import ThreadPoolExecutor

    from tests.fixtures.clearml import wait_for
    from tests.integration.test_clearml_sdk_flows import PIPELINE_CONTROLLER

    queue = "mixed-q"
    ensure_queue(clearml_server, queue)
    base = _base_task(clearml_server, tmp_path, "mixed-base", pause=0.0)
    agents = [clearml_agent(queue), clearml_agent(queue)]
    clones = f"""
from clearml import Task
base = Task.get_task(task_id="{base}")
for i in range(4):
    clone = Task.clone(source_task=base, name=f"mixed-clone-{{i}}")
    clone.set_parameters({{"General/lr": 0.1 * i}})
    Task.enqueue(clone, queue_name="{queue}")
    print("CLONE", clone.id)
"""
    hpo = OPTIMIZER.format(name="mixed-hpo", base=base, queue=queue, start="start()")
    pipeline = PIPELINE_CONTROLLER.replace('name="ctl"', 'name="ctl-mixed"')
    with ThreadPoolExecutor(3) as pool:
        runs = [
            pool.submit(run_sdk_script, clearml_server, hpo, tmp_path / "hpo", "hpo.py", 900),
            pool.submit(run_sdk_script, clearml_server, pipeline, tmp_path / "pipe", "pipe.py", 900),
            pool.submit(run_sdk_script, clearml_server, clones, tmp_path / "clones", "clones.py", 300),
        ]
        try:
            hpo_out, pipe_out, clones_out = (r.result() for r in runs)
        except AssertionError as exc:
            logs = "\n".join(a.log()[-3000:] for a in agents)
            raise AssertionError(f"{exc}\nAGENTS:\n{logs}") from None
    _check_hpo(clearml_server, _result(hpo_out))
    assert "STATUSES ['completed']" in pipe_out and "VALUES [0, 1, 4, 9, 16]" in pipe_out
    clone_ids = [line.split()[1] for line in clones_out.splitlines() if line.startswith("CLONE")]

    def status(task_id: str) -> str:
        return api_call(clearml_server, "tasks.get_by_id", {"task": task_id})["data"]["task"]["status"]

    wait_for(lambda: all(status(t) == "completed" for t in clone_ids), 300, "the clones")
    trials = _result(hpo_out)["children"]
    pulled = [m for a in agents for m in re.findall(r"task (\w+) pulled from", a.log())]
    for task_id in [*clone_ids, *trials]:
        assert pulled.count(task_id) == 1, (task_id, pulled)  # every entry ran once, on one agent
    assert len(pulled) == len(set(pulled))
    queue_doc = api_call(clearml_server, "queues.get_all", {"name": f"^{queue}$"})["data"]["queues"][0]
    assert queue_doc["entries"] == []
