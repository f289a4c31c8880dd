"""CloudWatch metrics and alarms of the fleet (namespace ``FleetFL``): off unless configured.

Per queue (dimension ``Queue``), published by the scaler every poll: ``QueuedTasks``,
``LiveInstances``, ``BootingInstances``, ``Launches`` and ``LaunchFailures`` (since the previous
poll), ``HourlyCost`` (USD per hour of the queue's live instances, from ``limits.hourly_prices``).

Per federated run (dimension ``Run``: the server task id, and once more without it, fleet-wide, for
alarms), published by the federated server task for every round when ``FLEETFL_CLOUDWATCH_REGION``
is set in its environment: ``RoundSeconds``, ``ParticipatingClients``, ``DroppedClients`` (failed
or rejected replies), ``BytesPerRound`` (sent and received), ``GlobalMAP50-95`` and
``MAP50-95DropPercent`` (how far the round's mAP50-95 is below the run's best so far).

Alarms come from the autoscaler config (``cloudwatch.alarms``) and notify an SNS topic
(``cloudwatch.sns_topic``, created if missing). Publishing failures are logged and never raised:
metrics must not stop scaling or training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

NAMESPACE = "FleetFL"

#: Environment variable that turns on the per-run metrics of the federated server task.
RUN_METRICS_REGION_ENV = "FLEETFL_CLOUDWATCH_REGION"

#: CloudWatch's names for the config's comparison operators.
COMPARISONS = {
    ">": "GreaterThanThreshold",
    ">=": "GreaterThanOrEqualToThreshold",
    "<": "LessThanThreshold",
    "<=": "LessThanOrEqualToThreshold",
}

QUEUE_METRICS = (
    "QueuedTasks",
    "LiveInstances",
    "BootingInstances",
    "Launches",
    "LaunchFailures",
    "HourlyCost",
)
RUN_METRICS = (
    "RoundSeconds",
    "ParticipatingClients",
    "DroppedClients",
    "BytesPerRound",
    "GlobalMAP50-95",
    "MAP50-95DropPercent",
)
_UNITS = {
    "RoundSeconds": "Seconds",
    "BytesPerRound": "Bytes",
    "MAP50-95DropPercent": "Percent",
    "HourlyCost": "None",
    "GlobalMAP50-95": "None",
}


def _datum(name: str, value: float, dimensions: Mapping[str, str]) -> dict[str, Any]:
    return {
        "MetricName": name,
        "Value": float(value),
        "Unit": _UNITS.get(name, "Count"),
        "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
    }


def publish(cloudwatch: Any, data: list[dict[str, Any]]) -> bool:
    """``PutMetricData`` in the ``FleetFL`` namespace; False (logged) when it failed."""
    try:
        for start in range(0, len(data), 500):
            cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + 500])
    except Exception as exc:  # never stop scaling or training for a metric
        log.warning("could not publish %d CloudWatch metric(s): %s", len(data), exc)
        return False
    return True


def queue_data(queue: str, values: Mapping[str, float]) -> list[dict[str, Any]]:
    """The per-queue metrics (``values`` keyed by :data:`QUEUE_METRICS`)."""
    return [_datum(name, values[name], {"Queue": queue}) for name in QUEUE_METRICS if name in values]


def round_values(row: Mapping[str, Any], best_map50_95: float | None) -> dict[str, float]:
    """The per-run metrics of one ``metrics.jsonl`` row of the federated server."""
    clients = row.get("clients") or []
    values = {
        "RoundSeconds": float(row.get("round_seconds") or 0.0),
        "ParticipatingClients": float(sum(1 for c in clients if c.get("status", "ok") == "ok")),
        "DroppedClients": float(sum(1 for c in clients if c.get("status", "ok") != "ok")),
        "BytesPerRound": float((row.get("bytes_sent") or 0) + (row.get("bytes_received") or 0)),
    }
    current = row.get("map50_95")
    if isinstance(current, int | float):
        values["GlobalMAP50-95"] = float(current)
        best = max(best_map50_95 or 0.0, float(current))
        values["MAP50-95DropPercent"] = 100.0 * (best - current) / best if best > 0 else 0.0
    return values


class RunMetrics:
    """Per-round metrics of one federated run; a no-op unless ``FLEETFL_CLOUDWATCH_REGION`` is set."""

    def __init__(self, run_id: str, cloudwatch: Any = None) -> None:
        self.run_id = run_id
        self.best: float | None = None
        self.cloudwatch = cloudwatch
        region = os.environ.get(RUN_METRICS_REGION_ENV)
        if self.cloudwatch is None and region:
            try:
                import boto3

                self.cloudwatch = boto3.client("cloudwatch", region_name=region)
            except Exception as exc:
                log.warning("CloudWatch run metrics off: %s", exc)

    def publish_round(self, row: Mapping[str, Any]) -> bool:
        """Publish one round (with and without the ``Run`` dimension); False when off or failed."""
        if self.cloudwatch is None:
            return False
        values = round_values(row, self.best)
        if "GlobalMAP50-95" in values:
            self.best = max(self.best or 0.0, values["GlobalMAP50-95"])
        data = [_datum(name, value, {"Run": self.run_id}) for name, value in values.items()]
        data += [_datum(name, value, {}) for name, value in values.items()]
        return publish(self.cloudwatch, data)


def ensure_alarms(cloudwatch: Any, sns: Any, alarms: list[Any], topic_name: str, prefix: str) -> str:
    """Create the SNS topic (idempotent) and the alarms (``PutMetricAlarm`` replaces same-named
    ones); returns the topic's ARN. ``alarms``: :class:`~autoscaler.config.AlarmConfig` items."""
    topic_arn = sns.create_topic(Name=topic_name)["TopicArn"]
    for alarm in alarms:
        dimensions = [{"Name": "Queue", "Value": alarm.queue}] if alarm.queue else []
        cloudwatch.put_metric_alarm(
            AlarmName=f"{prefix}-{alarm.name}",
            AlarmDescription=f"FleetFL {prefix}: {alarm.metric} {alarm.comparison} {alarm.threshold:g}",
            Namespace=NAMESPACE,
            MetricName=alarm.metric,
            Dimensions=dimensions,
            Statistic=alarm.statistic,
            Period=alarm.period_s,
            EvaluationPeriods=alarm.evaluation_periods,
            Threshold=alarm.threshold,
            ComparisonOperator=COMPARISONS[alarm.comparison],
            TreatMissingData="notBreaching",
            AlarmActions=[topic_arn],
        )
    return topic_arn
