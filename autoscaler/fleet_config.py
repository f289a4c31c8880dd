"""The autoscaler config's fleet-wide sections: ``limits`` (caps, prices, spot blackout, failures,
lock) and ``cloudwatch`` (metrics and alarms). See docs/autoscaler.md for each key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from autoscaler.cloudwatch import COMPARISONS, QUEUE_METRICS, RUN_METRICS
from autoscaler.yaml_reader import YamlReader

#: Names of resources, queues' alarms, topics, the workers prefix: no ':' (ClearML worker ids are
#: ':'-separated).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Instance types: g4dn.xlarge, u-6tb1.metal, ...
INSTANCE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")


@dataclass(frozen=True)
class Limits:
    """Fleet-wide limits, on top of each resource's ``max_instances`` (see docs/autoscaler.md).

    ``max_instances_total`` caps live instances over all resources; ``max_hourly_cost`` caps the
    summed ``hourly_prices`` (USD per hour, per instance type) of live instances. A launch that would
    pass either is refused and logged. ``spot_blackout_s``: how long a spot resource that failed for
    capacity or price is skipped (its queue's next resource is used instead).
    ``max_consecutive_launch_failures``: ``run`` stops with an error after that many failed launches
    in a row. ``lock_stale_after_s``: a scaler lock not renewed for this long belongs to a dead
    scaler and is taken over.
    """

    max_instances_total: int | None = None
    max_hourly_cost: float | None = None
    hourly_prices: tuple[tuple[str, float], ...] = ()
    spot_blackout_s: float = 900.0
    max_consecutive_launch_failures: int = 5
    lock_stale_after_s: float = 300.0

    def price(self, instance_type: str) -> float | None:
        """USD per hour of ``instance_type`` (None when the config gives no price)."""
        return dict(self.hourly_prices).get(instance_type)


@dataclass(frozen=True)
class AlarmConfig:
    """A CloudWatch alarm on a FleetFL metric (see :mod:`autoscaler.cloudwatch`)."""

    name: str
    metric: str
    comparison: str
    threshold: float
    queue: str | None = None
    statistic: str = "Maximum"
    period_s: int = 60
    evaluation_periods: int = 1


@dataclass(frozen=True)
class CloudWatchConfig:
    """Fleet metrics in CloudWatch (namespace FleetFL) and alarms notifying an SNS topic."""

    sns_topic: str
    alarms: tuple[AlarmConfig, ...] = ()


def read_cloudwatch(reader: YamlReader, value: Any, queue_names: set[str]) -> CloudWatchConfig | None:
    """The ``cloudwatch`` section (None: metrics off)."""
    if value is None:
        return None
    path = ("cloudwatch",)
    section = reader.mapping(value, path, ("sns_topic", "alarms"))
    topic = reader.string(
        section, path, "sns_topic", NAME_PATTERN, "an SNS topic name: letters, digits, _ . -"
    )
    items = section.get("alarms") or []
    if not isinstance(items, list):
        raise reader.error((*path, "alarms"), "expected a list of alarms")
    known = (
        "name",
        "metric",
        "comparison",
        "threshold",
        "queue",
        "statistic",
        "period_s",
        "evaluation_periods",
    )
    alarms, names = [], set()
    for index, item in enumerate(items):
        where = (*path, "alarms", index)
        alarm = reader.mapping(item, where, known)
        name = reader.string(alarm, where, "name", NAME_PATTERN, "letters, digits, _ . -")
        if name in names:
            raise reader.error((*where, "name"), f"alarm {name!r} is defined twice")
        names.add(name)
        metric = reader.get(alarm, where, "metric")
        if metric not in QUEUE_METRICS + RUN_METRICS:
            raise reader.error(
                (*where, "metric"),
                f"unknown metric {metric!r} (known: {', '.join(QUEUE_METRICS + RUN_METRICS)})",
            )
        queue = reader.string(alarm, where, "queue", default=None)
        if queue is not None and (metric not in QUEUE_METRICS or queue not in queue_names):
            raise reader.error(
                (*where, "queue"), f"{queue!r}: a configured queue, for per-queue metrics only"
            )
        threshold = reader.get(alarm, where, "threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise reader.error((*where, "threshold"), f"expected a number, got {threshold!r}")
        alarms.append(
            AlarmConfig(
                name=name,
                metric=metric,
                comparison=reader.choice(alarm, where, "comparison", tuple(COMPARISONS), ">"),
                threshold=float(threshold),
                queue=queue,
                statistic=reader.choice(
                    alarm, where, "statistic", ("Maximum", "Minimum", "Average", "Sum"), "Maximum"
                ),
                period_s=reader.integer(alarm, where, "period_s", default=60, minimum=10),
                evaluation_periods=reader.integer(alarm, where, "evaluation_periods", default=1, minimum=1),
            )
        )
    return CloudWatchConfig(sns_topic=topic, alarms=tuple(alarms))


def read_limits(reader: YamlReader, value: Any) -> Limits:
    """The ``limits`` section."""
    path = ("limits",)
    known = (
        "max_instances_total",
        "max_hourly_cost",
        "hourly_prices",
        "spot_blackout_s",
        "max_consecutive_launch_failures",
        "lock_stale_after_s",
    )
    section = reader.mapping(value, path, known)
    cost = reader.get(section, path, "max_hourly_cost", None)
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or cost <= 0):
        raise reader.error((*path, "max_hourly_cost"), f"expected USD per hour > 0, got {cost!r}")
    prices_value = section.get("hourly_prices") or {}
    prices = reader.mapping(prices_value, (*path, "hourly_prices"), tuple(str(k) for k in prices_value))
    out = []
    for instance_type, price in prices.items():
        where = (*path, "hourly_prices", instance_type)
        if not isinstance(instance_type, str) or not INSTANCE_TYPE_PATTERN.match(instance_type):
            raise reader.error(where, "keys are instance types such as g4dn.xlarge")
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise reader.error(where, f"expected USD per hour >= 0, got {price!r}")
        out.append((instance_type, float(price)))
    return Limits(
        max_instances_total=reader.integer(section, path, "max_instances_total", default=None, maximum=10000),
        max_hourly_cost=None if cost is None else float(cost),
        hourly_prices=tuple(out),
        spot_blackout_s=reader.seconds(section, path, "spot_blackout_s", 900.0),
        max_consecutive_launch_failures=reader.integer(
            section, path, "max_consecutive_launch_failures", default=5, minimum=1
        ),
        lock_stale_after_s=reader.seconds(section, path, "lock_stale_after_s", 300.0),
    )
