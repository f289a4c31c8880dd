"""The caps hold whatever happens: restarts while instances boot, two resources on one queue,
fleet-wide instance and cost caps, a second scaler, spot shortages, tasks coming and going.

Real parts: the embedded ClearML server and SDK, ClearML's AutoScaler (with FleetFL's fixes), boto3
against moto's EC2 server on 127.0.0.1. Polls are driven directly (no sleeps). Spot capacity
errors, which moto never produces, are returned by a botocore ``before-call`` handler in place of
moto's answer, exactly as EC2 words them.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from autoscaler.config import AutoscalerConfig, config_from_dict
from autoscaler.fleet import RESOURCE_TAG
from autoscaler.lock import LOCK_PREFIX, ScalerLockError
from autoscaler.scaler import AutoscalerStopped, build_autoscaler
from autoscaler.service import run_autoscaler

pytestmark = pytest.mark.timeout(300)

PROJECT = "fleetfl-tests/autoscaler-caps"


@pytest.fixture
def new_queue(clearml_server: Any) -> Any:
    """``new_queue()``: a fresh queue on the embedded server; returns its name."""
    from clearml.backend_api.session.client import APIClient

    def create() -> str:
        name = f"caps-{uuid.uuid4().hex[:8]}"
        APIClient().queues.create(name=name)
        return name

    return create


def enqueue(queue: str, count: int) -> list[str]:
    """``count`` draft tasks put on ``queue`` through the API (fast; nobody runs them here)."""
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    ids = []
    for index in range(count):
        task = client.tasks.create(name=f"waiting-{index}", type="training", project=None)
        client.tasks.enqueue(task=task.id, queue_name=queue)
        ids.append(task.id)
    return ids


def resource(ec2: Any, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "instance_type": "c6i.large",
        "ami": ec2.ami,
        "subnet": ec2.subnet,
        "security_groups": [ec2.security_group],
        "max_instances": 2,
        **overrides,
    }


def fleet_config(ec2: Any, queues: dict[str, list[dict]], **top: Any) -> AutoscalerConfig:
    return config_from_dict(
        {
            "region": ec2.region,
            "polling_interval_s": 1,
            "idle_timeout_s": 600,
            "spin_up_timeout_s": 600,
            "workers_prefix": f"t{uuid.uuid4().hex[:8]}",
            "boot": {"requirements": ["clearml==2.1.12"]},
            "queues": {queue: {"resources": resources} for queue, resources in queues.items()},
            **top,
        }
    )


def live_by_resource(ec2: Any) -> Counter:
    return Counter(
        {t["Key"]: t["Value"] for t in instance["Tags"]}[RESOURCE_TAG] for instance in ec2.live_instances()
    )


def one_poll(scaler: Any) -> None:
    """Run exactly one poll of ClearML's supervisor loop on ``scaler`` (its lock held)."""
    scaler.cycles = scaler.cycles_done + 1
    scaler.supervisor()


@contextmanager
def run_instances_fails(code: str, spot_only: bool) -> Iterator[list[str]]:
    """RunInstances (spot ones only, with ``spot_only``) answered with EC2's error ``code`` instead of
    reaching moto (which never runs short of capacity); yields the list of codes answered."""
    import boto3

    answered: list[str] = []

    def answer(params: dict, **_: Any) -> Any:
        if spot_only and params.get("body", {}).get("InstanceMarketOptions.MarketType") != "spot":
            return None
        answered.append(code)
        return SimpleNamespace(status_code=500), {"Error": {"Code": code, "Message": f"EC2 says {code}"}}

    events = boto3._get_default_session().events
    events.register("before-call.ec2.RunInstances", answer)
    try:
        yield answered
    finally:
        events.unregister("before-call.ec2.RunInstances", answer)


# ------------------------------------------------------------------ 1. never above the cap
def test_restart_while_instances_boot_launches_no_second_set(
    clearml_server: Any, aws_ec2: Any, new_queue: Any
) -> None:
    queue = new_queue()
    enqueue(queue, 3)
    config = fleet_config(aws_ec2, {queue: [resource(aws_ec2, "cpu")]})
    run_autoscaler(config, cycles=1)  # launches 2, then "crashes": its memory is gone
    first = {i["InstanceId"] for i in aws_ec2.live_instances()}
    assert len(first) == 2
    run_autoscaler(config, cycles=2)  # restart while both still boot (never registered)
    assert {i["InstanceId"] for i in aws_ec2.live_instances()} == first


def test_two_resources_on_one_queue_launch_only_what_waits(
    clearml_server: Any, aws_ec2: Any, new_queue: Any
) -> None:
    queue = new_queue()
    enqueue(queue, 3)
    config = fleet_config(
        aws_ec2, {queue: [resource(aws_ec2, "first"), resource(aws_ec2, "second", instance_type="m6i.large")]}
    )
    run_autoscaler(config, cycles=2)  # ClearML 2.1.12 alone starts 4 in the first poll
    assert live_by_resource(aws_ec2) == {"first": 2, "second": 1}


def test_fleet_wide_instance_cap_refuses_and_says_so(
    clearml_server: Any, aws_ec2: Any, new_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    train, evaluate = new_queue(), new_queue()
    enqueue(train, 2)
    enqueue(evaluate, 2)
    config = fleet_config(
        aws_ec2,
        {
            train: [resource(aws_ec2, "a", max_instances=3)],
            evaluate: [resource(aws_ec2, "b", max_instances=3)],
        },
        limits={"max_instances_total": 3},
    )
    with caplog.at_level(logging.WARNING, logger="autoscaler.clearml"):
        run_autoscaler(config, cycles=2)
    assert sum(live_by_resource(aws_ec2).values()) == 3
    assert "the fleet has 3 of limits.max_instances_total 3" in caplog.text


def test_hourly_cost_cap_refuses_and_says_so(
    clearml_server: Any, aws_ec2: Any, new_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = new_queue()
    enqueue(queue, 3)
    config = fleet_config(
        aws_ec2,
        {queue: [resource(aws_ec2, "cpu", max_instances=5)]},
        limits={"max_hourly_cost": 0.25, "hourly_prices": {"c6i.large": 0.1}},
    )
    with caplog.at_level(logging.WARNING, logger="autoscaler.clearml"):
        run_autoscaler(config, cycles=2)
    assert live_by_resource(aws_ec2) == {"cpu": 2}
    assert "from 0.200 to 0.300 USD/h, above limits.max_hourly_cost 0.25" in caplog.text


def test_second_scaler_process_refuses_to_run(
    clearml_server: Any, aws_ec2: Any, new_queue: Any, tmp_path: Path
) -> None:
    queue = new_queue()
    enqueue(queue, 1)
    config = fleet_config(aws_ec2, {queue: [resource(aws_ec2, "cpu", max_instances=1)]})
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    first = build_autoscaler(config)
    thread = threading.Thread(target=first.start, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while first.cycles_done < 1:
            assert time.monotonic() < deadline, "the first scaler did not poll"
            time.sleep(0.05)
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "autoscaler",
                "run",
                "--config",
                str(path),
                "--cycles",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.stop()
        thread.join(timeout=30)
    assert second.returncode == 1, second.stderr[-2000:]
    assert f"another autoscaler with workers_prefix '{config.workers_prefix}' is running" in second.stderr
    assert len(aws_ec2.live_instances()) == 1
    # the first one released its lock on stopping: a new scaler runs
    run_autoscaler(config, cycles=1, check=False)


def test_stale_lock_of_a_dead_scaler_is_taken_over(clearml_server: Any, aws_ec2: Any, new_queue: Any) -> None:
    queue = new_queue()
    enqueue(queue, 1)
    config = fleet_config(aws_ec2, {queue: [resource(aws_ec2, "cpu")]}, limits={"lock_stale_after_s": 60})
    name = f"{LOCK_PREFIX}{config.workers_prefix}"
    tags = [
        {"Key": "holder", "Value": "dead-host:1:x"},
        {"Key": "heartbeat", "Value": f"{time.time() - 30:.0f}"},
    ]
    aws_ec2.client.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
    )
    with pytest.raises(ScalerLockError, match=r"dead-host:1:x, renewed \d+ s ago"):
        run_autoscaler(config, cycles=1, check=False)
    assert aws_ec2.live_instances() == []
    template_id = aws_ec2.client.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0][
        "LaunchTemplateId"
    ]
    aws_ec2.client.create_tags(
        Resources=[template_id], Tags=[{"Key": "heartbeat", "Value": f"{time.time() - 90:.0f}"}]
    )
    run_autoscaler(config, cycles=1, check=False)  # not renewed for 90 s > 60 s: taken over
    assert len(aws_ec2.live_instances()) == 1
    assert (
        aws_ec2.client.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]
        )["LaunchTemplates"]
        == []
    )  # released at the end


def test_random_arrivals_and_departures_never_pass_a_cap(
    clearml_server: Any, aws_ec2: Any, new_queue: Any
) -> None:
    from clearml.backend_api.session.client import APIClient

    rng = random.Random(13)
    train, evaluate = new_queue(), new_queue()
    limits = {
        "max_instances_total": 5,
        "max_hourly_cost": 1.0,
        "hourly_prices": {"g4dn.xlarge": 0.25, "c6i.large": 0.1},
    }
    config = fleet_config(
        aws_ec2,
        {
            train: [
                resource(aws_ec2, "gpu-spot", instance_type="g4dn.xlarge", spot=True, max_instances=3),
                resource(aws_ec2, "gpu", instance_type="g4dn.xlarge", max_instances=2),
            ],
            evaluate: [resource(aws_ec2, "cpu", max_instances=3)],
        },
        limits=limits,
    )
    maximum = {r.name: r.max_instances for r in config.resources}
    price = {r.name: limits["hourly_prices"][r.instance_type] for r in config.resources}
    waiting: list[str] = []
    scaler = build_autoscaler(config)
    scaler.lock.acquire()
    scaler._lock_renewed = True
    client = APIClient()
    peak = Counter()
    try:
        for _ in range(14):
            for queue in (train, evaluate):  # tasks arrive
                waiting += enqueue(queue, rng.choice([0, 0, 1, 2, 3]))
            for task_id in rng.sample(waiting, k=min(len(waiting), rng.choice([0, 1, 2]))):
                client.tasks.dequeue(task=task_id)  # tasks leave (aborted, or taken by a worker)
                waiting.remove(task_id)
            live = aws_ec2.live_instances()
            gone = rng.sample(live, k=min(len(live), rng.choice([0, 0, 1])))  # idle or interrupted
            if gone:
                aws_ec2.client.terminate_instances(InstanceIds=[i["InstanceId"] for i in gone])
            if rng.random() < 0.2:  # now and then the scaler restarts (its memory is lost)
                scaler.lock.release()
                scaler = build_autoscaler(config)
                scaler.lock.acquire()
                scaler._lock_renewed = True
            one_poll(scaler)
            counts = live_by_resource(aws_ec2)
            assert all(counts[name] <= maximum[name] for name in counts), counts
            assert sum(counts.values()) <= limits["max_instances_total"], counts
            assert sum(price[name] * n for name, n in counts.items()) <= limits["max_hourly_cost"] + 1e-9, (
                counts
            )
            peak = peak | counts
    finally:
        scaler.lock.release()
    assert sum(peak.values()) >= 5  # the caps were reached, not just never approached


# ------------------------------------------------------------------ 2. spot falls back at once
@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "SpotMaxPriceTooLow"])
def test_spot_shortage_falls_back_to_on_demand_at_once_and_blacks_spot_out(
    clearml_server: Any, aws_ec2: Any, new_queue: Any, code: str
) -> None:
    queue = new_queue()
    enqueue(queue, 2)
    config = fleet_config(
        aws_ec2,
        {
            queue: [
                resource(aws_ec2, "spot", spot=True, max_instances=4),
                resource(aws_ec2, "on-demand", max_instances=2),
            ]
        },
        limits={"spot_blackout_s": 600},
    )
    with run_instances_fails(code, spot_only=True) as failures:
        scaler = run_autoscaler(config, cycles=1)  # one poll: both tasks get on-demand instances
    assert live_by_resource(aws_ec2) == {"on-demand": 2}
    assert failures == [code]  # the second launch skipped the blacked-out spot resource
    assert scaler._blackout["spot"] > time.time() + 590


def test_consecutive_launch_failures_stop_run_with_an_error(
    clearml_server: Any, aws_ec2: Any, new_queue: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    queue = new_queue()
    enqueue(queue, 2)
    config = fleet_config(
        aws_ec2,
        {queue: [resource(aws_ec2, "cpu", max_instances=2)]},
        limits={"max_consecutive_launch_failures": 3},
    )
    with run_instances_fails("Unsupported", spot_only=False) as failures:
        with pytest.raises(AutoscalerStopped, match=r"3 launches failed in a row .*Unsupported"):
            run_autoscaler(config, cycles=5)
        assert failures == ["Unsupported"] * 3  # 2 in the first poll, 1 in the second, then stopped
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        assert main(["autoscaler", "run", "--config", str(path), "--cycles", "5"]) == 1
    assert capsys.readouterr().err.count("3 launches failed in a row") == 1
