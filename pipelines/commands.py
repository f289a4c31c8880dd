"""``fleetfl pipeline run|enqueue|params`` and ``fleetfl demo``.

Heavy imports (the ClearML SDK, torch, ultralytics) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pipeline`` and ``demo`` commands."""
    pipeline = subparsers.add_parser("pipeline", help='the ClearML pipeline "fleetfl-federated"')
    actions = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    run = actions.add_parser("run", help="run the pipeline with its controller in this process")
    _add_parameter_options(run)
    run.add_argument(
        "--steps",
        choices=("local", "agents"),
        default="local",
        help="step tasks as local processes (default) or on --step-queue; their federated and HPO "
        "tasks always go to the fl-server, fl-clients and hpo queues",
    )
    run.add_argument("--step-queue", default="services", help="queue of the step tasks with --steps agents")
    run.add_argument("--out", type=Path, default=None, help="also write the steps' outputs to this JSON file")
    run.set_defaults(func=cmd_pipeline_run)

    enqueue = actions.add_parser("enqueue", help="enqueue the pipeline controller (runs on an agent)")
    _add_parameter_options(enqueue)
    enqueue.add_argument("--queue", default="services", help="queue of the controller (default services)")
    enqueue.set_defaults(func=cmd_pipeline_enqueue)

    params = actions.add_parser("params", help="list the pipeline parameters and their defaults")
    params.set_defaults(func=cmd_pipeline_params)

    demo = subparsers.add_parser(
        "demo",
        help="the whole system on this machine: embedded ClearML server, queues, agents, pipeline, monitor",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default runs/demo)")
    demo.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo pipeline parameter"
    )
    demo.add_argument("--keep", action="store_true", help="leave the server and agents running at the end")
    demo.set_defaults(func=cmd_demo)


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=None, help="YAML file of pipeline parameters")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a pipeline parameter (repeatable), e.g. --set rounds=5 --set 'config={\"imgsz\": 128}'",
    )


def parameter_values(params_file: Path | None, assignments: list[str]) -> dict[str, Any]:
    """Pipeline parameters from a YAML file and ``KEY=VALUE`` overrides (checked later, as a whole).

    Raises:
        ValueError: an unreadable file or a malformed assignment (names the file or the assignment).
    """
    import yaml

    values: dict[str, Any] = {}
    if params_file is not None:
        if not params_file.is_file():
            raise FileNotFoundError(f"--params {params_file}: no such file")
        try:
            data = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"--params {params_file}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--params {params_file}: expected a mapping of parameter names to values")
        values.update(data)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    """Check the parameters, run the pipeline, print each step's task and the result."""
    from pipelines.fleetfl_pipeline import check_parameters, run_pipeline

    values = check_parameters(parameter_values(args.params, args.set))  # fails before anything runs
    outputs = run_pipeline(values, local_steps=args.steps == "local", step_queue=args.step_queue)
    text = json.dumps(outputs, indent=1, sort_keys=True, default=str)
    if args.out is not None:
        from federated.config import atomic_write_text

        atomic_write_text(args.out, text)
    print(text)
    return 0


def cmd_pipeline_enqueue(args: argparse.Namespace) -> int:
    """Check the parameters, enqueue the controller, print its id."""
    from pipelines.fleetfl_pipeline import enqueue_pipeline

    pipeline_id = enqueue_pipeline(parameter_values(args.params, args.set), queue=args.queue)
    print(f"pipeline controller {pipeline_id} enqueued on {args.queue}")
    return 0


def cmd_pipeline_params(args: argparse.Namespace) -> int:
    """Print ``name  default  help`` for every pipeline parameter."""
    from pipelines.fleetfl_pipeline import PARAMETERS

    for name, spec in PARAMETERS.items():
        default = json.dumps(spec.default) if isinstance(spec.default, dict) else spec.default
        print(f"{name:<20} {default!s:<16} {spec.help}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (see :mod:`pipelines.demo`)."""
    from pipelines.demo import run_demo

    run_demo(args.out, overrides=parameter_values(None, args.set), keep=args.keep)
    return 0
