"""Instances a previous autoscaler run launched but no longer tracks.

ClearML's scaler keeps the instances it launched and that have not registered yet in memory only
(``supervisor``'s ``spun_workers``). When the autoscaler restarts (service task re-enqueued, agent
restarted, crash), such an instance is forgotten: if its agent never registers, nothing ever
terminates it, and it keeps costing money. Instances whose agent *did* register are fine: the new
scaler sees their workers and applies the idle timeout to them.

Every poll, :func:`reap_orphans` terminates our instances (tag ``fleetfl-autoscaler=<workers_prefix>``)
that neither registered a worker nor are tracked by the running scaler, once they are older than the
spin-up timeout: the same rule ClearML applies to the instances it tracks, kept across restarts.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from autoscaler.config import AutoscalerConfig

log = logging.getLogger(__name__)

#: Tag put on every instance (and, on-demand, its volumes): which autoscaler owns it. The IAM
#: policy in docs/autoscaler.md lets the autoscaler terminate only instances carrying it.
OWNER_TAG = "fleetfl-autoscaler"


def stale_untracked_instances(
    config: AutoscalerConfig, ec2: Any, known_worker_ids: set[str], now: datetime | None = None
) -> list[str]:
    """Our live instances older than the spin-up timeout whose worker id is not known (neither
    registered on the ClearML server nor tracked by the running scaler)."""
    now = now or datetime.now(UTC)
    known = {worker_id.rsplit(":", 1)[-1] for worker_id in known_worker_ids}
    stale = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{OWNER_TAG}", "Values": [config.workers_prefix]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                age = (now - instance["LaunchTime"]).total_seconds()
                if instance["InstanceId"] not in known and age > config.spin_up_timeout_s:
                    stale.append(instance["InstanceId"])
    return stale


def reap_orphans(config: AutoscalerConfig, ec2: Any, known_worker_ids: set[str]) -> list[str]:
    """Terminate :func:`stale_untracked_instances`; returns their ids."""
    stale = stale_untracked_instances(config, ec2, known_worker_ids)
    if stale:
        log.warning(
            "terminating %d instance(s) that never registered and that this scaler does not track "
            "(launched before a restart): %s",
            len(stale),
            stale,
        )
        ec2.terminate_instances(InstanceIds=stale)
    return stale
