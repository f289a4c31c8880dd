"""``fleetfl monitor start|enqueue|decide``: the model-registry monitor (``components/monitor.py``)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetfl monitor start|enqueue|decide``."""
    monitor = subparsers.add_parser("monitor", help="model-registry monitor: promote or roll back candidates")
    cmds = monitor.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project", default="FleetFL", help="ClearML project whose models are watched")
        p.add_argument("--threshold", type=float, default=0.10, help="relative mAP50-95 drop that rolls back")

    def loop(p: argparse.ArgumentParser) -> None:
        p.add_argument("--poll", type=float, default=10.0, help="seconds between registry polls")
        p.add_argument("--max-decisions", type=int, default=0, help="stop after N decisions (0: never)")
        p.add_argument("--timeout", type=float, default=0.0, help="stop after S seconds (0: never)")

    start = cmds.add_parser("start", help="run the monitor here, as a ClearML service task")
    common(start)
    loop(start)
    start.set_defaults(func=cmd_monitor_start)
    enqueue = cmds.add_parser(
        "enqueue", help="enqueue the monitor task for an agent (default queue: services)"
    )
    common(enqueue)
    loop(enqueue)
    enqueue.add_argument("--queue", default="services", help="queue (default: services)")
    enqueue.set_defaults(func=cmd_monitor_enqueue)
    decide = cmds.add_parser("decide", help="decide one candidate now (promote or roll back)")
    common(decide)
    decide.add_argument("--candidate", required=True, help="ClearML model id of the candidate")
    decide.set_defaults(func=cmd_monitor_decide)


def _monitor_params(args: argparse.Namespace) -> dict:
    return {
        "project": args.project,
        "threshold": args.threshold,
        "poll_s": args.poll,
        "max_decisions": args.max_decisions,
        "timeout_s": args.timeout,
    }


def cmd_monitor_start(args: argparse.Namespace) -> int:
    """Run the monitor loop in this process."""
    from components.monitor import run_monitor_task

    decisions = run_monitor_task(_monitor_params(args))
    for record in decisions:
        print(json.dumps(record, sort_keys=True))
    return 0


def cmd_monitor_enqueue(args: argparse.Namespace) -> int:
    """Create the monitor task and put it on a queue."""
    from clearml import Task

    from components.monitor import create_monitor_task
    from queues.definitions import find_queue_id

    if find_queue_id(args.queue) is None:
        raise ValueError(f"--queue {args.queue}: no such queue (run `fleetfl queues create`)")
    params = _monitor_params(args)
    task = create_monitor_task(**params)
    Task.enqueue(task, queue_name=args.queue)
    print(f"monitor task {task.id} enqueued on {args.queue}")
    return 0


def cmd_monitor_decide(args: argparse.Namespace) -> int:
    """Decide one candidate and print the decision as JSON."""
    from components.monitor import decide

    print(json.dumps(decide(args.candidate, project=args.project, threshold=args.threshold), sort_keys=True))
    return 0
