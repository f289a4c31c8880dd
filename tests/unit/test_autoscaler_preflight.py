"""Checks at start against (emulated) EC2: what the config names must exist; credentials must too."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.config import AutoscalerConfig, AutoscalerConfigError, config_from_dict
from autoscaler.preflight import check_aws
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
