"""Spot interruption: the worker's watcher sees EC2's notice, its task is stopped and re-enqueued,
and the scaler starts a replacement for it.

Real parts: the embedded ClearML server, ClearML's AutoScaler against moto's EC2 on 127.0.0.1, the
watcher script itself (``autoscaler/spot_watch.py``, as the boot script runs it) against an IMDSv2
emulator on 127.0.0.1 (moto has no interruption notices). The worker registers and takes its task
through the same API calls clearml-agent makes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from autoscaler.boot import SPOT_WATCH_SOURCE
from autoscaler.config import config_from_dict
from autoscaler.service import run_autoscaler
from autoscaler.spot_watch import interruption_notice

pytestmark = pytest.mark.timeout(180)


def test_interruption_notice_requeues_the_task_and_the_scaler_replaces_the_instance(
    clearml_server: Any, aws_ec2: Any, imds: Any
) -> None:
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    queue = f"spot-{uuid.uuid4().hex[:8]}"
    queue_id = client.queues.create(name=queue).id
    task_id = client.tasks.create(name="federated-client", type="training").id
    client.tasks.enqueue(task=task_id, queue=queue_id)
    resource = {
        "name": "gpu-spot",
        "instance_type": "g4dn.xlarge",
        "ami": aws_ec2.ami,
        "subnet": aws_ec2.subnet,
        "spot": True,
        "max_instances": 1,
    }
    config = config_from_dict(
        {
            "region": aws_ec2.region,
            "polling_interval_s": 1,
            "workers_prefix": f"t{uuid.uuid4().hex[:8]}",
            "boot": {"requirements": ["clearml==2.1.12"]},
            "queues": {queue: {"resources": [resource]}},
        }
    )
    run_autoscaler(config, cycles=1)
    (instance,) = aws_ec2.live_instances()
    user_data = aws_ec2.user_data(instance["InstanceId"])
    assert SPOT_WATCH_SOURCE.read_text().rstrip("\n") in user_data
    assert "nohup python3 /opt/fleetfl/spot_watch.py" in user_data
    prefix = re.search(r"^export CLEARML_WORKER_ID=(\S+):\$DYNAMIC_INSTANCE_ID$", user_data, re.MULTILINE)
    worker_id = f"{prefix.group(1)}:{instance['InstanceId']}"

    # the instance's agent registers and takes the task (the calls clearml-agent makes)
    client.workers.register(worker=worker_id, queues=[queue_id])
    assert client.queues.get_next_task(queue=queue_id).entry.task == task_id
    client.tasks.started(task=task_id)
    client.workers.status_report(
        worker=worker_id, task=task_id, queue=queue_id, timestamp=int(time.time() * 1000)
    )

    assert interruption_notice(imds.url) is None  # no notice yet: 404
    imds.notice = {"action": "terminate", "time": "2026-12-08T01:00:00Z"}
    watcher = subprocess.run(
        [sys.executable, str(SPOT_WATCH_SOURCE)],
        env={
            "PATH": "/usr/bin:/bin",
            "CLEARML_WORKER_ID": worker_id,
            "CLEARML_API_HOST": clearml_server.api_host,
            "CLEARML_API_ACCESS_KEY": clearml_server.access_key,
            "CLEARML_API_SECRET_KEY": clearml_server.secret_key,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watcher.returncode == 0, watcher.stderr
    assert f"task {task_id} of {worker_id} stopped and re-enqueued" in watcher.stderr
    assert clearml_server.secret_key not in watcher.stderr + watcher.stdout
    task = client.tasks.get_by_id(task=task_id)
    assert (str(task.status.value), task.execution.queue, task.status_reason) == (
        "queued",
        queue_id,
        "spot interruption",
    )
    assert [e.task for e in client.queues.get_by_id(queue=queue_id).entries] == [task_id]

    # EC2 takes the instance back; its agent is gone. The next poll starts a replacement.
    aws_ec2.client.terminate_instances(InstanceIds=[instance["InstanceId"]])
    client.workers.unregister(worker=worker_id)
    run_autoscaler(config, cycles=1)
    (replacement,) = aws_ec2.live_instances()
    assert replacement["InstanceId"] != instance["InstanceId"] and replacement["InstanceLifecycle"] == "spot"
