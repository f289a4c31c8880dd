"""Checks made once at start, before the first poll: what the config names must exist.

ClearML's scaler would otherwise find out one waiting task at a time (a wrong AMI fails every
launch and is only logged) or not at all (a misspelt queue is silently created and never served).
Every problem is an :class:`~autoscaler.config.AutoscalerConfigError` naming the config key.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from autoscaler.config import AutoscalerConfig, AutoscalerConfigError, resource_keys

#: EC2 error codes that mean "no such thing" (besides the ``*.NotFound`` / ``*.Malformed`` family).
_NOT_FOUND_CODES = ("InvalidInstanceType", "InvalidParameterValue")


def check_queues(config: AutoscalerConfig, existing: set[str]) -> None:
    """Refuse queues the ClearML server does not know, unless ``create_missing_queues`` is set."""
    if config.create_missing_queues:
        return
    for queue in config.queues:
        if queue.name not in existing:
            known = ", ".join(sorted(existing)) or "none"
            raise AutoscalerConfigError(
                f"queues.{queue.name}: unknown queue on the ClearML server (known: {known}); "
                "create it or set create_missing_queues: true"
            )


def clearml_queue_names() -> set[str]:
    """Names of the queues on the ClearML server of the current SDK configuration."""
    from clearml.backend_api.session.client import APIClient

    return {queue.name for queue in APIClient().queues.get_all(only_fields=["name"])}


def check_aws(config: AutoscalerConfig, ec2: Any) -> None:
    """Refuse AMIs, subnets, security groups, zones and instance types that the region lacks.

    ``ec2`` is a boto3 EC2 client for ``config.region``. Needs ``ec2:DescribeImages``,
    ``DescribeSubnets``, ``DescribeSecurityGroups``, ``DescribeAvailabilityZones`` and
    ``DescribeInstanceTypes`` (read-only; see docs/autoscaler.md).
    """

    def found(call: Any, key: str, **kwargs: Any) -> bool:
        """Whether the describe call lists something (not-found errors count as nothing)."""
        try:
            return bool(call(**kwargs)[key])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code.endswith((".NotFound", ".Malformed")) or code in _NOT_FOUND_CODES:
                return False
            raise

    zones = None
    for where, resource in resource_keys(config):
        if not found(ec2.describe_images, "Images", ImageIds=[resource.ami]):
            raise AutoscalerConfigError(f"{where}.ami: {resource.ami} not found in {config.region}")
        if not found(ec2.describe_instance_types, "InstanceTypes", InstanceTypes=[resource.instance_type]):
            raise AutoscalerConfigError(
                f"{where}.instance_type: {resource.instance_type} is not offered in {config.region}"
            )
        if resource.subnet and not found(ec2.describe_subnets, "Subnets", SubnetIds=[resource.subnet]):
            raise AutoscalerConfigError(f"{where}.subnet: {resource.subnet} not found in {config.region}")
        if resource.availability_zone:
            if zones is None:
                zones = {z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
            if resource.availability_zone not in zones:
                raise AutoscalerConfigError(
                    f"{where}.availability_zone: {resource.availability_zone} is not a zone of "
                    f"{config.region} ({', '.join(sorted(zones))})"
                )
        for index, group in enumerate(resource.security_groups):
            if not found(ec2.describe_security_groups, "SecurityGroups", GroupIds=[group]):
                raise AutoscalerConfigError(
                    f"{where}.security_groups[{index}]: {group} not found in {config.region}"
                )
