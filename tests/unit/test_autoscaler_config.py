"""The autoscaler's config: validation with the key (and line) named, mapping onto ClearML's scaler."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.config import (
    AutoscalerConfigError,
    config_from_dict,
    config_from_yaml,
    config_with_settings,
    load_config,
    split_settings,
)

BASE = """\
region: eu-west-1
polling_interval_s: 2
idle_timeout_s: 5
spin_up_timeout_s: 10
tags: {project: fleetfl}
boot:
  mode: agent
  requirements: ["clearml==2.1.12", "torch==2.14.1"]
queues:
  train:
    resources:
      - name: gpu-spot
        instance_type: g4dn.xlarge
        ami: ami-0abcdef1234567890
        spot: true
        subnet: subnet-0123456789abcdef0
        security_groups: [sg-0123456789abcdef0]
        ebs_size_gb: 100
        max_instances: 2
        tags: {cost-center: research}
"""


def _error(text: str) -> str:
    with pytest.raises(AutoscalerConfigError) as info:
        config_from_yaml(text, source="fleet.yaml")
    return str(info.value)


def test_example_config_is_valid_and_round_trips(repo_root: Path) -> None:
    config = load_config(repo_root / "autoscaler" / "example.yaml")
    assert [q.name for q in config.queues] == ["fleetfl-train", "fleetfl-cpu"]
    assert config.resources[0].spot and config.resources[1].spot is False
    assert "ultralytics==8.4.190" in config.boot.requirements  # read from requirements.txt
    assert config_from_dict(config.to_dict()) == config
    settings, document = split_settings(config)
    assert "region" not in document and settings["polling_interval_s"] == 30.0
    edited = {
        key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in settings.items()
    }
    edited["polling_interval_s"] = "45"
    assert config_with_settings(document, edited, source="task").polling_interval_s == 45.0


def test_base_config_is_valid() -> None:
    config = config_from_yaml(BASE)
    (resource,) = config.resources
    assert resource.instance_type == "g4dn.xlarge" and resource.max_instances == 2
    assert dict(resource.tags) == {"cost-center": "research"}
    assert config.boot.requirements == ("clearml==2.1.12", "torch==2.14.1")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("        ami: ami-0abcdef1234567890\n", "", "fleet.yaml:12: queues.train.resources[0].ami: missing"),
        ("        subnet: subnet-0123456789abcdef0\n", "", "queues.train.resources[0].subnet: missing"),
        (
            "g4dn.xlarge",
            "g4dn",
            "fleet.yaml:13: queues.train.resources[0].instance_type: malformed value 'g4dn'",
        ),
        (
            "max_instances: 2",
            "max_instances: -1",
            "fleet.yaml:19: queues.train.resources[0].max_instances: must be >= 0",
        ),
        ("max_instances: 2", "max_instances: 1.5", "max_instances: expected a whole number"),
        ("ebs_size_gb: 100", "ebs_size_gb: 0", "queues.train.resources[0].ebs_size_gb: must be >= 1"),
        (
            "ami: ami-0abcdef1234567890",
            "ami: ubuntu-22.04",
            "resources[0].ami: malformed value 'ubuntu-22.04'",
        ),
        ("sg-0123456789abcdef0", "default", "queues.train.resources[0].security_groups[0]: malformed"),
        ("region: eu-west-1", "region: europe", "fleet.yaml:1: region: malformed value 'europe'"),
        ("polling_interval_s: 2", "polling_interval_s: -2", "fleet.yaml:2: polling_interval_s: must be > 0"),
        (
            "spin_up_timeout_s: 10",
            "spin_up_timeout_s: 1",
            "spin_up_timeout_s: must be at least polling_interval_s",
        ),
        (
            "        spot: true\n",
            "        spot: true\n        instace_type: x\n",
            "fleet.yaml:16: queues.train.resources[0].instace_type: unknown key",
        ),
        (
            "region: eu-west-1\n",
            "region: eu-west-1\naws_secret_access_key: abc\n",
            "fleet.yaml:2: aws_secret_access_key: credentials do not belong",
        ),
        ("spot: true", "spot: yes please", "queues.train.resources[0].spot: expected true or false"),
        ("  mode: agent", "  mode: image", "boot.image: missing"),
        ("  mode: agent", "  mode: docker", "boot.mode: expected one of agent, image"),
        ("name: gpu-spot", "name: 'gpu:spot'", "queues.train.resources[0].name: malformed"),
        ("{cost-center: research}", "{'a,b': c}", "queues.train.resources[0].tags.a,b: tag keys"),
        ("  train:\n", "  'train:gpu':\n", "queues.train:gpu: queue names"),
        (
            "region: eu-west-1\n",
            "region: eu-west-1\nregion: eu-west-2\n",
            "fleet.yaml:2: region: duplicate key",
        ),
        (
            "        subnet: subnet-0123456789abcdef0\n",
            "        subnet: subnet-0123456789abcdef0\n        availability_zone: eu-west-1a\n",
            "resources[0].availability_zone: give subnet or availability_zone, not both",
        ),
        ("queues:\n", "queues: {}\nunused:\n", "unused: unknown key"),
        ("region: eu-west-1", "region: [eu-west-1", "fleet.yaml:"),
    ],
)
def test_bad_configs_name_the_key(old: str, new: str, expected: str) -> None:
    assert old in BASE
    assert expected in _error(BASE.replace(old, new, 1))


def test_resource_names_are_unique_across_queues() -> None:
    second_queue = BASE + BASE[BASE.index("  train:") :].replace("  train:", "  eval:")
    message = _error(second_queue)
    assert "queues.eval.resources[0].name: resource 'gpu-spot' is already used by queue 'train'" in message


def test_missing_requirements_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(BASE.replace('["clearml==2.1.12", "torch==2.14.1"]', "no-such-requirements.txt"))
    with pytest.raises(AutoscalerConfigError, match=r"boot.requirements: requirements file 'no-such"):
        load_config(path)
    with pytest.raises(AutoscalerConfigError, match="no such autoscaler config file"):
        load_config(tmp_path / "missing.yaml")


def test_ui_settings_are_validated_too() -> None:
    settings, document = split_settings(config_from_yaml(BASE))
    with pytest.raises(AutoscalerConfigError, match="polling_interval_s: expected a number of seconds"):
        config_with_settings(document, {**settings, "polling_interval_s": "soon"}, source="task 1")
    with pytest.raises(AutoscalerConfigError, match="max_instances: not an editable setting"):
        config_with_settings(document, {"max_instances": "3"}, source="task 1")


def test_unknown_clearml_queue_is_refused_unless_creation_is_allowed() -> None:
    from autoscaler.preflight import check_queues

    config = config_from_yaml(BASE)
    with pytest.raises(AutoscalerConfigError, match=r"queues.train: unknown queue on the ClearML server"):
        check_queues(config, {"default", "services"})
    check_queues(config, {"train"})
    check_queues(config_from_yaml(BASE + "create_missing_queues: true\n"), set())


def test_cli_refuses_a_bad_config_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    path = tmp_path / "fleet.yaml"
    path.write_text(BASE.replace("g4dn.xlarge", "g4dn"))
    with pytest.raises(SystemExit) as info:
        main(["autoscaler", "run", "--config", str(path), "--cycles", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    where = f"{path}:13: queues.train.resources[0].instance_type"
    assert err == f"fleetfl: error: {where}: malformed value 'g4dn' (family.size, such as g4dn.xlarge)"


def test_cli_check_prints_the_clearml_mapping(repo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main

    assert main(["autoscaler", "check", "--config", str(repo_root / "autoscaler" / "example.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queues"] == {
        "fleetfl-train": [["gpu-spot", 4], ["gpu-ondemand", 1]],
        "fleetfl-cpu": [["cpu", 2]],
    }
    assert summary["resource_configurations"]["cpu"]["availability_zone"] == "eu-west-1a"
    assert "# --- FleetFL boot script (autoscaler/boot.py)" in summary["boot_script"]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (
            "limits: {max_hourly_cost: 2.5}\n",
            "fleet.yaml:9: limits.hourly_prices: no price for g4dn.xlarge (queues.train.resources[0])",
        ),
        (
            "limits: {max_hourly_cost: -1}\n",
            "fleet.yaml:9: limits.max_hourly_cost: expected USD per hour > 0",
        ),
        ("limits: {hourly_prices: {g4dn: 0.5}}\n", "limits.hourly_prices.g4dn: keys are instance types"),
        ("limits: {max_instances_total: -1}\n", "limits.max_instances_total: must be >= 0"),
        (
            "limits: {max_consecutive_launch_failures: 0}\n",
            "limits.max_consecutive_launch_failures: must be >= 1",
        ),
        (
            "limits: {lock_stale_after_s: 3}\n",
            "limits.lock_stale_after_s: must be at least twice polling_interval_s",
        ),
        ("limits: {spot_blackout: 60}\n", "limits.spot_blackout: unknown key"),
    ],
)
def test_bad_limits_name_the_key(limits: str, expected: str) -> None:
    assert expected in _error(BASE.replace("queues:\n", f"{limits}queues:\n", 1))


def test_limits_round_trip() -> None:
    text = BASE.replace(
        "queues:\n",
        "limits:\n  max_instances_total: 3\n  max_hourly_cost: 1.5\n  hourly_prices: {g4dn.xlarge: 0.526}\n"
        "  spot_blackout_s: 60\nqueues:\n",
        1,
    )
    config = config_from_yaml(text, source="fleet.yaml")
    assert config.limits.max_instances_total == 3 and config.limits.price("g4dn.xlarge") == 0.526
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("cloudwatch: {alarms: []}\n", "cloudwatch.sns_topic: missing"),
        (
            "cloudwatch: {sns_topic: t, alarms: [{name: a, metric: MAP, threshold: 1}]}\n",
            "cloudwatch.alarms[0].metric: unknown metric 'MAP'",
        ),
        (
            "cloudwatch: {sns_topic: t, alarms: [{name: a, metric: HourlyCost, threshold: 1, queue: x}]}\n",
            "cloudwatch.alarms[0].queue: 'x': a configured queue",
        ),
        (
            "cloudwatch: {sns_topic: t, alarms: [{name: a, metric: LiveInstances, threshold: 1, "
            "comparison: '!='}]}\n",
            "cloudwatch.alarms[0].comparison: expected one of >, >=, <, <=",
        ),
    ],
)
def test_bad_cloudwatch_sections_name_the_key(section: str, expected: str) -> None:
    assert expected in _error(BASE.replace("queues:\n", f"{section}queues:\n", 1))


def test_cloudwatch_section_round_trips() -> None:
    section = (
        "cloudwatch:\n  sns_topic: fleet-alarms\n  alarms:\n"
        "    - {name: cost, metric: HourlyCost, queue: train, comparison: '>', threshold: 4}\n"
    )
    config = config_from_yaml(BASE.replace("queues:\n", f"{section}queues:\n", 1), source="fleet.yaml")
    (alarm,) = config.cloudwatch.alarms
    assert (alarm.metric, alarm.queue, alarm.comparison, alarm.threshold) == ("HourlyCost", "train", ">", 4.0)
    assert config_from_dict(config.to_dict()) == config
