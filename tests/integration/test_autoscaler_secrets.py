"""No secrets in user data, and the IAM policy of docs/autoscaler.md covers every AWS call made.

Real parts: the embedded ClearML server, ClearML's AutoScaler, boto3 against moto's EC2, SSM, IAM
and Service Quotas on 127.0.0.1; the boot script's credential lines run by bash under ``set -x``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.config import config_from_dict
from autoscaler.secrets import parameter_name
from autoscaler.service import run_autoscaler

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]


def _config(ec2: Any, queue: str, resource_keys: dict | None = None, **top: Any) -> Any:
    resource = {
        "name": "cpu",
        "instance_type": "c6i.large",
        "ami": ec2.ami,
        "subnet": ec2.subnet,
        "security_groups": [ec2.security_group],
        "max_instances": 1,
        **(resource_keys or {}),
    }
    return config_from_dict(
        {
            "region": ec2.region,
            "polling_interval_s": 1,
            "workers_prefix": f"t{uuid.uuid4().hex[:8]}",
            "boot": {"requirements": ["clearml==2.1.12"]},
            "queues": {queue: {"resources": [resource]}},
            **top,
        }
    )


def _queue_with_task(prefix: str) -> str:
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.queues.create(name=queue)
    client.tasks.enqueue(task=client.tasks.create(name="waiting", type="training").id, queue_name=queue)
    return queue


def test_clearml_credentials_live_in_ssm_not_in_user_data(
    clearml_server: Any, aws_ec2: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3

    git_token = "ghp_fleetfl_test_" + uuid.uuid4().hex
    monkeypatch.setenv("CLEARML_AUTOSCALER_GIT_USER", "fleet-bot")
    monkeypatch.setenv("CLEARML_AUTOSCALER_GIT_PASSWORD", git_token)
    config = _config(aws_ec2, _queue_with_task("secrets"))
    run_autoscaler(config, cycles=1)
    (instance,) = aws_ec2.live_instances()
    user_data = aws_ec2.user_data(instance["InstanceId"])
    for secret in (clearml_server.secret_key, clearml_server.access_key, git_token):
        assert secret not in user_data
    assert "export CLEARML_API_ACCESS_KEY=''" in user_data  # ClearML's line, left empty

    ssm = boto3.client("ssm", region_name=aws_ec2.region)
    stored = ssm.get_parameter(Name=parameter_name(config.workers_prefix), WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString"
    assert json.loads(stored["Value"]) == {
        "access_key": clearml_server.access_key,
        "secret_key": clearml_server.secret_key,
        "git_user": "fleet-bot",
        "git_pass": git_token,
    }

    # the boot script's lines (but the pip install), run by bash with tracing on as ClearML's is:
    # the credentials reach the environment, never the trace
    start = user_data.index("{ set +x; } 2>/dev/null")
    lines = [line for line in user_data[start:].splitlines()[:5] if "pip install" not in line]
    assert lines[-1] == "set -x"
    script = tmp_path / "fetch.sh"
    script.write_text(
        "set -x\n"
        + "\n".join(lines)
        + "\ntrue traced\n{ set +x; } 2>/dev/null\n"
        + 'echo "id=$CLEARML_API_ACCESS_KEY git=$CLEARML_AGENT_GIT_PASS"\n'
    )
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"id={clearml_server.access_key} git={git_token}"
    for secret in (clearml_server.secret_key, clearml_server.access_key, git_token):
        assert secret not in result.stderr
    assert "+ true traced" in result.stderr  # tracing is back on after the lines


def _policy_actions(doc: str) -> set[str]:
    """Every action the minimal IAM policy in ``doc`` allows (the first JSON block after its title)."""
    text = doc[doc.index("**Minimal IAM policy**") :]
    block = re.search(r"```json\n(.*?)```", text, re.DOTALL).group(1)
    policy = json.loads(block.replace("<account>", "123456789012"))
    actions = set()
    for statement in policy["Statement"]:
        value = statement["Action"]
        actions.update([value] if isinstance(value, str) else value)
    return actions


#: botocore signing names whose IAM action prefix differs.
_IAM_PREFIX = {"monitoring": "cloudwatch"}


def test_iam_policy_in_the_docs_covers_every_call_the_scaler_makes(
    clearml_server: Any, aws_ec2: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    from pipelines.cli import main

    calls: set[str] = set()

    def record(model: Any, **_: Any) -> None:
        prefix = model.service_model.signing_name
        calls.add(f"{_IAM_PREFIX.get(prefix, prefix)}:{model.name}")

    events = boto3._get_default_session().events
    events.register("before-call", record)
    try:
        aws_ec2.client.create_key_pair(KeyName="fleet-ops")
        boto3.client("iam").create_instance_profile(InstanceProfileName="fleetfl-worker")
        calls.clear()
        config = _config(
            aws_ec2,
            _queue_with_task("iam"),
            {"key_name": "fleet-ops", "spot": True},
            instance_profile_name="fleetfl-worker",
            cloudwatch={
                "sns_topic": "fleetfl-alarms",
                "alarms": [{"name": "cost", "metric": "HourlyCost", "comparison": ">", "threshold": 5}],
            },
        )
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        assert main(["autoscaler", "check", "--config", str(path), "--aws"]) == 0
        run_autoscaler(config, cycles=2)
        (instance,) = aws_ec2.live_instances()
        aws_ec2.client.terminate_instances(InstanceIds=[instance["InstanceId"]])
    finally:
        events.unregister("before-call", record)
    capsys.readouterr()
    assert {
        "ec2:RunInstances",
        "ec2:CreateLaunchTemplate",
        "ssm:PutParameter",
        "iam:GetInstanceProfile",
    } <= calls
    missing = calls - _policy_actions((REPO / "docs" / "autoscaler.md").read_text())
    assert not missing, f"calls the docs' IAM policy does not allow: {sorted(missing)}"
