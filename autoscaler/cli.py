"""``fleetfl autoscaler ...``: EC2 autoscaling of clearml-agents (ClearML's AutoScaler + AWSDriver).

``run`` polls in the foreground; ``enqueue`` hands the same config to a ClearML service task on the
``services`` queue. ``check`` validates a config (and, with ``--aws``, that EC2 has what it names)
without starting anything. Heavy imports (clearml, boto3) happen inside the commands.
"""

from __future__ import annotations

import argparse
import json


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetfl autoscaler run|enqueue|check``."""
    parser = subparsers.add_parser(
        "autoscaler",
        help="start/stop EC2 instances running clearml-agent as FleetFL's queues fill and drain",
        description=__doc__,
    )
    commands = parser.add_subparsers(dest="autoscaler_command", metavar="ACTION", required=True)

    run = commands.add_parser("run", help="run the autoscaler in the foreground")
    run.add_argument("--config", required=True, help="autoscaler YAML (see autoscaler/example.yaml)")
    run.add_argument(
        "--cycles", type=_positive_int, default=None, help="stop after N polls (default: forever)"
    )
    run.set_defaults(func=_run)

    enqueue = commands.add_parser("enqueue", help="run the autoscaler as a ClearML service task")
    enqueue.add_argument("--config", required=True, help="autoscaler YAML (see autoscaler/example.yaml)")
    enqueue.add_argument(
        "--queue", default="services", help="queue of a services-mode agent (default: services)"
    )
    enqueue.add_argument(
        "--cycles", type=_positive_int, default=None, help="stop after N polls (default: forever)"
    )
    source = enqueue.add_mutually_exclusive_group()
    source.add_argument(
        "--repo",
        default=None,
        help="git URL or checkout the task runs from (default: this checkout's origin)",
    )
    source.add_argument(
        "--no-repo",
        dest="repo",
        action="store_const",
        const="",
        help="record no repository: the agent imports FleetFL from CLEARML_AGENT_EXTRA_PYTHON_PATH",
    )
    enqueue.set_defaults(func=_enqueue)

    check = commands.add_parser("check", help="validate a config; print the ClearML mapping and boot script")
    check.add_argument("--config", required=True, help="autoscaler YAML")
    check.add_argument(
        "--aws",
        action="store_true",
        help="also check AMIs, subnets, groups, zones, types, key pairs, instance profile, vCPU quotas",
    )
    check.set_defaults(func=_check)


def _run(args: argparse.Namespace) -> int:
    import sys

    from autoscaler.config import load_config
    from autoscaler.lock import ScalerLockError
    from autoscaler.scaler import AutoscalerStopped
    from autoscaler.service import run_autoscaler

    try:
        run_autoscaler(load_config(args.config), cycles=args.cycles)
    except (AutoscalerStopped, ScalerLockError) as exc:
        print(f"fleetfl autoscaler: {exc}", file=sys.stderr)
        return 1
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from autoscaler.config import load_config
    from autoscaler.service import enqueue_service

    task_id = enqueue_service(load_config(args.config), queue=args.queue, cycles=args.cycles, repo=args.repo)
    print(task_id)
    return 0


def _check(args: argparse.Namespace) -> int:
    from autoscaler.config import load_config
    from autoscaler.scaler import resource_configuration, worker_boot_script

    config = load_config(args.config)
    if args.aws:
        import sys

        from autoscaler.service import check_aws_account

        for warning in check_aws_account(config):
            print(f"warning: {warning}", file=sys.stderr)
    summary = {
        "queues": {q.name: [[r.name, r.max_instances] for r in q.resources] for q in config.queues},
        "resource_configurations": {r.name: resource_configuration(config, r) for r in config.resources},
        "boot_script": worker_boot_script(config).splitlines(),
    }
    print(json.dumps(summary, indent=2))
    return 0
