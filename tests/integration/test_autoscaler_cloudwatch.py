"""CloudWatch: the fleet's metrics arrive with their dimensions, the alarms exist with their
thresholds and SNS topic, the published values that should trip an alarm cross it (moto does not
evaluate alarms), and a failed publish never raises.

Real parts: the embedded ClearML server, ClearML's AutoScaler, boto3 against moto's EC2, CloudWatch
and SNS on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from autoscaler.cloudwatch import NAMESPACE, QUEUE_METRICS, RUN_METRICS, RunMetrics
from autoscaler.config import config_from_dict
from autoscaler.service import run_autoscaler

pytestmark = pytest.mark.timeout(180)


def _maximum(cloudwatch: Any, metric: str, dimensions: dict[str, str]) -> float:
    now = dt.datetime.now(dt.UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName=metric,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=now - dt.timedelta(minutes=10),
        EndTime=now + dt.timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert points, f"no {metric} {dimensions} in CloudWatch"
    return max(point["Maximum"] for point in points)


ALARMS = [
    {"name": "launches-failing", "metric": "LaunchFailures", "comparison": ">", "threshold": 0},
    {"name": "cost-above-cap", "metric": "HourlyCost", "comparison": ">", "threshold": 0.15},
    {"name": "no-clients", "metric": "ParticipatingClients", "comparison": "<", "threshold": 1},
    {"name": "map-drop", "metric": "MAP50-95DropPercent", "comparison": ">", "threshold": 10},
]


def test_queue_metrics_and_alarms_arrive(clearml_server: Any, aws_ec2: Any) -> None:
    import boto3
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    queue = f"cw-{uuid.uuid4().hex[:8]}"
    client.queues.create(name=queue)
    for _ in range(3):
        client.tasks.enqueue(task=client.tasks.create(name="waiting", type="training").id, queue_name=queue)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    alarms = [{**alarm, "queue": queue} if alarm["metric"] in QUEUE_METRICS else alarm for alarm in ALARMS]
    config = config_from_dict(
        {
            "region": aws_ec2.region,
            "polling_interval_s": 1,
            "workers_prefix": prefix,
            "boot": {"requirements": ["clearml==2.1.12"]},
            "limits": {"hourly_prices": {"c6i.large": 0.1}},
            "cloudwatch": {"sns_topic": "fleetfl-alarms", "alarms": alarms},
            "queues": {
                queue: {
                    "resources": [
                        {"name": "cpu", "instance_type": "c6i.large", "ami": aws_ec2.ami,
                         "subnet": aws_ec2.subnet, "max_instances": 2},
                    ]
                }
            },
        }
    )  # fmt: skip
    run_autoscaler(config, cycles=2)  # poll 1 publishes, launches 2; poll 2 publishes them
    cloudwatch = boto3.client("cloudwatch", region_name=aws_ec2.region)
    listed = cloudwatch.list_metrics(Namespace=NAMESPACE, Dimensions=[{"Name": "Queue", "Value": queue}])
    assert {m["MetricName"] for m in listed["Metrics"]} == set(QUEUE_METRICS)
    assert _maximum(cloudwatch, "QueuedTasks", {"Queue": queue}) == 3
    assert _maximum(cloudwatch, "LiveInstances", {"Queue": queue}) == 2
    assert _maximum(cloudwatch, "BootingInstances", {"Queue": queue}) == 2
    assert _maximum(cloudwatch, "Launches", {"Queue": queue}) == 2

    (topic,) = boto3.client("sns", region_name=aws_ec2.region).list_topics()["Topics"]
    assert topic["TopicArn"].endswith(":fleetfl-alarms")
    found = {
        a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix=f"{prefix}-")["MetricAlarms"]
    }
    assert set(found) == {f"{prefix}-{alarm['name']}" for alarm in ALARMS}
    cost = found[f"{prefix}-cost-above-cap"]
    assert (cost["Threshold"], cost["ComparisonOperator"], cost["AlarmActions"]) == (
        0.15,
        "GreaterThanThreshold",
        [topic["TopicArn"]],
    )
    assert cost["Dimensions"] == [{"Name": "Queue", "Value": queue}] and cost["Namespace"] == NAMESPACE
    # moto does not evaluate alarms: the published value crosses the threshold
    hourly_cost = _maximum(cloudwatch, "HourlyCost", {"Queue": queue})
    assert hourly_cost == pytest.approx(0.2) and hourly_cost > cost["Threshold"]


def test_run_metrics_per_round_cross_the_alarm_thresholds(aws_ec2: Any) -> None:
    import boto3

    cloudwatch = boto3.client("cloudwatch", region_name=aws_ec2.region)
    run = f"run-{uuid.uuid4().hex[:8]}"
    metrics = RunMetrics(run, cloudwatch=cloudwatch)
    ok, failed = {"status": "ok"}, {"status": "failed"}
    rounds = [
        {"round": 1, "map50_95": 0.50, "round_seconds": 12.5, "bytes_sent": 1000, "bytes_received": 600,
         "clients": [ok, ok, failed]},
        {"round": 2, "map50_95": 0.40, "round_seconds": 11.0, "bytes_sent": 1000, "bytes_received": 0,
         "clients": [failed, failed]},
    ]  # fmt: skip
    assert all(metrics.publish_round(row) for row in rounds)
    listed = cloudwatch.list_metrics(Namespace=NAMESPACE, Dimensions=[{"Name": "Run", "Value": run}])
    assert {m["MetricName"] for m in listed["Metrics"]} == set(RUN_METRICS)
    assert _maximum(cloudwatch, "BytesPerRound", {"Run": run}) == 1600
    assert _maximum(cloudwatch, "DroppedClients", {"Run": run}) == 2
    assert _maximum(cloudwatch, "GlobalMAP50-95", {"Run": run}) == 0.5
    # round 2: 20 % below the best (> 10 %), no participating client (< 1), also fleet-wide
    assert _maximum(cloudwatch, "MAP50-95DropPercent", {"Run": run}) == pytest.approx(20.0)
    assert _maximum(cloudwatch, "MAP50-95DropPercent", {}) == pytest.approx(20.0)
    now = dt.datetime.now(dt.UTC)
    minimum = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="ParticipatingClients",
        Dimensions=[{"Name": "Run", "Value": run}],
        StartTime=now - dt.timedelta(minutes=10),
        EndTime=now + dt.timedelta(minutes=1),
        Period=600,
        Statistics=["Minimum"],
    )["Datapoints"]
    assert min(p["Minimum"] for p in minimum) == 0 < 1


def test_publishing_failures_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from botocore.config import Config

    unreachable = boto3.client(
        "cloudwatch",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",  # nothing listens on the discard port
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    assert RunMetrics("run-x", cloudwatch=unreachable).publish_round({"round": 1, "map50_95": 0.3}) is False
    monkeypatch.delenv("FLEETFL_CLOUDWATCH_REGION", raising=False)
    assert RunMetrics("run-y").publish_round({"round": 1}) is False  # off unless configured
