"""Autoscaler reaction time: seconds from a task enqueued to its EC2 instance requested.

Runs the real pieces locally: the embedded ClearML server (``fleetfl server start``), moto's EC2
(and SSM, IAM, Service Quotas) server on 127.0.0.1 (through ``AWS_ENDPOINT_URL``, dummy
credentials) and FleetFL's autoscaler (ClearML's AutoScaler) polling at ``--polling-interval``.
Each trial waits a random fraction of the interval (tasks arrive at any moment of the poll
cycle), enqueues one task, and measures until the new instance is visible in EC2. Expected: about
half the interval on average, at most the interval plus the API calls. Prints JSON. Target: at most 60 s.

    .venv/bin/python benchmarks/autoscaler_reaction.py --polling-interval 30 --trials 6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TARGET_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fleetfl(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO_ROOT, check=True, capture_output=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polling-interval", type=float, default=30.0, help="seconds between polls (30)")
    parser.add_argument("--trials", type=int, default=6, help="tasks enqueued one after the other (6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(args.seed)

    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=False)
    with tempfile.TemporaryDirectory(prefix="fleetfl-autoscaler-bench-") as tmp:
        work = Path(tmp)
        data = work / "clearml"
        ports = ("--api-port", "0", "--files-port", "0", "--web-port", "0")
        _fleetfl("server", "start", "--data", str(data), *ports, "--detach")
        try:
            result = _measure(args, rng, work, data)
        finally:
            _fleetfl("server", "stop", "--data", str(data))
    print(json.dumps(result, indent=2))
    return 0 if result["meets_target"] else 1


def _measure(args: argparse.Namespace, rng: random.Random, work: Path, data: Path) -> dict:
    from clearml_local.cli import client_settings, write_conf

    settings = client_settings(data)
    write_conf(work / "clearml.conf", settings)
    os.environ.update(settings, CLEARML_CONFIG_FILE=str(work / "clearml.conf"))

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    os.environ.update(
        AWS_ENDPOINT_URL_EC2=f"http://127.0.0.1:{port}",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",  # SSM, IAM, Service Quotas: moto too
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        return _trials(args, rng, work)
    finally:
        moto.stop()


def _trials(args: argparse.Namespace, rng: random.Random, work: Path) -> dict:
    import boto3
    from clearml import Task
    from clearml.backend_api.session.client import APIClient

    from autoscaler.config import config_from_dict
    from autoscaler.scaler import build_autoscaler
    from autoscaler.service import preflight

    region = "eu-west-1"
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24", AvailabilityZone=f"{region}a")
    ami = ec2.register_image(Name="fleetfl-bench", RootDeviceName="/dev/sda1")["ImageId"]
    queue = "fleetfl-bench"
    APIClient().queues.create(name=queue)
    config = config_from_dict(
        {
            "region": region,
            "polling_interval_s": args.polling_interval,
            "idle_timeout_s": 3600,
            "spin_up_timeout_s": 3600,  # the emulated instances never register
            "boot": {"requirements": ["clearml==2.1.12"]},
            "queues": {
                queue: {
                    "resources": [
                        {
                            "name": "gpu",
                            "instance_type": "g4dn.xlarge",
                            "ami": ami,
                            "subnet": subnet["Subnet"]["SubnetId"],
                            "max_instances": args.trials,
                        }
                    ]
                }
            },
        }
    )
    preflight(config)
    scaler = build_autoscaler(config)
    thread = threading.Thread(target=scaler.start, daemon=True)
    thread.start()
    script = work / "task.py"
    script.write_text("print('benchmark task')\n")

    def instance_count() -> int:
        return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])

    reactions = []
    try:
        time.sleep(1.0)  # first poll done (empty queue)
        for trial in range(args.trials):
            time.sleep(rng.uniform(0, args.polling_interval))
            task = Task.create(project_name="fleetfl-bench", task_name=f"trial-{trial}", script=str(script))
            before = instance_count()
            Task.enqueue(task, queue_name=queue)
            enqueued = time.monotonic()
            while instance_count() == before:
                if time.monotonic() - enqueued > 3 * args.polling_interval + 60:
                    raise RuntimeError(f"trial {trial}: no instance requested")
                time.sleep(0.1)
            reactions.append(round(time.monotonic() - enqueued, 2))
    finally:
        scaler.stop()
        thread.join(timeout=args.polling_interval + 30)  # before EC2 goes away
    return {
        "benchmark": "autoscaler_reaction",
        "polling_interval_s": args.polling_interval,
        "trials": args.trials,
        "reaction_s": reactions,
        "mean_s": round(statistics.mean(reactions), 2),
        "median_s": round(statistics.median(reactions), 2),
        "max_s": max(reactions),
        "target_s": TARGET_S,
        "meets_target": max(reactions) <= TARGET_S,
        "setup": "embedded ClearML server + moto EC2 on 127.0.0.1, ClearML AutoScaler (FleetFL subclass)",
    }


if __name__ == "__main__":
    sys.exit(main())
