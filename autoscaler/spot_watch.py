"""On a worker instance: when EC2 announces a spot interruption, stop and re-enqueue the agent's task.

The boot script (:mod:`autoscaler.boot`) writes this file to the instance and starts it in the
background with the system ``python3`` (standard library only: nothing to install). It polls the
instance metadata service (IMDSv2) for the spot interruption notice (``spot/instance-action``, 404
until EC2 schedules the interruption, about two minutes ahead). On a notice it looks up, on the
ClearML server, the task that this instance's worker (``CLEARML_WORKER_ID``) runs, stops it with the
reason ``spot interruption`` and puts it back on the queue it came from, where another worker picks
it up (a federated client rejoins the next round; the server's ``min_clients`` decides whether the
round in progress completes). On-demand instances never get a notice; the watcher just polls.

The ClearML address and credentials come from the environment the boot script exports
(``CLEARML_API_HOST``, ``CLEARML_API_ACCESS_KEY`` / ``CLEARML_API_SECRET_KEY``); they are never
printed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

#: The instance metadata service (a link-local address on every EC2 instance); botocore's
#: ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` overrides it, as it does for boto3.
IMDS_URL = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")

#: Seconds between two looks at the interruption notice (EC2 gives about 120 s of warning).
POLL_S = 5.0

REASON = "spot interruption"


def interruption_notice(imds_url: str = IMDS_URL, timeout: float = 2.0) -> dict | None:
    """EC2's spot interruption notice (``{"action": "terminate", "time": ...}``), None without one."""
    token_request = urllib.request.Request(
        f"{imds_url}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(token_request, timeout=timeout) as response:
        token = response.read().decode()
    notice_request = urllib.request.Request(
        f"{imds_url}/latest/meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token}
    )
    try:
        with urllib.request.urlopen(notice_request, timeout=timeout) as response:
            return json.loads(response.read().decode() or "{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


class ClearMLClient:
    """The few ClearML REST calls the watcher makes (``auth.login``, then bearer-token calls)."""

    def __init__(self, api_host: str, access_key: str, secret_key: str) -> None:
        self.api_host = api_host.rstrip("/")
        basic = base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()
        self.token = self._post("auth.login", {}, f"Basic {basic}")["token"]

    def _post(self, endpoint: str, body: dict, authorization: str) -> dict:
        request = urllib.request.Request(
            f"{self.api_host}/{endpoint}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": authorization},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read().decode())["data"]

    def call(self, endpoint: str, **body: object) -> dict:
        return self._post(endpoint, body, f"Bearer {self.token}")


def requeue_task_of_worker(client: ClearMLClient, worker_id: str) -> str | None:
    """Stop the task ``worker_id`` runs and enqueue it again on its queue; returns its id (None when
    the worker runs nothing)."""
    workers = client.call("workers.get_all")["workers"]
    worker = next((w for w in workers if w.get("id") == worker_id), None)
    task_id = ((worker or {}).get("task") or {}).get("id")
    if not task_id:
        return None
    task = client.call("tasks.get_by_id", task=task_id)["task"]
    queue = (task.get("execution") or {}).get("queue")
    if not queue:
        queues = (worker or {}).get("queues") or []
        queue = queues[0].get("id") if queues else None
    client.call("tasks.stop", task=task_id, force=True, status_reason=REASON, status_message=REASON)
    if queue:
        client.call("tasks.enqueue", task=task_id, queue=queue, force=True, status_reason=REASON)
    return task_id


def main() -> int:
    """Poll for the notice; on one, re-enqueue the worker's task and exit."""
    worker_id = os.environ["CLEARML_WORKER_ID"]
    while True:
        try:
            notice = interruption_notice()
        except (OSError, ValueError) as exc:
            print(f"spot watch: metadata service: {exc}", file=sys.stderr)
            notice = None
        if notice is not None:
            break
        time.sleep(POLL_S)
    print(f"spot watch: interruption notice {notice}", file=sys.stderr)
    client = ClearMLClient(
        os.environ["CLEARML_API_HOST"],
        os.environ["CLEARML_API_ACCESS_KEY"],
        os.environ["CLEARML_API_SECRET_KEY"],
    )
    task_id = requeue_task_of_worker(client, worker_id)
    print(f"spot watch: task {task_id or '(none)'} of {worker_id} stopped and re-enqueued", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
