"""Checks made once at start, before the first poll: what the config names must exist.

ClearML's scaler would otherwise find out one waiting task at a time (a wrong AMI fails every
launch and is only logged) or not at all (a misspelt queue is silently created and never served).
Every problem is an :class:`~autoscaler.config.AutoscalerConfigError` naming the config key.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from autoscaler.config import AutoscalerConfig, AutoscalerConfigError, Resource, resource_keys

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


#: Service Quotas codes of the EC2 vCPU quotas: group -> (on-demand code, spot code, name).
VCPU_QUOTAS = {
    "standard": ("L-1216C47A", "L-34B43A08", "Standard (A, C, D, H, I, M, R, T, Z) instances"),
    "g": ("L-DB2E81BA", "L-3819A6DF", "G and VT instances"),
    "p": ("L-417A185B", "L-7212CCBC", "P instances"),
}
_STANDARD_FAMILIES = "acdhimrtz"


def vcpu_quota_group(instance_type: str) -> str | None:
    """The vCPU quota group of an instance type (None: a family this check does not know)."""
    family = instance_type.split(".", 1)[0]
    if family.startswith(("g", "vt")):
        return "g"
    if family.startswith("p"):
        return "p"
    if family[0] in _STANDARD_FAMILIES and not family.startswith(("dl", "inf", "trn", "u-")):
        return "standard"
    return None


def check_account(config: AutoscalerConfig, ec2: Any, iam: Any, quotas: Any) -> list[str]:
    """Refuse key pairs and instance profiles that do not exist, and vCPU quotas too small for one
    instance; returns warnings (quotas below what the caps allow, quotas that could not be read).

    Needs ``ec2:DescribeKeyPairs``, ``ec2:DescribeInstanceTypes``, ``iam:GetInstanceProfile`` and
    ``servicequotas:GetServiceQuota``.
    """
    warnings: list[str] = []
    for where, resource in resource_keys(config):
        if resource.key_name:
            try:
                ec2.describe_key_pairs(KeyNames=[resource.key_name])
            except ClientError as exc:
                if not exc.response.get("Error", {}).get("Code", "").startswith("InvalidKeyPair"):
                    raise
                raise AutoscalerConfigError(
                    f"{where}.key_name: key pair {resource.key_name!r} not found in {config.region}"
                ) from None
    profile = config.instance_profile_name or (config.instance_profile_arn or "").rsplit("/", 1)[-1]
    if profile:
        try:
            iam.get_instance_profile(InstanceProfileName=profile)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise
            key = "instance_profile_name" if config.instance_profile_name else "instance_profile_arn"
            raise AutoscalerConfigError(f"{key}: instance profile {profile!r} not found") from None

    needed: dict[tuple[str, bool], list[tuple[str, Resource, int]]] = {}
    for where, resource in resource_keys(config):
        group = vcpu_quota_group(resource.instance_type)
        if group is None:
            warnings.append(
                f"{where}.instance_type: no vCPU quota check for {resource.instance_type}'s family"
            )
            continue
        info = ec2.describe_instance_types(InstanceTypes=[resource.instance_type])["InstanceTypes"][0]
        needed.setdefault((group, resource.spot), []).append(
            (where, resource, info["VCpuInfo"]["DefaultVCpus"])
        )
    for (group, spot), uses in needed.items():
        on_demand_code, spot_code, name = VCPU_QUOTAS[group]
        code = spot_code if spot else on_demand_code
        title = f"{'Spot' if spot else 'On-Demand'} {name} ({code})"
        try:
            value = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except ClientError as exc:
            warnings.append(f"vCPU quota {title} not checked: {exc.response.get('Error', {}).get('Code')}")
            continue
        for where, resource, vcpus in uses:
            if vcpus > value:
                raise AutoscalerConfigError(
                    f"{where}.instance_type: {resource.instance_type} needs {vcpus} vCPUs but the account's "
                    f"vCPU quota {title} is {value:g} in {config.region}: request an increase "
                    "(Service Quotas)"
                )
        wanted = sum(vcpus * resource.max_instances for _, resource, vcpus in uses)
        if wanted > value:
            warnings.append(
                f"vCPU quota {title} is {value:g}: below the {wanted} vCPUs that the resources' "
                "max_instances allow, so EC2 refuses launches before the caps are reached"
            )
    return warnings
