"""Fixtures of the web UI tests: a task reported by the real SDK, and logged-in HTTP clients."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import httpx
import pytest

from tests.fixtures.clearml import ClearMLServer, run_sdk_script

#: A task like FleetFL's federate step: per-round ``global/map50_95`` and ``bytes``, a plot, console lines.
REPORTING_TASK = r"""
import json
import numpy as np
from clearml import Task

task = Task.init(project_name="web-ui", task_name="federate-like", reuse_last_task_id=False,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
task.connect({"rounds": 3, "lr": 0.01}, name="Args")
task.connect_configuration({"imgsz": 64, "batch": 4}, name="federated")
logger = task.get_logger()
for rnd in (1, 2, 3):
    logger.report_scalar("global", "map50_95", value=0.1 * rnd, iteration=rnd)
    logger.report_scalar("global", "map50", value=0.2 * rnd, iteration=rnd)
    logger.report_scalar("global", "train_loss", value=12.0 - rnd, iteration=rnd)  # 10x the mAPs
    for variant in ("sent", "received"):  # flat and large, like FleetFL's per-round byte counts
        logger.report_scalar("bytes", variant, value=86_296_431, iteration=rnd)
    print(f"round {rnd}: mAP50-95 {0.1 * rnd:.3f}")
logger.report_scatter2d("pr_curve", "person", iteration=3, scatter=[[0, 1], [0.5, 0.8], [1, 0.2]],
                        xaxis="recall", yaxis="precision")
logger.report_text("federation finished")
logger.report_image("samples", "frame", iteration=3, image=np.full((16, 24, 3), 200, dtype=np.uint8))
task.upload_artifact("summary", {"best_round": 3, "map50_95": 0.3}, wait_on_upload=True)
logger.flush()
print(json.dumps({"id": task.id, "page": task.get_output_log_web_page()}))
task.close()
"""


@dataclass
class ReportedTask:
    """The SDK task's id and the results-page link the SDK printed."""

    task_id: str
    page: str
    sdk_output: str


@pytest.fixture(scope="session")
def reported_task(clearml_server: ClearMLServer, tmp_path_factory: pytest.TempPathFactory) -> ReportedTask:
    out = run_sdk_script(clearml_server, REPORTING_TASK, tmp_path_factory.mktemp("web-ui-task"))
    info = json.loads(out.strip().splitlines()[-1])
    return ReportedTask(info["id"], info["page"], out)


def login(server: ClearMLServer, client: httpx.Client) -> str:
    """Log ``client`` in through the form; return the session's CSRF token (read from a page)."""
    reply = client.post(
        "/login", data={"access_key": server.access_key, "secret_key": server.secret_key, "next": "/projects"}
    )
    assert reply.status_code == 303, reply.text
    page = client.get("/projects")
    assert page.status_code == 200
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


@pytest.fixture
def web(clearml_server: ClearMLServer):
    """An HTTP client of the web UI (not logged in; redirects not followed)."""
    with httpx.Client(base_url=clearml_server.web_host, follow_redirects=False, timeout=30) as client:
        yield client
