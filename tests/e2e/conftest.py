"""The one pipeline run the end-to-end tests share (package scope: agents and runs happen once).

``pipeline_run`` is what a user does: an earlier run of "fleetfl-federated" is parked on a queue
without agents; in a real Chromium the user logs in, opens its page, starts a **New run** with one
edited parameter (``rounds`` 1 -> 2) on the services queue, and the run completes on real agents
(a controller agent, a step agent, one federate server agent, two client agents, one HPO agent):
version_data -> tune (2 Optuna trials of 1 round) -> federate (2 rounds) -> evaluate_register.
``tests/e2e/test_pipeline.py`` checks every task of that run through the SDK;
``tests/e2e/test_web_ui.py`` checks it in the browser, then clones its federate task there.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from pipelines import fleetfl_pipeline as fp
from tests.fixtures.browser import browser_login, open_chromium, wait_for
from tests.fixtures.clearml import ClearMLServer, fleet_agents

TINY_CONFIG = {"imgsz": 64, "batch": 4, "nbs": 4, "model": "yolov8n.yaml", "device": "cpu"}
RUN_TIMEOUT_S = 1200
#: pytest-timeout of each test using ``pipeline_run``: the first one also waits for the shared run
#: (its setup), which took 677-900 s at load 25-30 on the shared 2 cores, past the default 900 s.
SHARED_RUN_TEST_TIMEOUT_S = 1800
EDITED_ROUNDS = 2  # the New run's one edited parameter (the parked run has 1 round)


def wait_ended(task_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """Wait until the task has ended; its final status."""
    from clearml import Task

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(Task.get_task(task_id=task_id).get_status())
        if status in ("completed", "published", "failed", "stopped", "closed"):
            return status
        time.sleep(3)
    raise AssertionError(f"task {task_id} did not end within {timeout_s:.0f} s")


def reported_iterations(task_id: str, title: str, series: str) -> list[int]:
    """The iterations at which the task reported scalar ``title``/``series``."""
    from clearml import Task

    scalars = Task.get_task(task_id=task_id).get_reported_scalars()
    return [int(x) for x in scalars.get(title, {}).get(series, {}).get("x", [])]


def step_outputs(run_id: str) -> dict:
    """What ``fp.run_pipeline`` returns, read from the steps of a run a controller agent ran."""
    from clearml import Task

    steps = {t.name: t for t in Task.get_tasks(task_filter={"parent": run_id})}
    outputs: dict = {"pipeline_id": run_id}
    for step, artifact in fp.STEP_OUTPUTS.items():
        outputs[artifact] = fp.read_step_output(steps[step], artifact)
        outputs[f"{step}_task_id"] = steps[step].id
    return outputs


@pytest.fixture(scope="package")
def e2e_queues(clearml_server: ClearMLServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Unique queues, with agents on all but ``parked`` (started once for the whole package)."""
    from queues.definitions import ensure_queue

    suffix = uuid.uuid4().hex[:6]
    names = ("services", "steps", "server", "clients", "hpo", "parked")
    queues = {name: f"e2e-{name}-{suffix}" for name in names}
    for queue in queues.values():
        ensure_queue(queue)
    agents = {
        queues["services"]: 1,
        queues["steps"]: 1,
        queues["server"]: 1,
        queues["clients"]: 2,
        queues["hpo"]: 1,
    }
    with fleet_agents(agents, tmp_path_factory.mktemp("e2e-agents")):
        yield queues


@pytest.fixture(scope="package")
def pipeline_run(clearml_server: ClearMLServer, e2e_queues: dict) -> dict:
    """The one tiny pipeline run, started from the web UI's New run (see the module docstring).

    16 synthetic images at 64 px, 2 clients, 2 HPO trials of 1 round, a final federated run of
    ``EDITED_ROUNDS`` rounds. Returns the run's step outputs, its project and queues, the parked
    controller's id, what the New run form showed, and the run's final status.
    """
    q = e2e_queues
    project = f"fleetfl-test/e2e-{uuid.uuid4().hex[:6]}"
    parked = fp.enqueue_pipeline(
        {
            "source": "synthetic:16",
            "clients": 2,
            "data_imgsz": 64,
            "rounds": 1,
            "hpo_budget": 2,
            "hpo_rounds": 1,
            "config": json.dumps(TINY_CONFIG),
            "search_space": json.dumps(
                {"lr0": {"min": 0.005, "max": 0.02, "log": True}, "mosaic": {"values": [0.0, 1.0]}}
            ),
            "project": project,
            "client_wait_s": 240,
            "server_queue": q["server"],
            "client_queue": q["clients"],
            "hpo_queue": q["hpo"],
            "step_queue": q["steps"],
        },
        queue=q["parked"],
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with open_chromium() as driver:
        driver.get(f"{clearml_server.web_host}/pipelines/*/experiments/{parked}")
        browser_login(driver, clearml_server)
        rounds = wait_for(driver, lambda d: d.find_elements(By.NAME, "arg:rounds"), "no New run form")[0]
        prefilled_rounds = rounds.get_attribute("value")
        rounds.clear()
        rounds.send_keys(str(EDITED_ROUNDS))
        Select(driver.find_element(By.NAME, "queue")).select_by_visible_text(q["services"])
        driver.find_element(By.ID, "start-run").click()
        wait_for(driver, lambda d: "new run enqueued" in d.page_source, "New run not enqueued")
        run_id = urllib.parse.urlsplit(driver.current_url).path.rsplit("/", 1)[1]
    status = wait_ended(run_id)
    run = {"run_id": run_id, "status": status, "parked": parked, "prefilled_rounds": prefilled_rounds}
    run.update(project=project, queues=q)
    if status == "completed":
        run.update(step_outputs(run_id))
    return run


@pytest.fixture
def completed_run(pipeline_run: dict) -> dict:
    """``pipeline_run``, which must have completed (its status message otherwise)."""
    from clearml import Task

    run_id = pipeline_run["run_id"]
    assert pipeline_run["status"] == "completed", Task.get_task(task_id=run_id).data.status_message
    return pipeline_run
