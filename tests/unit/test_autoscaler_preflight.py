"""Checks at start against (emulated) EC2: what the config names must exist; credentials must too."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoscaler.config import AutoscalerConfig, AutoscalerConfigError, config_from_dict
from autoscaler.preflight import check_account, check_aws, vcpu_quota_group
from autoscaler.service import AWSAccessError, preflight


def _config(ec2: Any, **resource: Any) -> AutoscalerConfig:
    base = {
        "name": "gpu",
        "instance_type": "g4dn.xlarge",
        "ami": ec2.ami,
        "subnet": ec2.subnet,
        "security_groups": [ec2.security_group],
        "max_instances": 2,
    }
    base.update(resource)
    return config_from_dict(
        {
            "region": ec2.region,
            "create_missing_queues": True,  # no ClearML server needed here
            "boot": {"requirements": ["clearml==2.1.12"]},
            "queues": {"train": {"resources": [base]}},
        }
    )


def test_existing_resources_pass(aws_ec2: Any) -> None:
    check_aws(_config(aws_ec2), aws_ec2.client)
    check_aws(_config(aws_ec2, subnet=None, availability_zone=aws_ec2.availability_zone), aws_ec2.client)


MISSING = [
    (
        {"ami": "ami-0123456789abcdef0"},
        "queues.train.resources[0].ami: ami-0123456789abcdef0 not found in eu-west-1",
    ),
    (
        {"subnet": "subnet-0123456789abcdef0"},
        "queues.train.resources[0].subnet: subnet-0123456789abcdef0 not found",
    ),
    ({"instance_type": "zz9.huge"}, "queues.train.resources[0].instance_type: zz9.huge is not offered"),
    ({"security_groups": ["sg-0123456789abcdef0"]}, "queues.train.resources[0].security_groups[0]: sg-0123"),
    ({"subnet": None, "availability_zone": "eu-west-1z"}, "availability_zone: eu-west-1z is not a zone of"),
]


def test_missing_ec2_resources_are_named(aws_ec2: Any) -> None:
    for resource, expected in MISSING:  # one emulated region for all cases (seeding it takes seconds)
        with pytest.raises(AutoscalerConfigError) as info:
            check_aws(_config(aws_ec2, **resource), aws_ec2.client)
        assert expected in str(info.value)
    assert aws_ec2.instances() == []


def test_no_credentials_is_one_clear_error(aws_ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    import boto3

    boto3.setup_default_session()  # forget the credentials found before
    with pytest.raises(AWSAccessError, match="no AWS credentials found"):
        preflight(_config(aws_ec2))


def _quota_answer(values: dict[str, float]) -> Any:
    """A botocore ``before-call`` handler answering GetServiceQuota for EC2's vCPU quotas, which
    moto's Service Quotas does not have (it knows VPC quotas only)."""
    from types import SimpleNamespace

    def answer(params: dict, **_: Any) -> Any:
        code = json.loads(params["body"])["QuotaCode"]
        if code not in values:
            return None  # to moto: NoSuchResourceException
        quota = {"ServiceCode": "ec2", "QuotaCode": code, "Value": values[code]}
        return SimpleNamespace(status_code=200), {"Quota": quota}

    return answer


def test_key_pair_instance_profile_and_vcpu_quotas(aws_ec2: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    iam = boto3.client("iam", region_name=aws_ec2.region)
    quotas = boto3.client("service-quotas", region_name=aws_ec2.region)
    gpu = _config(aws_ec2, key_name="fleet-ops", max_instances=4)
    with pytest.raises(
        AutoscalerConfigError, match=r"resources\[0\]\.key_name: key pair 'fleet-ops' not found"
    ):
        check_account(gpu, aws_ec2.client, iam, quotas)
    aws_ec2.client.create_key_pair(KeyName="fleet-ops")
    # moto has no EC2 quotas: said, not silently passed
    assert check_account(gpu, aws_ec2.client, iam, quotas) == [
        "vCPU quota On-Demand G and VT instances (L-DB2E81BA) not checked: NoSuchResourceException"
    ]
    profile = config_from_dict({**gpu.to_dict(), "instance_profile_name": "fleetfl-worker"})
    with pytest.raises(
        AutoscalerConfigError, match="instance_profile_name: instance profile 'fleetfl-worker' not"
    ):
        check_account(profile, aws_ec2.client, iam, quotas)
    iam.create_instance_profile(InstanceProfileName="fleetfl-worker")

    events = boto3._get_default_session().events
    for value, expected in ((0.0, "needs 4 vCPUs"), (8.0, "below the 16 vCPUs")):
        answer = _quota_answer({"L-DB2E81BA": value})
        events.register("before-call.service-quotas.GetServiceQuota", answer)
        quotas = boto3.client("service-quotas", region_name=aws_ec2.region)  # clients copy the handlers
        try:
            if value == 0.0:  # a new account: no G instance can start
                with pytest.raises(
                    AutoscalerConfigError, match=r"g4dn.xlarge needs 4 vCPUs but .* is 0 in eu-west-1"
                ):
                    check_account(profile, aws_ec2.client, iam, quotas)
            else:
                (warning,) = check_account(profile, aws_ec2.client, iam, quotas)
                assert expected in warning
        finally:
            events.unregister("before-call.service-quotas.GetServiceQuota", answer)


def test_vcpu_quota_groups() -> None:
    assert [vcpu_quota_group(t) for t in ("g4dn.xlarge", "vt1.3xlarge", "p4d.24xlarge", "c6i.large")] == [
        "g",
        "g",
        "p",
        "standard",
    ]
    assert vcpu_quota_group("inf2.xlarge") is None and vcpu_quota_group("trn1.2xlarge") is None
