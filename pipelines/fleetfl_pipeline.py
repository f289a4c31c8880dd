"""The ClearML pipeline "fleetfl-federated": version_data -> tune -> federate -> evaluate_register.

Every setting is a pipeline parameter (section ``Args`` of the controller task, see
:data:`PARAMETERS`), so the pipeline can be cloned, edited and enqueued from the ClearML UI. The
steps are thin functions that call the components (``components/*``); each step is its own task:

1. **version_data**: the source and split become ClearML Dataset versions (one per client shard, one
   for the held-out split), reused when they exist already;
2. **tune**: a draft federate task over those shards (``hpo_rounds`` rounds) is the base task of an
   Optuna search (``hpo_budget`` trials on the ``hpo`` queue); skipped when ``hpo_budget`` is 0;
3. **federate**: the federated run with the config plus the best parameters (server task on
   ``fl-server``, one client task per shard on ``fl-clients``), rollback at ``rollback_threshold``;
4. **evaluate_register**: the final model evaluated on the held-out split and registered as a
   ``candidate`` (the monitor decides about promotion with ``promotion_threshold``).

Parameters are checked (:func:`check_parameters`) before any task is created or enqueued.

Entry points: :func:`run_pipeline` (controller in this process; steps as local processes or on
agents), :func:`enqueue_pipeline` (controller on the ``services`` queue), and ``python -m
pipelines.fleetfl_pipeline`` (what an agent runs for an enqueued or cloned controller).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import step_values

LOG = logging.getLogger(__name__)

PIPELINE_NAME = "fleetfl-federated"
PIPELINE_VERSION = "1.0.0"
#: Section of the controller task that holds the pipeline parameters (ClearML's choice).
PIPELINE_SECTION = "Args"
#: Environment variables of the enqueue subprocess (never set on agents).
_ENV_PARAMS = "FLEETFL_PIPELINE_PARAMS"
_ENV_QUEUE = "FLEETFL_PIPELINE_QUEUE"
_ENV_ID_FILE = "FLEETFL_PIPELINE_ID_FILE"
#: How often the controller checks its steps, in minutes. ClearML's default (0.2 = 12 s) left the
#: demo's controller idle ~12 s between every two steps; 3 s costs one small status query per poll.
STEP_POLL_MINUTES = 0.05


class PipelineParameterError(ValueError):
    """A bad pipeline parameter (found before any task is enqueued); the message names it."""


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter: its default and what it means."""

    default: Any
    help: str


#: Every pipeline parameter (section ``Args`` of the controller task).
PARAMETERS: dict[str, Parameter] = {
    "source": Parameter(
        "synthetic:200", "data source: kitti:PATH, bdd100k:PATH, yolo:PATH, synthetic:N, clearml:ID"
    ),
    "split": Parameter("iid", "client split: iid, dirichlet:ALPHA or attribute:NAME"),
    "clients": Parameter(2, "number of client shards (one client task each)"),
    "seed": Parameter(0, "seed of the split, the synthetic data and the HPO sampler"),
    "eval_fraction": Parameter(0.2, "held-out share for central evaluation"),
    "data_imgsz": Parameter(160, "image size of synthetic scenes"),
    "rounds": Parameter(3, "federated rounds of the final run"),
    "strategy": Parameter("fedavg", "server strategy (fedavg, fedavgm, fedprox, fedadam, ...)"),
    "min_clients": Parameter(0, "clients needed per round (0: every shard)"),
    "config": Parameter({}, 'more federated config keys as JSON, e.g. {"imgsz": 128, "batch": 8}'),
    "hpo_budget": Parameter(4, "HPO trials (0 skips the tune step)"),
    "hpo_rounds": Parameter(1, "rounds of each HPO trial"),
    "hpo_concurrency": Parameter(1, "HPO trials at the same time"),
    "hpo_pruner": Parameter("median", "Optuna pruner: median, hyperband or none"),
    "search_space": Parameter({}, "HPO search space as JSON ({} = default for the strategy)"),
    "rollback_threshold": Parameter(
        0.10, "roll a round back when its mAP50-95 falls this fraction below the best"
    ),
    "promotion_threshold": Parameter(
        0.10, "monitor: a candidate this fraction worse than production is not promoted"
    ),
    "model_name": Parameter("fleetfl-yolo", "registry name of the candidate model"),
    "project": Parameter("FleetFL", "ClearML project of every task, dataset and model"),
    "server_queue": Parameter("fl-server", "queue of federate server tasks"),
    "client_queue": Parameter("fl-clients", "queue of federate client tasks"),
    "hpo_queue": Parameter("hpo", "queue of HPO trials"),
    "client_wait_s": Parameter(300.0, "how long a server waits for its clients"),
    "step_queue": Parameter("services", "queue of the step tasks when the controller runs on an agent"),
}


def default_parameters() -> dict[str, Any]:
    """The pipeline parameters with their defaults."""
    return {name: spec.default for name, spec in PARAMETERS.items()}


# ====================================================================== validation
def check_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise pipeline parameters (strings from the UI are converted).

    Returns:
        The parameters with their proper types (``config`` and ``search_space`` as dicts).

    Raises:
        PipelineParameterError: an unknown parameter or a bad value; the message names it.
    """
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise PipelineParameterError(
            f"pipeline parameter {unknown[0]!r} is unknown (known: {', '.join(PARAMETERS)})"
        )
    params = default_parameters()
    for name, value in values.items():
        params[name] = _convert(name, value)
    _check_data(params)
    _check_federated(params)
    for name in ("rollback_threshold", "promotion_threshold"):
        if not 0.0 <= params[name] < 1.0:
            raise PipelineParameterError(f"{name}: must be in [0, 1), got {params[name]}")
    for name in ("hpo_budget",):
        if params[name] < 0:
            raise PipelineParameterError(f"{name}: must be >= 0, got {params[name]}")
    for name in ("hpo_rounds", "hpo_concurrency"):
        if params[name] < 1:
            raise PipelineParameterError(f"{name}: must be >= 1, got {params[name]}")
    if params["client_wait_s"] <= 0:
        raise PipelineParameterError(f"client_wait_s: must be > 0, got {params['client_wait_s']}")
    for name in ("project", "server_queue", "client_queue", "hpo_queue", "model_name"):
        if not str(params[name]).strip():
            raise PipelineParameterError(f"{name}: must not be empty")
    return params


def _convert(name: str, value: Any) -> Any:
    default = PARAMETERS[name].default
    try:
        if isinstance(default, dict):
            if isinstance(value, Mapping):
                return dict(value)
            parsed = json.loads(value) if str(value).strip() else {}
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            return parsed
        if isinstance(default, bool):
            return str(value).strip().lower() in ("1", "true", "yes")
        if isinstance(default, int):
            number = float(value)
            if not number.is_integer():
                raise ValueError("not an integer")
            return int(number)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("not finite")
            return number
        return str(value).strip()
    except (TypeError, ValueError) as exc:
        raise PipelineParameterError(
            f"{name}: expected {type(default).__name__}, got {value!r} ({exc})"
        ) from None


def _check_data(params: dict[str, Any]) -> None:
    from datasets.partition import parse_split
    from datasets.prepare import parse_source

    source = params["source"]
    try:
        if source.startswith("clearml:"):
            if not source.split(":")[1]:
                raise ValueError(f"--source {source!r}: clearml:ID needs a Dataset id")
        else:
            parse_source(source)
        parse_split(params["split"])
    except ValueError as exc:
        raise PipelineParameterError(f"source/split: {exc}") from None
    if params["clients"] < 1:
        raise PipelineParameterError(f"clients: must be >= 1, got {params['clients']}")
    if not 0.0 < params["eval_fraction"] < 1.0:
        raise PipelineParameterError(f"eval_fraction: must be in (0, 1), got {params['eval_fraction']}")
    if params["data_imgsz"] < 32:
        raise PipelineParameterError(f"data_imgsz: must be >= 32, got {params['data_imgsz']}")


def federated_config(
    params: Mapping[str, Any], tuned: Mapping[str, Any] | None = None, rounds: int | None = None
):
    """The :class:`FederatedConfig` of a run: ``config`` + strategy, rounds, min_clients (+ ``tuned``)."""
    from federated.config import FederatedConfig

    values = dict(params.get("config") or {})
    values["strategy"] = params["strategy"]
    values["rounds"] = int(rounds if rounds is not None else params["rounds"])
    clients = int(params["clients"])
    values["min_clients"] = int(params.get("min_clients") or 0) or clients
    values.update(dict(tuned or {}))
    return FederatedConfig.from_flat(values, source="pipeline parameters")


def _check_federated(params: dict[str, Any]) -> None:
    from components.tune import check_search_space, default_search_space
    from federated.config import ConfigError

    try:
        config = federated_config(params)
    except ConfigError as exc:
        raise PipelineParameterError(str(exc)) from None
    if config.min_clients > params["clients"]:
        raise PipelineParameterError(
            f"min_clients: {config.min_clients} is more than the {params['clients']} clients"
        )
    if params["hpo_budget"]:
        try:
            check_search_space(params["search_space"] or default_search_space(config.strategy))
        except ValueError as exc:
            raise PipelineParameterError(str(exc)) from None
    from components.tune import PRUNERS

    if params["hpo_pruner"] not in PRUNERS:
        raise PipelineParameterError(
            f"hpo_pruner: {params['hpo_pruner']!r} is not one of {', '.join(PRUNERS)}"
        )


# ====================================================================== steps (each one a task)
def step_parameters() -> dict[str, Any]:
    """The pipeline parameters, read by a step task from its controller (its parent task).

    Reading them from the controller keeps one source of truth: values edited in a cloned
    controller reach every step.
    """
    from clearml import Task

    step = Task.current_task()
    if step is None or not step.parent:
        raise PipelineParameterError("step_parameters(): not running as a step of the pipeline")
    controller = Task.get_task(task_id=step.parent)
    section = controller.get_parameters_as_dict().get(PIPELINE_SECTION, {})
    return check_parameters({k: v for k, v in section.items() if k in PARAMETERS})


# ClearML turns each step function into a task script from its source: every import is inside it,
# and arguments bound to ${pipeline.x} arrive as strings (cast here).
def version_data_step(
    source: str, split: str, clients: int, seed: int, eval_fraction: float, data_imgsz: int, project: str
) -> dict:
    """Pipeline step 1: register the shards and the evaluation split (ClearML Datasets)."""
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=False)
    from components.version_data import version_data

    return version_data(
        source=str(source),
        split=str(split),
        clients=int(float(clients)),
        seed=int(float(seed)),
        project=str(project),
        eval_fraction=float(eval_fraction),
        imgsz=int(float(data_imgsz)),
    )


def tune_step(datasets: dict) -> dict:
    """Pipeline step 2: Optuna HPO over a draft federate task on the shards (skipped if budget 0)."""
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=False)
    from components.federate import create_server_task
    from components.tune import tune
    from pipelines.fleetfl_pipeline import federated_config, step_parameters

    params = step_parameters()
    if params["hpo_budget"] == 0:
        return {"best_params": {}, "best_task_id": None, "trials": [], "skipped": True}
    base = create_server_task(
        datasets,
        federated_config(params, rounds=params["hpo_rounds"]),
        task_name="federate-hpo-base",
        tags=("hpo-base",),
        project=params["project"],
        client_queue=params["client_queue"],
        rollback_threshold=params["rollback_threshold"],
        client_wait_s=params["client_wait_s"],
    )
    return tune(
        base.id,
        params["search_space"] or None,
        budget=params["hpo_budget"],
        queue=params["hpo_queue"],
        concurrency=params["hpo_concurrency"],
        seed=params["seed"],
        pruner=params["hpo_pruner"],
    )


def federate_step(datasets: dict, tuned: dict) -> dict:
    """Pipeline step 3: the federated run with the best parameters (server and client tasks)."""
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=False)
    from components.federate import federate
    from pipelines.fleetfl_pipeline import federated_config, step_parameters

    params = step_parameters()
    config = federated_config(params, tuned=(tuned or {}).get("best_params") or {})
    return federate(
        datasets,
        config,
        project=params["project"],
        server_queue=params["server_queue"],
        client_queue=params["client_queue"],
        rollback_threshold=params["rollback_threshold"],
        client_wait_s=params["client_wait_s"],
        model_name=f"{params['model_name']}-federated",
    )


def evaluate_register_step(datasets: dict, federated: dict) -> dict:
    """Pipeline step 4: evaluate the final model on the held-out split and register a candidate."""
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=True)
    from components.evaluate_register import evaluate_register
    from pipelines.fleetfl_pipeline import federated_config, step_parameters

    params = step_parameters()
    result = evaluate_register(
        weights=federated["model_id"],
        eval_dataset_id=datasets["eval"],
        project=params["project"],
        model_name=params["model_name"],
        config=federated_config(params).to_flat(),
    )
    return {
        **result,
        "federate_model_id": federated["model_id"],
        "server_task_id": federated["server_task_id"],
    }


# ====================================================================== the controller
def build_pipeline(params: Mapping[str, Any], step_queue: str | None = None) -> Any:
    """The PipelineController with every parameter and the four steps.

    Args:
        params: checked pipeline parameters (their values become the defaults of the ``Args``
            section, so a clone can edit them).
        step_queue: queue of the step tasks (``None``: the default of the run mode).
    """
    from clearml import PipelineController, Task

    # The controller and its steps store their scripts, not a git link: agents find the FleetFL
    # packages on their PYTHONPATH (see components/common.py).
    Task.force_store_standalone_script(True)
    pipe = PipelineController(
        name=PIPELINE_NAME,
        project=str(params["project"]),
        version=PIPELINE_VERSION,
        add_pipeline_tags=True,
        abort_on_failure=True,
        # step scripts hold only the step function (which imports what it needs): this module's
        # own imports (``from __future__``...) would not compile in a generated script
        skip_global_imports=True,
        # step return values travel as JSON, not the SDK's default pickle (see pipelines/step_values.py)
        artifact_serialization_function=step_values.to_bytes,
        artifact_deserialization_function=step_values.from_bytes,
        pool_frequency=STEP_POLL_MINUTES,
    )
    for name, spec in PARAMETERS.items():
        value = params[name]
        pipe.add_parameter(name, json.dumps(value) if isinstance(value, dict) else value, spec.help)
    if step_queue:
        pipe.set_default_execution_queue(step_queue)
    pipe.add_function_step(
        name="version_data",
        function=version_data_step,
        function_kwargs={
            name: f"${{pipeline.{name}}}"
            for name in ("source", "split", "clients", "seed", "eval_fraction", "data_imgsz", "project")
        },
        function_return=["datasets"],
        task_type="data_processing",
        cache_executed_step=False,
    )
    pipe.add_function_step(
        name="tune",
        function=tune_step,
        function_kwargs={"datasets": "${version_data.datasets}"},
        function_return=["tuned"],
        parents=["version_data"],
        task_type="optimizer",
    )
    pipe.add_function_step(
        name="federate",
        function=federate_step,
        function_kwargs={
            "datasets": "${version_data.datasets}",
            "tuned": "${tune.tuned}",
        },
        function_return=["federated"],
        parents=["tune"],
        task_type="training",
    )
    pipe.add_function_step(
        name="evaluate_register",
        function=evaluate_register_step,
        function_kwargs={
            "datasets": "${version_data.datasets}",
            "federated": "${federate.federated}",
        },
        function_return=["candidate"],
        parents=["federate"],
        task_type="qc",
    )
    return pipe


def run_pipeline(
    values: Mapping[str, Any] | None = None, *, local_steps: bool = True, step_queue: str | None = None
) -> dict[str, Any]:
    """Run the pipeline with the controller in this process.

    Args:
        values: pipeline parameters (missing ones take their defaults); checked before anything runs.
        local_steps: run the step tasks as local processes (their federate/HPO tasks still go to the
            fl-server, fl-clients and hpo queues); ``False`` enqueues the steps on ``step_queue``.
        step_queue: queue of the step tasks when ``local_steps`` is False (default ``services``).

    Returns:
        ``{"pipeline_id", "datasets", "tuned", "federated", "candidate"}`` (each step's output).
    """
    params = check_parameters(values or {})
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=False)
    pipe = build_pipeline(params, step_queue=None if local_steps else (step_queue or "services"))
    pipe.start_locally(run_pipeline_steps_locally=local_steps)
    return collect_outputs(pipe)


def pipeline_page_url(pipeline_id: str, web_host: str | None = None) -> str:
    """The web page of a pipeline run, the link ``PipelineController`` prints (clearml 2.1.12):
    ``{web}/pipelines/<controller's project id>/experiments/<controller task id>``."""
    from clearml import Task

    web = (web_host or os.environ.get("CLEARML_WEB_HOST") or "").rstrip("/")
    project = Task.get_task(task_id=pipeline_id).project or "*"
    return f"{web}/pipelines/{project}/experiments/{pipeline_id}"


#: Each step's return value: the artifact of its task that holds it.
STEP_OUTPUTS = {
    "version_data": "datasets",
    "tune": "tuned",
    "federate": "federated",
    "evaluate_register": "candidate",
}


def read_step_output(task: Any, artifact: str) -> Any:
    """A step task's return value (JSON, see :mod:`pipelines.step_values`; never unpickled)."""
    return task.artifacts[artifact].get(deserialization_function=step_values.from_bytes)


def collect_outputs(pipe: Any) -> dict[str, Any]:
    """Each step's return value, read back from the step tasks' artifacts."""
    from clearml import Task

    outputs: dict[str, Any] = {"pipeline_id": pipe.id}
    dag = pipe.get_pipeline_dag()
    for step, artifact in STEP_OUTPUTS.items():
        node = dag.get(step)
        if node is None or not node.executed:
            raise RuntimeError(f"pipeline {pipe.id}: step {step!r} did not run")
        task = Task.get_task(task_id=node.executed)
        if task.get_status() != "completed":
            from components.federate import log_tail

            raise RuntimeError(
                f"pipeline {pipe.id}: step {step!r} ({task.id}) ended {task.get_status()}: "
                f"{task.data.status_message or ''}\n{log_tail(task)}"
            )
        outputs[artifact] = read_step_output(task, artifact)
        outputs[f"{step}_task_id"] = task.id
    return outputs


def enqueue_pipeline(
    values: Mapping[str, Any] | None = None, queue: str = "services", timeout_s: float = 120.0
) -> str:
    """Check the parameters, then create the controller task and enqueue it on ``queue``; return its id.

    The controller is created by ``python -m pipelines.fleetfl_pipeline`` in a subprocess (ClearML's
    ``PipelineController.start`` ends the process that enqueues it).
    """
    params = check_parameters(values or {})
    from queues.definitions import find_queue_id

    if not find_queue_id(queue):
        raise PipelineParameterError(f"queue {queue!r} does not exist (create it: fleetfl queues create)")
    with tempfile.TemporaryDirectory(prefix="fleetfl-pipeline-") as folder:
        id_file = Path(folder) / "pipeline_id"
        from queues.agents import task_free_environment  # the controller must be a task of its own

        env = task_free_environment(
            **{_ENV_PARAMS: json.dumps(params), _ENV_QUEUE: queue, _ENV_ID_FILE: str(id_file)}
        )
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.fleetfl_pipeline"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        pipeline_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
    status = ""
    if pipeline_id:
        from clearml import Task

        status = str(Task.get_task(task_id=pipeline_id).get_status())
    if status not in ("queued", "in_progress", "completed"):
        raise RuntimeError(
            f"the pipeline controller {pipeline_id or '(none)'} was not enqueued (exit {done.returncode}, "
            f"status {status or 'none'}): {(done.stderr or done.stdout)[-2000:]}"
        )
    return pipeline_id


def main() -> int:
    """Controller entry point: enqueue (from :func:`enqueue_pipeline`) or run (on an agent)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=False)
    queue = os.environ.pop(_ENV_QUEUE, "")
    params = check_parameters(json.loads(os.environ.pop(_ENV_PARAMS, "{}")))
    id_file = os.environ.pop(_ENV_ID_FILE, "")
    pipe = build_pipeline(params, step_queue=params["step_queue"])
    if queue:  # enqueueing: record the id, then ClearML ends this process
        Path(id_file).write_text(pipe.id, encoding="utf-8")
        pipe.start(queue=queue)
        return 0
    # On an agent: the (possibly UI-edited) values, checked before any step is created.
    edited = check_parameters({k: v for k, v in pipe.get_parameters().items() if k in PARAMETERS})
    pipe.set_default_execution_queue(edited["step_queue"])
    pipe.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
