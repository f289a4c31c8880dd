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
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

#: Small settings: 2 clients, tiny images, 2 rounds, 2 HPO trials of 1 round.
DEMO_PARAMETERS: dict[str, Any] = {
    "source": "synthetic:64",
    "split": "iid",
    "clients": 2,
    "data_imgsz": 96,
    "rounds": 2,
    "hpo_budget": 2,
    "hpo_rounds": 1,
    "config": {"imgsz": 96, "batch": 8},
    "search_space": {
        "lr0": {"min": 0.005, "max": 0.02, "log": True},
        "momentum": {"min": 0.85, "max": 0.95},
        "mosaic": {"values": [0.0, 1.0]},
    },
    "project": "FleetFL-demo",
    "client_wait_s": 240.0,
}
#: Agents per queue (the monitor holds one ``services`` agent while it runs).
DEMO_AGENTS: dict[str, int] = {"services": 1, "fl-server": 1, "fl-clients": 2, "hpo": 1}
MONITOR_WAIT_S = 180.0


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

        from pipelines.fleetfl_pipeline import run_pipeline

        print("pipeline fleetfl-federated: version_data -> tune -> federate -> evaluate_register ...")
        outputs = run_pipeline(params, local_steps=True)
        monitor = _run_monitor(params, outputs["candidate"]["model_id"])
        summary = build_summary(params, outputs, monitor, data_dir, out, time.monotonic() - started)
        from federated.config import atomic_write_text

        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True, default=str))
        print(format_table(summary))
    finally:
        if not keep:
            _stop(agents, data_dir, out)
    print(f"summary: {out / 'summary.json'}")
    return summary


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


def _run_monitor(params: Mapping[str, Any], candidate_id: str) -> dict[str, Any]:
    """Enqueue the monitor service task and wait for its decision on ``candidate_id``."""
    from clearml import Task

    from components.common import read_output
    from components.monitor import create_monitor_task

    task = create_monitor_task(
        project=str(params["project"]),
        threshold=float(params["promotion_threshold"]),
        poll_s=2.0,
        max_decisions=1,
        timeout_s=MONITOR_WAIT_S,
    )
    Task.enqueue(task, queue_name="services")
    print(f"monitor: task {task.id} on services")
    deadline = time.monotonic() + MONITOR_WAIT_S + 60.0
    while str(Task.get_task(task_id=task.id).get_status()) not in ("completed", "failed", "stopped"):
        if time.monotonic() > deadline:
            raise DemoError(f"the monitor task {task.id} did not finish in time")
        time.sleep(2.0)
    status = str(Task.get_task(task_id=task.id).get_status())
    if status != "completed":
        raise DemoError(f"the monitor task {task.id} ended {status}")
    decisions = read_output(task.id).get("decisions") or []
    mine = [d for d in decisions if d.get("candidate_model_id") == candidate_id]
    if not mine:
        raise DemoError(f"the monitor took no decision on candidate {candidate_id}")
    return {**mine[-1], "monitor_task_id": task.id}


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
    datasets = summary["datasets"]
    lines.append(f"source dataset      {datasets['source']}")
    lines.append(f"eval dataset        {datasets['eval']}")
    for index, dataset_id in enumerate(datasets["clients"]):
        part = summary.get("partition", {}).get(f"client_{index}", {})
        extra = f"  ({part.get('images')} images, {part.get('boxes')} boxes)" if part else ""
        lines.append(f"client_{index} shard      {dataset_id}{extra}")
    best = summary.get("best_params") or {}
    lines.append(
        "best HPO params     " + (", ".join(f"{k}={_fmt(v)}" for k, v in best.items()) or "(no HPO)")
    )
    lines.append("round   mAP50    mAP50-95  seconds  note")
    for row in summary["rounds"]:
        note = f"rolled back to round {row['rolled_back_to']}" if row.get("rolled_back_to") else ""
        lines.append(
            f"{row['round']:>5}   {_fmt(row.get('map50'))} {_fmt(row.get('map50_95'))}   "
            f"{_fmt(row.get('round_seconds'), 1):>7}  {note}"
        )
    lines.append(
        f"registered model    {summary['model_id']} "
        f"(candidate, mAP50-95 {_fmt(summary.get('candidate_map50_95'))})"
    )
    lines.append(
        f"monitor decision    {summary['monitor_decision']} "
        f"(production: {summary.get('production_model_id')})"
    )
    lines.append("-" * 72)
    lines.append(f"ClearML server      {summary['clearml']['api']} (data {summary['clearml']['data_dir']})")
    lines.append(f"pipeline task       {summary['pipeline_id']}; federate task {summary['federate_task_id']}")
    lines.append(f"took                {summary['seconds']} s")
    return "\n".join(lines)


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
