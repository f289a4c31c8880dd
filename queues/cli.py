"""``fleetfl queues create`` and ``fleetfl agent start|stop|list``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``queues`` and ``agent`` commands."""
    queues = subparsers.add_parser("queues", help="ClearML execution queues (services, fl-server, ...)")
    queue_cmds = queues.add_subparsers(dest="queues_command", metavar="ACTION", required=True)
    create = queue_cmds.add_parser("create", help="create the defined queues that are missing (idempotent)")
    create.add_argument("--file", type=Path, default=None, help="queue definitions YAML (default: built in)")
    create.set_defaults(func=cmd_queues_create)

    agent = subparsers.add_parser(
        "agent", help="local clearml-agent daemons reusing the project's environment"
    )
    agent_cmds = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    start = agent_cmds.add_parser("start", help="start clearml-agent daemons serving a queue")
    start.add_argument("--queue", required=True, help="queue to serve (e.g. services, fl-server, fl-clients)")
    start.add_argument("--count", type=int, default=1, help="number of daemons (one task each at a time)")
    start.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the workers to register")
    start.set_defaults(func=cmd_agent_start)
    stop = agent_cmds.add_parser("stop", help="stop the daemons started by `fleetfl agent start`")
    stop.add_argument("--queue", default=None, help="only the daemons of this queue (default: all)")
    stop.set_defaults(func=cmd_agent_stop)
    listing = agent_cmds.add_parser("list", help="daemons started from this machine")
    listing.set_defaults(func=cmd_agent_list)
    register_monitor(subparsers)


def cmd_queues_create(args: argparse.Namespace) -> int:
    """Create the queues of the definitions file; print one line per queue."""
    from queues.definitions import create_queues, load_queue_specs

    result = create_queues(load_queue_specs(args.file))
    for name, info in result.items():
        print(f"{name:<12} {info['id']}  {'created' if info['created'] else 'exists'}")
    return 0


def cmd_agent_start(args: argparse.Namespace) -> int:
    """Start daemons and wait until the server lists them."""
    from queues.agents import start_agents, wait_for_workers

    records = start_agents(args.queue, args.count)
    ids = [record.worker_id for record in records]
    registered = wait_for_workers(ids, timeout_s=args.wait) if args.wait > 0 else False
    for record in records:
        print(f"{record.worker_id}  pid {record.pid}  queue {record.queue}  log {record.log_path}")
    if args.wait > 0 and not registered:
        dead = [r for r in records if not r.alive()]
        detail = f"; last log lines of {dead[0].worker_id}:\n{dead[0].log()[-2000:]}" if dead else ""
        raise RuntimeError(f"agents did not register with the server within {args.wait:.0f} s{detail}")
    return 0


def cmd_agent_stop(args: argparse.Namespace) -> int:
    """Stop daemons (all or one queue's)."""
    from queues.agents import stop_agents

    stopped = stop_agents(queue=args.queue)
    for record in stopped:
        print(f"stopped {record.worker_id} (queue {record.queue})")
    if not stopped:
        print("no agents to stop")
    return 0


def cmd_agent_list(args: argparse.Namespace) -> int:
    """Print the recorded daemons as JSON lines."""
    from queues.agents import list_agents

    for record in list_agents():
        print(
            json.dumps(
                {
                    "worker_id": record.worker_id,
                    "queue": record.queue,
                    "pid": record.pid,
                    "alive": record.alive(),
                    "log": str(record.log_path),
                }
            )
        )
    return 0


def register_monitor(subparsers: argparse._SubParsersAction) -> None:
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
