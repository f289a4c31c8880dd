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
