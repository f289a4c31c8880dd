"""ClearML's AutoScaler (with FleetFL's fixes) against the embedded ClearML server and moto's EC2.

Real parts: the ClearML SDK and server, clearml-agent daemons standing in for booted instances
(``instance_booter``), boto3 against moto's EC2 server on 127.0.0.1. Intervals are seconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.config import AutoscalerConfig, AutoscalerConfigError, config_from_dict
from autoscaler.fleet import OWNER_TAG, RESOURCE_TAG
from autoscaler.scaler import worker_prefix
from autoscaler.service import run_autoscaler

pytestmark = pytest.mark.timeout(300)

PROJECT = "fleetfl-tests/autoscaler"


@pytest.fixture
def queue_name(clearml_server: Any) -> str:
    """A fresh queue on the embedded server, unique to the test."""
    from clearml.backend_api.session.client import APIClient

    name = f"autoscale-{uuid.uuid4().hex[:8]}"
    APIClient().queues.create(name=name)
    return name


@pytest.fixture
def enqueue_tasks(tmp_path: Path) -> Callable[[str, int], list[str]]:
    """``enqueue_tasks(queue, n)``: n tiny script tasks waiting on ``queue``; returns their ids."""
    from clearml import Task

    script = tmp_path / "hello_fleet.py"
    script.write_text('print("hello from a task served by an autoscaled worker")\n')

    def enqueue(queue: str, count: int) -> list[str]:
        ids = []
        for index in range(count):
            task = Task.create(
                project_name=PROJECT,
                task_name=f"waiting-{index}",
                script=str(script),
                add_task_init_call=False,
            )
            Task.enqueue(task, queue_name=queue)
            ids.append(task.id)
        return ids

    return enqueue


def make_config(ec2: Any, queue: str, **overrides: Any) -> AutoscalerConfig:
    """A config with one resource serving ``queue`` on the emulated EC2 (overrides: resource keys
    and ``polling_interval_s``, ``idle_timeout_s``, ``spin_up_timeout_s``)."""
    timing = {key: overrides.pop(key) for key in list(overrides) if key.endswith("_s")}
    resource = {
        "name": "cpu-worker",
        "instance_type": "c6i.large",
        "ami": ec2.ami,
        "subnet": ec2.subnet,
        "security_groups": [ec2.security_group],
        "max_instances": 2,
        "tags": {"team": "perception"},
        **overrides,
    }
    return config_from_dict(
        {
            "region": ec2.region,
            "polling_interval_s": 1,
            "idle_timeout_s": 600,
            "spin_up_timeout_s": 600,
            **timing,
            "workers_prefix": f"t{uuid.uuid4().hex[:8]}",  # only this test's workers count
            "tags": {"project": "fleetfl"},
            "boot": {"requirements": ["clearml==2.1.12", "ultralytics==8.4.190"]},
            "queues": {queue: {"resources": [resource]}},
        }
    )


@pytest.fixture
def background_scaler() -> Iterator[Callable[[AutoscalerConfig], Any]]:
    """``start(config)``: run the autoscaler in a thread until the end of the test."""
    from autoscaler.scaler import build_autoscaler
    from autoscaler.service import preflight

    running: list[tuple[Any, threading.Thread]] = []

    def start(config: AutoscalerConfig) -> Any:
        preflight(config)
        scaler = build_autoscaler(config)
        thread = threading.Thread(target=scaler.start, name="autoscaler", daemon=True)
        thread.start()
        running.append((scaler, thread))
        return scaler

    yield start
    for scaler, thread in running:
        scaler.stop()
        thread.join(timeout=30)


@pytest.mark.parametrize(("waiting", "maximum"), [(3, 2), (1, 3)])
def test_waiting_tasks_start_min_of_waiting_and_maximum_instances(
    clearml_server: Any, aws_ec2: Any, queue_name: str, enqueue_tasks: Any, waiting: int, maximum: int
) -> None:
    enqueue_tasks(queue_name, waiting)
    config = make_config(aws_ec2, queue_name, max_instances=maximum)
    scaler = run_autoscaler(config, cycles=3)  # three polls: nothing more once instances are pending
    assert scaler.cycles_done == 3

    instances = aws_ec2.live_instances()
    assert len(instances) == min(waiting, maximum)
    resource = config.resources[0]
    for instance in instances:
        assert instance["InstanceType"] == "c6i.large"
        assert instance["ImageId"] == aws_ec2.ami and instance["SubnetId"] == aws_ec2.subnet
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [aws_ec2.security_group]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags == {
            "project": "fleetfl",
            "team": "perception",
            OWNER_TAG: config.workers_prefix,
            RESOURCE_TAG: "cpu-worker",
        }
        user_data = aws_ec2.user_data(instance["InstanceId"])
        assert f"export CLEARML_WORKER_ID={worker_prefix(config, resource)}:$DYNAMIC_INSTANCE_ID" in user_data
        assert f"daemon --queue '{queue_name}'" in user_data
        assert "clearml-agent==3.0.3" in user_data and "ultralytics==8.4.190" in user_data
        assert f"CLEARML_API_HOST={clearml_server.api_host}" in user_data
        assert aws_ec2.secret_access_key not in user_data and aws_ec2.access_key_id not in user_data


def test_spot_resources_request_spot_instances(
    clearml_server: Any, aws_ec2: Any, queue_name: str, enqueue_tasks: Any, tmp_path: Path
) -> None:
    from pipelines.cli import main

    enqueue_tasks(queue_name, 2)
    config = make_config(aws_ec2, queue_name, spot=True, max_instances=5, instance_type="g4dn.xlarge")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["autoscaler", "run", "--config", str(path), "--cycles", "2"]) == 0

    instances = aws_ec2.live_instances()
    assert len(instances) == 2 and aws_ec2.spot_requests() == []  # one-time spot via RunInstances
    for instance in instances:
        assert instance["InstanceLifecycle"] == "spot" and instance["InstanceType"] == "g4dn.xlarge"
        assert instance["ImageId"] == aws_ec2.ami and instance["MetadataOptions"]["HttpTokens"] == "required"
        assert {t["Key"]: t["Value"] for t in instance["Tags"]}[OWNER_TAG] == config.workers_prefix
        assert f"daemon --queue '{queue_name}'" in aws_ec2.user_data(instance["InstanceId"])


def test_bad_configs_are_refused_at_start_with_the_key_named(
    clearml_server: Any, aws_ec2: Any, queue_name: str
) -> None:
    config = make_config(aws_ec2, f"{queue_name}-typo")
    with pytest.raises(AutoscalerConfigError, match=rf"queues\.{queue_name}-typo: unknown queue"):
        run_autoscaler(config, cycles=1)
    wrong_ami = make_config(aws_ec2, queue_name, ami="ami-0123456789abcdef0")
    with pytest.raises(AutoscalerConfigError, match=rf"queues\.{queue_name}\.resources\[0\]\.ami: ami-0123"):
        run_autoscaler(wrong_ami, cycles=1)
    wrong_subnet = make_config(aws_ec2, queue_name, subnet="subnet-0123456789abcdef0")
    with pytest.raises(
        AutoscalerConfigError, match=r"resources\[0\]\.subnet: subnet-0123456789abcdef0 not found"
    ):
        run_autoscaler(wrong_subnet, cycles=1)
    assert aws_ec2.instances() == []


def test_instance_that_never_registers_is_terminated_after_the_spin_up_timeout(
    clearml_server: Any, aws_ec2: Any, queue_name: str, enqueue_tasks: Any
) -> None:
    enqueue_tasks(queue_name, 1)
    config = make_config(aws_ec2, queue_name, max_instances=1, spin_up_timeout_s=2)
    started = time.monotonic()
    run_autoscaler(config, cycles=5)  # polls at ~0, 1, ..., 4 s; the instance is stuck after 2 s
    elapsed = time.monotonic() - started
    first, *others = aws_ec2.instances()
    assert first["State"]["Name"] == "terminated" and elapsed > config.spin_up_timeout_s
    # the task still waits, so a replacement is started (and replaced in turn when stuck), never
    # more than the maximum at a time
    assert len(others) >= 1 and len(aws_ec2.live_instances()) <= 1


def test_restarted_scaler_terminates_instances_it_launched_before_that_never_registered(
    clearml_server: Any, aws_ec2: Any, queue_name: str, enqueue_tasks: Any
) -> None:
    enqueue_tasks(queue_name, 1)
    config = make_config(aws_ec2, queue_name, max_instances=1, spin_up_timeout_s=2)
    run_autoscaler(config, cycles=1)  # launches one instance, then "crashes" (forgets it)
    (first,) = aws_ec2.live_instances()
    time.sleep(config.spin_up_timeout_s + 0.5)
    run_autoscaler(config, cycles=1)  # restart: ClearML alone would never terminate the first one
    states = {i["InstanceId"]: i["State"]["Name"] for i in aws_ec2.instances()}
    assert states.pop(first["InstanceId"]) == "terminated"
    assert list(states.values()) == ["running"]  # its replacement for the waiting task


@pytest.mark.slow
def test_registered_workers_stop_scale_up_and_idle_ones_are_terminated(
    clearml_server: Any,
    aws_ec2: Any,
    queue_name: str,
    enqueue_tasks: Any,
    instance_booter: Any,
    background_scaler: Any,
) -> None:
    from clearml import Task
    from clearml.backend_api.session.client import APIClient

    task_ids = enqueue_tasks(queue_name, 3)
    config = make_config(aws_ec2, queue_name, max_instances=2, idle_timeout_s=4, spin_up_timeout_s=120)
    scaler = background_scaler(config)
    instance_booter.wait_for(lambda: len(instance_booter.booted) == 2, 30, "two instances to boot")
    launched = {i["InstanceId"] for i in aws_ec2.instances()}
    expected = {b.worker_id for b in instance_booter.booted.values()}

    def registered() -> set[str]:
        return {w.id for w in APIClient().workers.get_all() if w.id.startswith(config.workers_prefix)}

    instance_booter.wait_for(lambda: registered() == expected, 60, f"workers {expected} to register")

    def all_done() -> bool:
        assert len(aws_ec2.instances()) == 2, "an extra instance was started for registered workers"
        return all(Task.get_task(task_id=t).get_status() == "completed" for t in task_ids)

    # only the two booted agents serve this test's queue: they run all three tasks
    instance_booter.wait_for(all_done, 150, "the agents of the two instances to run the three tasks")

    instance_booter.wait_for(
        lambda: not aws_ec2.live_instances(), 60, "idle instances to be terminated after the idle timeout"
    )
    assert {i["InstanceId"] for i in aws_ec2.instances("terminated")} == launched
    assert scaler.cycles_done > 3


@pytest.mark.slow
def test_service_task_keeps_aws_credentials_out_of_clearml(
    clearml_server: Any,
    aws_ec2: Any,
    queue_name: str,
    enqueue_tasks: Any,
    clearml_agent: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from clearml import Task
    from clearml.backend_api.session.client import APIClient

    from pipelines.cli import main

    enqueue_tasks(queue_name, 1)
    config_path = tmp_path / "autoscaler.yaml"
    config_path.write_text(yaml.safe_dump(make_config(aws_ec2, queue_name, max_instances=1).to_dict()))
    services = f"services-{uuid.uuid4().hex[:6]}"
    with pytest.raises(SystemExit):  # the services queue must exist: refused, no task left behind
        main(["autoscaler", "enqueue", "--config", str(config_path), "--queue", services])
    assert f"--queue {services}: no such queue" in capsys.readouterr().err
    APIClient().queues.create(name=services)
    assert main(["autoscaler", "enqueue", "--config", str(config_path), "--queue", services,
                 "--cycles", "2", "--no-repo"]) == 0  # fmt: skip
    task_id = capsys.readouterr().out.strip().splitlines()[-1]

    # the services agent finds AWS access through the credentials chain (a profile), never through
    # the task: nothing about AWS is in the task but the region
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[fleetfl]\naws_access_key_id = {aws_ec2.access_key_id}\n"
        f"aws_secret_access_key = {aws_ec2.secret_access_key}\n"
    )
    clearml_agent(
        services,
        extra_env={
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_PROFILE": "fleetfl",
            "AWS_CONFIG_FILE": str(credentials.with_name("none")),
            "AWS_ENDPOINT_URL_EC2": aws_ec2.endpoint,
            "AWS_ENDPOINT_URL": aws_ec2.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    deadline = time.monotonic() + 180
    while Task.get_task(task_id=task_id).get_status() not in ("completed", "failed", "stopped"):
        assert time.monotonic() < deadline, "the service task did not finish"
        time.sleep(1)
    task = Task.get_task(task_id=task_id)
    log = "\n".join(task.get_reported_console_output(number_of_reports=10_000))
    assert task.get_status() == "completed", log[-3000:]
    assert len(aws_ec2.live_instances()) == 1  # it really scaled, with the profile's credentials

    parameters = task.get_parameters()
    assert parameters["Autoscaler/region"] == aws_ec2.region and parameters["Autoscaler/cycles"] == "2"
    configuration = task.get_configuration_object("autoscaler")
    assert "queues:" in configuration and aws_ec2.ami in configuration
    stored = "\n".join([repr(task.export_task()), repr(parameters), configuration, log])
    assert "Found 1 tasks in queue" in log  # the scaler's own log lines are among the events
    for secret in (aws_ec2.secret_access_key, aws_ec2.access_key_id):
        assert secret not in stored
    for path in clearml_server.data_dir.glob("server.db*"):  # every table, every event, raw
        assert aws_ec2.secret_access_key.encode() not in path.read_bytes(), path


def test_service_task_settings_are_editable_like_in_the_ui(
    clearml_server: Any, aws_ec2: Any, queue_name: str
) -> None:
    from clearml import Task

    from autoscaler.service import load_from_task, store_on_task

    config = make_config(aws_ec2, queue_name)
    task = Task.create(project_name=PROJECT, task_name="autoscaler-settings", task_type="service")
    store_on_task(task, config, cycles=None)
    # what a user does in the UI: edit parameters (strings) and the YAML configuration object
    task.set_parameter("Autoscaler/polling_interval_s", "7.5")
    task.set_parameter("Autoscaler/cycles", "3")
    edited = task.get_configuration_object("autoscaler").replace("max_instances: 2", "max_instances: 4")
    task.set_configuration_object(name="autoscaler", config_text=edited, config_type="yaml")

    loaded, cycles = load_from_task(Task.get_task(task_id=task.id))
    assert cycles == 3 and loaded.polling_interval_s == 7.5 and loaded.resources[0].max_instances == 4
    assert loaded.workers_prefix == config.workers_prefix and loaded.resources[0].ami == aws_ec2.ami

    task.set_parameter("Autoscaler/idle_timeout_s", "-1")
    with pytest.raises(AutoscalerConfigError, match=rf"task {task.id}: idle_timeout_s: must be > 0"):
        load_from_task(Task.get_task(task_id=task.id))


def test_enqueued_service_task_records_the_checkout_it_runs_from(
    clearml_server: Any, aws_ec2: Any, queue_name: str, tmp_path: Path
) -> None:
    import subprocess

    from clearml import Task

    from autoscaler.service import enqueue_service

    checkout = tmp_path / "checkout"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "-C", str(checkout), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    subprocess.run([*git, "-C", str(checkout), "remote", "add", "origin", "../upstream.git"], check=True)
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)

    config = make_config(aws_ec2, queue_name)
    script = Task.get_task(task_id=enqueue_service(config, queue=queue_name, repo=str(checkout))).data.script
    assert (script.repository, script.version_num) == (
        (tmp_path / "upstream.git").as_uri(),
        head.stdout.strip(),
    )
    assert (script.entry_point, script.working_dir) == ("-m autoscaler.service", ".")
    url = "https://git.example.invalid/fleetfl.git"
    assert (
        Task.get_task(task_id=enqueue_service(config, queue=queue_name, repo=url)).data.script.repository
        == url
    )
    with pytest.raises(AutoscalerConfigError, match="not a git checkout with an 'origin' remote"):
        enqueue_service(config, queue=queue_name, repo=str(tmp_path))
