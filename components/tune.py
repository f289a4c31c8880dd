"""Hyper-parameter search over federated runs: ClearML ``HyperParameterOptimizer`` + ``OptimizerOptuna``.

Each trial is a clone of a *base federated-run task* (a ``federate`` server task, see
:func:`components.federate.create_server_task`) with some ``federated/<key>`` parameters changed. The
objective is the global mAP50-95 that the server task reports every round with the round as the
iteration (scalar ``global`` / ``map50_95``), so Optuna's pruner sees one intermediate value per
round and can stop a poor trial after any round. Sampling is Optuna's TPE sampler (seeded).

Search space (JSON-able, keys are :class:`~federated.config.FederatedConfig` keys)::

    {"lr0": {"min": 0.001, "max": 0.05, "log": true},      # float range (log scale)
     "momentum": {"min": 0.8, "max": 0.98},                 # float range
     "local_epochs": {"min": 1, "max": 2, "int": true},     # integer range
     "mosaic": {"values": [0.0, 1.0]}}                      # categorical

:func:`default_search_space` gives lr0, local epochs, momentum, weight decay and mosaic, plus the
strategy's own knob (FedProx ``proximal_mu``, FedAvgM ``server_lr``, FedAdam/FedYogi ``fedopt_eta``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from components.common import (
    CONFIG_SECTION,
    DEFAULT_PROJECT,
    ComponentError,
    init_component_task,
    prepare_process,
    publish_output,
)

if TYPE_CHECKING:
    from clearml import Task

LOG = logging.getLogger(__name__)

#: The scalar every federate server task reports per round (title, series).
OBJECTIVE = ("global", "map50_95")
PRUNERS = ("median", "hyperband", "none")

#: Parameters of the tune task (section ``General``).
TUNE_DEFAULTS: dict[str, Any] = {
    "base_task_id": "",
    "search_space": {},  # {} = default_search_space(strategy of the base task)
    "budget": 4,
    "queue": "hpo",  # '' = run the trials in this process (start_locally)
    "concurrency": 1,
    "time_limit_s": 0.0,
    "seed": 0,
    "pruner": "median",
    "project": DEFAULT_PROJECT,
}

_COMMON_SPACE: dict[str, dict[str, Any]] = {
    "lr0": {"min": 0.002, "max": 0.03, "log": True},
    "local_epochs": {"min": 1, "max": 2, "int": True},
    "momentum": {"min": 0.8, "max": 0.95},
    "weight_decay": {"min": 0.0, "max": 0.001},
    "mosaic": {"values": [0.0, 1.0]},
}
_STRATEGY_SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "fedprox": {"proximal_mu": {"min": 0.001, "max": 0.1, "log": True}},
    "fedavgm": {"server_lr": {"min": 0.5, "max": 1.0}},
    "fedadam": {"fedopt_eta": {"min": 0.001, "max": 0.1, "log": True}},
    "fedyogi": {"fedopt_eta": {"min": 0.001, "max": 0.1, "log": True}},
}


class TuneError(ComponentError):
    """A bad search space or tune setting (nothing was enqueued)."""


def default_search_space(strategy: str = "fedavg") -> dict[str, dict[str, Any]]:
    """lr0, local epochs, momentum, weight decay, mosaic and the strategy's own server/proximal knob."""
    return {**_COMMON_SPACE, **_STRATEGY_SPACE.get(strategy, {})}


def check_search_space(search_space: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate a search space against :class:`FederatedConfig` (keys, types, bounds).

    Raises:
        TuneError: an unknown key, a malformed range, or a bound the config would refuse.
    """
    from federated.config import ConfigError, FederatedConfig

    if not isinstance(search_space, Mapping) or not search_space:
        raise TuneError("search_space: expected a non-empty mapping of config keys to ranges")
    defaults = FederatedConfig()
    checked: dict[str, dict[str, Any]] = {}
    for key, spec in search_space.items():
        where = f"search_space.{key}"
        if key not in FederatedConfig.field_names():
            raise TuneError(f"{where}: not a federated config key")
        if key in ("rounds", "model", "seed"):
            raise TuneError(f"{where}: {key} is not tuned (set it on the base task)")
        if not isinstance(spec, Mapping):
            raise TuneError(f"{where}: expected {{min, max[, log, int]}} or {{values: [...]}}, got {spec!r}")
        if "values" in spec:
            values = list(spec["values"]) if isinstance(spec["values"], list | tuple) else []
            if not values:
                raise TuneError(f"{where}.values: expected a non-empty list")
            samples = values
            checked[key] = {"values": values}
        else:
            try:
                low, high = float(spec["min"]), float(spec["max"])
            except (KeyError, TypeError, ValueError):
                raise TuneError(f"{where}: expected numeric 'min' and 'max'") from None
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise TuneError(f"{where}: needs min < max, got {low} and {high}")
            log, integer = bool(spec.get("log", False)), bool(spec.get("int", False))
            if isinstance(getattr(defaults, key), int) and not isinstance(getattr(defaults, key), bool):
                integer = True
            if log and low <= 0:
                raise TuneError(f"{where}: a log range needs min > 0, got {low}")
            if integer and not (low.is_integer() and high.is_integer()):
                raise TuneError(f"{where}: an integer range needs integer bounds, got {low} and {high}")
            samples = [int(low), int(high)] if integer else [low, high]
            checked[key] = {"min": samples[0], "max": samples[1], "log": log, "int": integer}
        for value in samples:
            try:
                defaults.replace(**{key: value})
            except ConfigError as exc:
                raise TuneError(f"{where}: {value!r} is not a valid value ({exc})") from None
    return checked


def hyper_parameters(search_space: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """ClearML parameter ranges (``federated/<key>``) for a checked search space."""
    from clearml.automation import (
        DiscreteParameterRange,
        LogUniformParameterRange,
        UniformIntegerParameterRange,
        UniformParameterRange,
    )

    ranges: list[Any] = []
    for key, spec in search_space.items():
        name = f"{CONFIG_SECTION}/{key}"
        if "values" in spec:
            ranges.append(DiscreteParameterRange(name, values=list(spec["values"])))
        elif spec.get("int"):
            ranges.append(
                UniformIntegerParameterRange(name, min_value=int(spec["min"]), max_value=int(spec["max"]))
            )
        elif spec.get("log"):
            # ClearML's log range takes exponents: base ** min .. base ** max
            ranges.append(
                LogUniformParameterRange(
                    name, min_value=math.log10(spec["min"]), max_value=math.log10(spec["max"])
                )
            )
        else:
            ranges.append(
                UniformParameterRange(name, min_value=float(spec["min"]), max_value=float(spec["max"]))
            )
    return ranges


def tune(
    base_task_id: str,
    search_space: Mapping[str, Any] | None = None,
    budget: int = 4,
    queue: str | None = "hpo",
    concurrency: int = 1,
    *,
    time_limit_s: float = 0.0,
    seed: int = 0,
    pruner: str = "median",
    poll_s: float = 3.0,
) -> dict[str, Any]:
    """Search hyper-parameters of the federated run ``base_task_id`` with Optuna (TPE + pruner).

    Args:
        base_task_id: a federate server task (draft or finished) to clone for every trial.
        search_space: ranges per config key (see the module docstring); empty: the default space
            for the base task's strategy.
        budget: number of trials.
        queue: queue the trials run on; ``None`` or ``""`` runs them as local processes.
        concurrency: trials running at the same time.
        time_limit_s: stop the search after this many seconds (0: no limit).
        seed: seed of the TPE sampler.
        pruner: ``median`` (Optuna's MedianPruner), ``hyperband`` or ``none``.
        poll_s: how often trial scalars are read.

    Returns:
        ``{"best_params": {key: value}, "best_task_id", "best_map50_95", "trials": [{"task_id",
        "params", "map50_95", "status"}], "objective": "global/map50_95"}``.

    Raises:
        TuneError: bad settings or search space (before any trial is enqueued), or no trial
            reported the objective.
    """
    prepare_process()
    import optuna
    from clearml import Task
    from clearml.automation import HyperParameterOptimizer
    from clearml.automation.optuna import OptimizerOptuna

    base = _base_task(base_task_id)
    strategy = str(base.get_parameter(f"{CONFIG_SECTION}/strategy", default="fedavg"))
    space = check_search_space(search_space or default_search_space(strategy))
    _check_settings(budget, concurrency, time_limit_s, pruner)
    rounds = int(float(base.get_parameter(f"{CONFIG_SECTION}/rounds", default=1)))
    optuna_pruner: Any = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(rounds, 1)),
        "none": optuna.pruners.NopPruner(),
    }[pruner]
    optimizer = HyperParameterOptimizer(
        base_task_id=base.id,
        hyper_parameters=hyper_parameters(space),
        objective_metric_title=OBJECTIVE[0],
        objective_metric_series=OBJECTIVE[1],
        # the run keeps its best round (rollback), so the best reported value is what it delivers
        objective_metric_sign="max_global",
        optimizer_class=OptimizerOptuna,
        max_number_of_concurrent_tasks=concurrency,
        execution_queue=queue or "",
        optimization_time_limit=(time_limit_s / 60.0) if time_limit_s else None,
        auto_connect_task=False,
        # OptimizerOptuna requires max_iteration_per_job (TypeError without it). One iteration is one
        # round; it aborts a job once that iteration is reported, so one more lets a trial finish
        # cleanly (final model, client tasks stopped by their server) instead of being killed.
        max_iteration_per_job=rounds + 1,
        min_iteration_per_job=1,
        total_max_jobs=budget,
        pool_period_min=poll_s / 60.0,
        optuna_sampler=optuna.samplers.TPESampler(seed=seed),
        optuna_pruner=optuna_pruner,
    )
    # ClearML 2.1.12: when the search ends by itself, HyperParameterOptimizer.stop() joins the
    # progress reporter without waking it, so it returns only after the reporter's sleep (5 min by
    # default). A 6 s report period bounds that wait (30 s left the demo's tune step idle ~15 s
    # after its last trial).
    optimizer.set_report_period(0.1)
    LOG.info("tune: %d trial(s) over %s on %s", budget, ", ".join(space), queue or "this machine")
    started = optimizer.start_locally() if not queue else optimizer.start()
    if not started:
        raise TuneError("the hyper-parameter optimizer did not start")
    optimizer.wait()
    optimizer.stop()
    trials = _trials(optimizer, space)
    scored = [t for t in trials if t["map50_95"] is not None]
    if not scored:
        raise TuneError(f"none of the {len(trials)} trial(s) reported {'/'.join(OBJECTIVE)}")
    best = max(scored, key=lambda t: t["map50_95"])
    result = {
        "best_params": best["params"],
        "best_task_id": best["task_id"],
        "best_map50_95": best["map50_95"],
        "trials": trials,
        "objective": "/".join(OBJECTIVE),
        "search_space": space,
    }
    current = Task.current_task()
    if current is not None:
        current.get_logger().report_text(f"tune: best {best['params']} (mAP50-95 {best['map50_95']:.4f})")
    return result


def _base_task(base_task_id: str) -> Task:
    from clearml import Task

    if not base_task_id:
        raise TuneError("base_task_id: a federate task id is required")
    try:
        base = Task.get_task(task_id=base_task_id)
    except Exception as exc:  # the SDK raises ValueError or its own errors for unknown ids
        raise TuneError(f"base_task_id: no task {base_task_id!r} ({exc})") from None
    if base is None or base.get_parameter(f"{CONFIG_SECTION}/rounds") is None:
        raise TuneError(
            f"base_task_id: task {base_task_id} has no '{CONFIG_SECTION}' parameters (not a federate task)"
        )
    return base


def _check_settings(budget: int, concurrency: int, time_limit_s: float, pruner: str) -> None:
    if not isinstance(budget, int) or budget < 1:
        raise TuneError(f"budget: must be a positive integer, got {budget!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise TuneError(f"concurrency: must be a positive integer, got {concurrency!r}")
    if time_limit_s < 0:
        raise TuneError(f"time_limit_s: must be >= 0, got {time_limit_s!r}")
    if pruner not in PRUNERS:
        raise TuneError(f"pruner: {pruner!r} is not one of {', '.join(PRUNERS)}")


def _trials(optimizer: Any, space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every trial the optimizer created: its parameters, best objective value and status."""
    from clearml import Task

    from federated.config import FederatedConfig

    jobs = optimizer.get_optimizer().get_created_jobs_ids()  # {task_id: {name: value}}
    trials = []
    for task_id, overrides in jobs.items():
        task = Task.get_task(task_id=task_id)
        metric = task.get_last_scalar_metrics().get(OBJECTIVE[0], {}).get(OBJECTIVE[1], {})
        value = metric.get("max")
        params = {}
        for name, raw in (overrides or {}).items():
            key = name.split("/", 1)[-1]
            if key in space:
                params[key] = FederatedConfig().replace(**{key: raw}).to_flat()[key]
        trials.append(
            {
                "task_id": task_id,
                "params": params,
                "map50_95": float(value) if isinstance(value, int | float) and math.isfinite(value) else None,
                "status": str(task.get_status()),
            }
        )
    return trials


def main() -> int:
    """Task entry point (``python -m components.tune``): run :func:`tune` with the task's parameters."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    task, params = init_component_task("tune", TUNE_DEFAULTS, task_type="optimizer")
    output = tune(
        params["base_task_id"],
        params["search_space"] or None,
        budget=params["budget"],
        queue=params["queue"] or None,
        concurrency=params["concurrency"],
        time_limit_s=params["time_limit_s"],
        seed=params["seed"],
        pruner=params["pruner"],
    )
    publish_output(task, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
