"""``fleetfl demo --out DIR``: the whole FleetFL system on one machine, small settings, in minutes.

1. starts the embedded ClearML server (``DIR/clearml``) and points this process' SDK at it
   (``DIR/clearml.conf``);
2. creates the queues (``services``, ``fl-server``, ``fl-clients``, ``hpo``) and starts local
   clearml-agent daemons for them (``DIR/agents``);
3. runs the pipeline "fleetfl-federated" on synthetic driving scenes (controller here, steps as local
   processes, federated server/client tasks and HPO trials on the agents);
4. starts the monitor service task (queue ``services``) and waits for its decision on the new
   candidate;
5. prints a table (shards, best HPO parameters, mAP per round, registered model, monitor decision)
   and where everything is, writes ``DIR/summary.json``, and stops what it started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

#: Settings sized for a 2-core CPU and about 10 minutes (measured in README "Benchmarks"): YOLOv8n
#: (it learns from scratch far sooner than the default YOLOv9t: mAP50-95 0.136 vs 0.006 after 8
#: epochs here) at 128 px without mosaic, on 300 synthetic scenes (240 for 2 clients, 60 held out),
#: 3 rounds of 3 local epochs (AdamW, kept optimizer state), so the held-out mAP50-95 rises round by
#: round; 2 HPO trials of 2 rounds side by side (1 round of training leaves mAP at 0 for any
#: learning rate), one learning rate each, the best carried into the final run.
DEMO_PARAMETERS: dict[str, Any] = {
    "source": "synthetic:300",
    "split": "iid",
    "clients": 2,
    "data_imgsz": 128,
    "rounds": 3,
    "hpo_budget": 2,
    "hpo_rounds": 2,
    "hpo_concurrency": 2,
    "hpo_pruner": "none",
    "config": {
        "imgsz": 128,
        "batch": 8,
        "nbs": 8,
        "local_epochs": 3,
        "model": "yolov8n.yaml",
        "mosaic": 0.0,
        "lr0": 0.005,
        "optimizer_state": "keep",
        "image_cache": "ram",
    },
    # A range, not a list of two values: ClearML's OptimizerOptuna prunes a trial whose parameters
    # repeat an earlier one ("duplicate parameters") and Optuna's TPE, sampling the first trials at
    # random, drew 0.005 twice in one run: the demo then showed a single trial.
    "search_space": {"lr0": {"min": 0.001, "max": 0.008, "log": True}},
    "project": "FleetFL-demo",
    "client_wait_s": 240.0,
}
#: Agents per queue: 2 HPO trials at a time, each a server and 2 clients; ``services`` runs the
#: monitor and, beside it, the evaluation of the second candidate.
DEMO_AGENTS: dict[str, int] = {"services": 2, "fl-server": 1, "fl-clients": 4, "hpo": 2}
#: How long the monitor watches for its two decisions (it ends as soon as it has both).
MONITOR_WAIT_S = 300.0
#: The worse candidate the monitor must refuse: the final run's round-1 checkpoint (a run cut short).
CUT_SHORT_ARTIFACT = "checkpoint-round-0001"
ENDED = ("completed", "failed", "stopped", "closed", "published")


class DemoError(RuntimeError):
    """A demo stage failed; the message says which and where its logs are."""


def run_demo(out: Path, overrides: Mapping[str, Any] | None = None, keep: bool = False) -> dict[str, Any]:
    """Run the demo into ``out``; return the summary (also written to ``out/summary.json``)."""
    from pipelines.fleetfl_pipeline import check_parameters

    out = Path(out).resolve()
    params = check_parameters({**DEMO_PARAMETERS, **dict(overrides or {})})  # before anything starts
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data_dir = out / "clearml"
    _fresh_data_dir(data_dir)
    _start_server(data_dir, out / "clearml.conf")
    agents: list[Any] = []
    try:
        from federated.runtime import configure_offline

        configure_offline(with_ultralytics=False)
        from queues.agents import start_agents, wait_for_workers
        from queues.definitions import create_queues

        queues = create_queues()
        print(f"queues: {', '.join(queues)}")
        for queue, count in DEMO_AGENTS.items():
            agents += start_agents(queue, count, state_dir=out / "agents")
        if not wait_for_workers([a.worker_id for a in agents], timeout_s=120.0):
            raise DemoError(f"the agents did not register within 120 s; logs in {out / 'agents'}")
        print(f"agents: {len(agents)} clearml-agent daemons ({json.dumps(DEMO_AGENTS)})")

        from pipelines.fleetfl_pipeline import pipeline_page_url, run_pipeline

        print("pipeline fleetfl-federated: version_data -> tune -> federate -> evaluate_register ...")
        outputs = run_pipeline(params, local_steps=True)
        outputs["final_run_params"] = _final_run_params(outputs)
        monitor = _run_monitor(params, outputs)
        summary = build_summary(params, outputs, monitor, data_dir, out, time.monotonic() - started)
        summary["pipeline_url"] = pipeline_page_url(outputs["pipeline_id"])
        from federated.config import atomic_write_text

        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True, default=str))
        print(format_table(summary))
    finally:
        if not keep:
            _stop(agents, data_dir, out)
    print(f"summary: {out / 'summary.json'}")
    if keep:
        print(
            f"kept running: the ClearML server and {len(agents)} agents; stop them with "
            f"`FLEETFL_HOME={out} fleetfl agent stop; FLEETFL_HOME={out} fleetfl server stop`"
        )
    print(f"pipeline run page: {summary['pipeline_url']}")
    return summary


def _fresh_data_dir(data_dir: Path) -> None:
    """Each demo starts from an empty server, unless the one a ``--keep`` run left still runs.

    The server listens on free ports, and ClearML stores a dataset's files with the file server's
    URL: a second demo on the previous run's data would reuse those dataset versions and fail to
    download them from the old port.
    """
    from clearml_local.cli import running_state

    if data_dir.exists() and running_state(data_dir) is None:
        shutil.rmtree(data_dir)


def _start_server(data_dir: Path, conf: Path) -> None:
    """Start the embedded server (detached) and point this process' ClearML SDK at it."""
    from clearml_local.cli import client_settings, running_state, write_conf

    if running_state(data_dir) is None:
        # `fleetfl server start --detach` in its own process: the server outlives that process and is
        # not this process' child (so it never lingers here as a zombie after it stops)
        command = [sys.executable, "-m", "pipelines.cli", "server", "start", "--data", str(data_dir)]
        command += ["--api-port", "0", "--files-port", "0", "--detach"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0 or running_state(data_dir) is None:
            raise DemoError(
                f"the ClearML server did not start: {(done.stderr or done.stdout).strip()[-1500:]}"
            )
        print(done.stdout.strip())
    settings = client_settings(data_dir)
    write_conf(conf, settings)
    os.environ.pop("CLEARML_OFFLINE_MODE", None)
    os.environ.update({**settings, "CLEARML_CONFIG_FILE": str(conf)})


def _run_monitor(params: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The monitor service decides the pipeline's candidate, then a worse one (a run cut short).

    The monitor task (queue ``services``) watches the registry for two decisions. Beside it, an
    ``evaluate_register`` task (queue ``services``, the second agent) evaluates the final run's
    round-1 checkpoint on the same held-out split and registers it as a candidate, as any other
    candidate is registered: the monitor compares it with production and refuses it (rollback
    record on the model, alert in the monitor task's log) when it is more than
    ``promotion_threshold`` worse.
    """
    from clearml import Task

    from components.common import read_output
    from components.monitor import create_monitor_task

    candidate_id = outputs["candidate"]["model_id"]
    task = create_monitor_task(
        project=str(params["project"]),
        threshold=float(params["promotion_threshold"]),
        poll_s=2.0,
        max_decisions=2,
        timeout_s=MONITOR_WAIT_S,
    )
    Task.enqueue(task, queue_name="services")
    print(f"monitor: task {task.id} on services")
    challenger = register_cut_short(params, outputs, queue="services")
    _wait(task.id, "the monitor task", MONITOR_WAIT_S + 60.0)
    decisions = {d.get("candidate_model_id"): d for d in read_output(task.id).get("decisions") or []}
    for model_id in (candidate_id, challenger["model_id"]):
        if model_id not in decisions:
            raise DemoError(f"the monitor task {task.id} took no decision on candidate {model_id}")
    return {
        **decisions[candidate_id],
        "monitor_task_id": task.id,
        "challenger": {**challenger, **decisions[challenger["model_id"]]},
        "alert": _alert_line(task.id),
    }


def _final_run_params(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The tuned keys as the final federate task really ran them (its ``federated`` parameters)."""
    from clearml import Task

    tuned = (outputs.get("tuned") or {}).get("best_params") or {}
    server = Task.get_task(task_id=outputs["federated"]["server_task_id"])
    section = server.get_parameters_as_dict().get("federated", {})
    return {key: _number(section.get(key)) for key in tuned}


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def register_cut_short(
    params: Mapping[str, Any], outputs: Mapping[str, Any], queue: str, timeout_s: float = MONITOR_WAIT_S
) -> dict[str, Any]:
    """Evaluate and register the final run's round-1 checkpoint: an ``evaluate_register`` task on
    ``queue``, the same component that registered the pipeline's candidate; returns its output."""
    from clearml import Task

    from components.common import create_component_task, read_output
    from pipelines.fleetfl_pipeline import federated_config

    server = Task.get_task(task_id=outputs["federated"]["server_task_id"])
    artifact = server.artifacts.get(CUT_SHORT_ARTIFACT)
    if artifact is None or not artifact.url:
        raise DemoError(f"the federate task {server.id} has no artifact {CUT_SHORT_ARTIFACT!r}")
    task = create_component_task(
        "evaluate_register",
        {
            "weights": artifact.url,
            "eval_dataset_id": outputs["datasets"]["eval"],
            "project": str(params["project"]),
            "model_name": str(params["model_name"]),
            "tags": ["candidate"],
        },
        project=str(params["project"]),
        task_name="evaluate_register (run cut short after round 1)",
        task_type="qc",
        config=federated_config(params).to_flat(),
    )
    Task.enqueue(task, queue_name=queue)
    print(
        f"second candidate: the final run's round-1 checkpoint, evaluate_register task {task.id} on {queue}"
    )
    _wait(task.id, "the evaluate_register task of the round-1 checkpoint", timeout_s)
    result = read_output(task.id)
    return {
        "model_id": result["model_id"],
        "map50": result.get("map50"),
        "map50_95": result.get("map50_95"),
        "weights": artifact.url,
        "evaluate_task_id": task.id,
    }


def _wait(task_id: str, what: str, timeout_s: float) -> None:
    from clearml import Task

    deadline = time.monotonic() + timeout_s
    while (status := str(Task.get_task(task_id=task_id).get_status())) not in ENDED:
        if time.monotonic() > deadline:
            raise DemoError(f"{what} ({task_id}) did not finish within {timeout_s:.0f} s")
        time.sleep(2.0)
    if status != "completed":
        raise DemoError(f"{what} ({task_id}) ended {status}")


def _alert_line(task_id: str) -> str | None:
    """The monitor's ALERT line from its task log (what an operator sees), if it raised one."""
    from clearml import Task

    for entry in Task.get_task(task_id=task_id).get_reported_console_output(number_of_reports=50):
        for line in str(entry).splitlines():
            if "ALERT:" in line:
                return line[line.index("ALERT:") :].strip()
    return None


def build_summary(
    params: Mapping[str, Any],
    outputs: Mapping[str, Any],
    monitor: Mapping[str, Any],
    data_dir: Path,
    out: Path,
    seconds: float,
) -> dict[str, Any]:
    """The demo's ``summary.json``: datasets, best params, rounds, model and monitor decision."""
    datasets, tuned = outputs["datasets"], outputs["tuned"]
    federated, candidate = outputs["federated"], outputs["candidate"]
    web = os.environ.get("CLEARML_WEB_HOST", "")
    return {
        "datasets": {"source": datasets["source"], "eval": datasets["eval"], "clients": datasets["clients"]},
        "partition": {
            name: {"images": split.get("images"), "boxes": split.get("boxes")}
            for name, split in (datasets.get("partition", {}).get("splits") or {}).items()
            if isinstance(split, Mapping)
        },
        "best_params": tuned.get("best_params", {}),
        "best_trial_id": tuned.get("best_task_id"),
        "hpo_trials": [
            {k: t.get(k) for k in ("task_id", "params", "map50_95", "status")}
            for t in tuned.get("trials", [])
        ],
        "rounds": federated["rounds"],
        "rolled_back": federated.get("rolled_back", []),
        "federate_task_id": federated["server_task_id"],
        "client_task_ids": federated["client_task_ids"],
        "model_id": candidate["model_id"],
        "candidate_map50": candidate.get("map50"),
        "candidate_map50_95": candidate.get("map50_95"),
        "monitor_decision": monitor.get("decision"),
        "production_model_id": monitor.get("production_model_id"),
        "monitor_task_id": monitor.get("monitor_task_id"),
        "second_candidate": dict(monitor.get("challenger") or {}),
        "alert": monitor.get("alert"),
        "final_run_params": dict(outputs.get("final_run_params") or {}),
        "pipeline_id": outputs["pipeline_id"],
        "parameters": dict(params),
        "clearml": {"web": web, "api": os.environ.get("CLEARML_API_HOST"), "data_dir": str(data_dir)},
        "seconds": round(seconds, 1),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "out": str(out),
    }


def format_table(summary: Mapping[str, Any]) -> str:
    """The final table the demo prints."""
    lines = ["", "FleetFL demo", "=" * 72]
    params = summary.get("parameters") or {}
    if params:
        from pipelines.fleetfl_pipeline import federated_config

        config = federated_config(params)
        lines.append(
            f"settings            {config.model} from scratch at {config.imgsz} px, {config.rounds} rounds x "
            f"{config.local_epochs} local epochs, {params['clients']} clients, {params['source']} "
            "(small: sized for a 2-core CPU)"
        )
    datasets = summary["datasets"]
    lines.append(f"source dataset      {datasets['source']}")
    lines.append(f"eval dataset        {datasets['eval']}")
    for index, dataset_id in enumerate(datasets["clients"]):
        part = summary.get("partition", {}).get(f"client_{index}", {})
        extra = f"  ({part.get('images')} images, {part.get('boxes')} boxes)" if part else ""
        lines.append(f"client_{index} shard      {dataset_id}{extra}")
    best = summary.get("best_params") or {}
    trials = summary.get("hpo_trials") or []
    lines.append(f"HPO trials          {len(trials)} (objective: the trial's best global mAP50-95)")
    for trial in trials:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in (trial.get("params") or {}).items())
        mark = "  <- best" if trial.get("task_id") == summary.get("best_trial_id") else ""
        if trial.get("status") not in (None, "completed"):
            mark += f"  ({trial.get('status')})"
        lines.append(f"  {str(trial.get('task_id'))[:8]}  {params:<44} {_fmt(trial.get('map50_95'))}{mark}")
    lines.append(
        "best HPO params     " + (", ".join(f"{k}={_fmt(v)}" for k, v in best.items()) or "(no HPO)")
    )
    final = summary.get("final_run_params") or {}
    if final:
        lines.append("final run used      " + ", ".join(f"{k}={_fmt(v)}" for k, v in final.items()))
    lines.append("round   mAP50    mAP50-95  seconds  note")
    for row in summary["rounds"]:
        note = f"rolled back to round {row['rolled_back_to']}" if row.get("rolled_back_to") else ""
        lines.append(
            f"{row['round']:>5}   {_fmt(row.get('map50'))} {_fmt(row.get('map50_95'))}   "
            f"{_fmt(row.get('round_seconds'), 1):>7}  {note}"
        )
    lines.append(
        f"candidate 1         {summary['model_id']} final model, mAP50-95 "
        f"{_fmt(summary.get('candidate_map50_95'))}: monitor {_decision(summary['monitor_decision'])}"
    )
    second = summary.get("second_candidate") or {}
    if second:
        drop = second.get("relative_drop")
        lines.append(
            f"candidate 2         {second.get('model_id')} round-1 checkpoint (a run cut short), mAP50-95 "
            f"{_fmt(second.get('map50_95'))}: monitor {_decision(second.get('decision'))}"
            + (f" ({drop:.0%} below production)" if isinstance(drop, float) else "")
        )
        if second.get("decision") == "rolled_back":
            lines.append(f"rollback record     metadata 'monitor_record' of model {second.get('model_id')}")
    if summary.get("alert"):
        lines.append(f"alert               {summary['alert']}")
    lines.append(f"production model    {summary.get('production_model_id')}")
    lines.append("-" * 72)
    lines.append(f"ClearML server      {summary['clearml']['api']} (data {summary['clearml']['data_dir']})")
    lines.append(f"pipeline task       {summary['pipeline_id']}; federate task {summary['federate_task_id']}")
    if summary.get("pipeline_url"):
        lines.append(f"pipeline run page   {summary['pipeline_url']}")
    lines.append(f"took                {summary['seconds']} s")
    return "\n".join(lines)


def _decision(decision: Any) -> str:
    return {
        "first": "promoted it to production (the project's first model)",
        "promoted": "promoted it to production",
        "rolled_back": "refused it: production stays",
    }.get(str(decision), str(decision))


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _stop(agents: list[Any], data_dir: Path, out: Path) -> None:
    """Stop the agents and the server this demo started."""
    from clearml_local.cli import stop_server

    try:
        from queues.agents import stop_agents

        stop_agents(worker_ids=[a.worker_id for a in agents], state_dir=out / "agents")
    except Exception as exc:  # keep going: the server must stop too
        LOG.warning("demo: stopping the agents failed: %s", exc)
    stop_server(data_dir, kill_after_s=45.0)  # a busy machine gets longer before the SIGKILL
