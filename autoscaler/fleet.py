"""What the fleet is, read from EC2 itself, and what may still be launched without passing a cap.

The instances the autoscaler owns carry the tags ``fleetfl-autoscaler=<workers_prefix>`` and
``fleetfl-resource=<resource name>`` from the moment they are launched (tags at launch). Every poll
the scaler lists them (:func:`live_instances`): that list, not the scaler's memory, says what runs or
boots, so a restarted scaler (a crash, a re-enqueued service task) sees the instances its previous
run left booting and does not start a second set.

:class:`FleetBudget` applies the caps to that list plus the launches planned in the current poll:
each resource's ``max_instances``, ``limits.max_instances_total`` and ``limits.max_hourly_cost``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoscaler.config import AutoscalerConfig

#: Tag put on every instance (and its volumes): which autoscaler owns it. The IAM policy in
#: docs/autoscaler.md lets the autoscaler terminate only instances carrying it.
OWNER_TAG = "fleetfl-autoscaler"

#: Tag naming the config resource an instance was launched for.
RESOURCE_TAG = "fleetfl-resource"

#: Instance states that count as live: they run, boot, or may run again.
LIVE_STATES = ("pending", "running", "stopping", "stopped")


@dataclass(frozen=True)
class LiveInstance:
    """One of our instances as EC2 lists it."""

    instance_id: str
    resource: str  # "" for an instance without the resource tag (launched by another version)
    instance_type: str
    launch_time: float  # seconds since the epoch
    spot: bool = False


def live_instances(ec2: Any, workers_prefix: str) -> list[LiveInstance]:
    """Every live instance tagged as owned by the scaler of ``workers_prefix`` (DescribeInstances)."""
    found = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{OWNER_TAG}", "Values": [workers_prefix]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                found.append(
                    LiveInstance(
                        instance_id=instance["InstanceId"],
                        resource=tags.get(RESOURCE_TAG, ""),
                        instance_type=instance["InstanceType"],
                        launch_time=instance["LaunchTime"].timestamp(),
                        spot=instance.get("InstanceLifecycle") == "spot",
                    )
                )
    return found


class FleetBudget:
    """The caps, applied to the live instances plus the launches planned in this poll."""

    def __init__(self, config: AutoscalerConfig, live: list[LiveInstance]) -> None:
        self.config = config
        self.types = {resource.name: resource.instance_type for resource in config.resources}
        self.maximum = {resource.name: resource.max_instances for resource in config.resources}
        self.count: dict[str, int] = {}
        self.total = 0
        self.cost = 0.0
        for instance in live:
            self._add(instance.resource, instance.instance_type)

    def _price(self, instance_type: str) -> float:
        limits = self.config.limits
        price = limits.price(instance_type)
        if price is None:  # a live type the config does not price: count it as the dearest known
            price = max((p for _, p in limits.hourly_prices), default=0.0)
        return price

    def _add(self, resource: str, instance_type: str, sign: int = 1) -> None:
        self.count[resource] = self.count.get(resource, 0) + sign
        self.total += sign
        self.cost += sign * self._price(instance_type)

    def refusal(self, resource: str) -> str | None:
        """Why one more instance of ``resource`` would pass a cap (None: it would not)."""
        limits = self.config.limits
        count, maximum = self.count.get(resource, 0), self.maximum.get(resource, 0)
        if count + 1 > maximum:
            return f"{resource} has {count} of max_instances {maximum}"
        if limits.max_instances_total is not None and self.total + 1 > limits.max_instances_total:
            return f"the fleet has {self.total} of limits.max_instances_total {limits.max_instances_total}"
        if limits.max_hourly_cost is not None:
            after = self.cost + self._price(self.types[resource])
            if after > limits.max_hourly_cost + 1e-9:
                return (
                    f"{resource} ({self.types[resource]}) would raise the fleet's cost from "
                    f"{self.cost:.3f} to {after:.3f} USD/h, above limits.max_hourly_cost "
                    f"{limits.max_hourly_cost:g}"
                )
        return None

    def plan(self, resource: str) -> None:
        """Count a launch of ``resource`` (checked with :meth:`refusal` first)."""
        self._add(resource, self.types[resource])

    def unplan(self, resource: str) -> None:
        """Forget a planned launch of ``resource`` (it failed)."""
        self._add(resource, self.types[resource], sign=-1)
