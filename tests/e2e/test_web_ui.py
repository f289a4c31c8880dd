"""The web UI end to end, on the real server with real agents (issue 11, section 4).

In a real Chromium: log in, start a New run of the pipeline "fleetfl-federated" from a controller's
page with one edited parameter (``rounds``), see its DAG turn completed; open the link the SDK
builds for the federate server task and see one mAP50-95 point per round and the console; clone that
task, edit ``federated/rounds``, enqueue it on the server queue and see it complete with the edited
number of rounds; see the candidate model's tags in the registry. Screenshots go to
``runs/ui-screenshots/e2e-*``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from pipelines import fleetfl_pipeline as fp
from tests.fixtures.browser import browser_login, wait_for
from tests.fixtures.clearml import ClearMLServer, fleet_agents

TINY_CONFIG = {"imgsz": 64, "batch": 4, "nbs": 4, "model": "yolov8n.yaml", "device": "cpu"}
RUN_TIMEOUT_S = 1200


def _wait_ended(task_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    from clearml import Task

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(Task.get_task(task_id=task_id).get_status())
        if status in ("completed", "published", "failed", "stopped", "closed"):
            return status
        time.sleep(3)
    raise AssertionError(f"task {task_id} did not end within {timeout_s:.0f} s")


def _chart_x(driver, metric: str, variant: str) -> list:
    script = (
        "const c = document.querySelector(`.chart[data-metric='${arguments[0]}']`);"
        "if (!c || !c.data) return null;"
        "const t = c.data.find(t => t.name === arguments[1]); return t ? Array.from(t.x) : null;"
    )
    return wait_for(
        driver, lambda d: d.execute_script(script, metric, variant), f"no {metric}/{variant} chart"
    )


@pytest.mark.slow  # one tiny pipeline (2 rounds) and one cloned federate run on 5 agents
def test_new_run_clone_edit_enqueue_in_the_browser(
    chromium, clearml_server: ClearMLServer, tmp_path: Path, screenshots_dir: Path
) -> None:
    from clearml import Model, Task
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from queues.definitions import ensure_queue

    suffix = uuid.uuid4().hex[:6]
    q = {name: f"ui-{name}-{suffix}" for name in ("services", "steps", "server", "clients", "hpo", "parked")}
    for name in q.values():
        ensure_queue(name)
    project = f"fleetfl-test/web-ui-{suffix}"
    # A controller parked on a queue without agents: what a user's earlier run looks like in the UI.
    parked = fp.enqueue_pipeline(
        {
            "source": "synthetic:16",
            "clients": 2,
            "data_imgsz": 64,
            "rounds": 1,
            "hpo_budget": 0,
            "config": json.dumps(TINY_CONFIG),
            "project": project,
            "client_wait_s": 240,
            "server_queue": q["server"],
            "client_queue": q["clients"],
            "hpo_queue": q["hpo"],
            "step_queue": q["steps"],
        },
        queue=q["parked"],
    )
    driver = chromium
    web = clearml_server.web_host
    agents = {q["services"]: 1, q["steps"]: 1, q["server"]: 1, q["clients"]: 2}
    with fleet_agents(agents, tmp_path / "agents"):
        driver.get(f"{web}/pipelines/*/experiments/{parked}")
        browser_login(driver, clearml_server)
        rounds = wait_for(driver, lambda d: d.find_elements(By.NAME, "arg:rounds"), "no New run form")[0]
        assert rounds.get_attribute("value") == "1"
        rounds.clear()
        rounds.send_keys("2")
        Select(driver.find_element(By.NAME, "queue")).select_by_visible_text(q["services"])
        driver.find_element(By.ID, "start-run").click()
        wait_for(driver, lambda d: "new run enqueued" in d.page_source, "New run not enqueued")
        run_id = urllib.parse.urlsplit(driver.current_url).path.rsplit("/", 1)[1]
        assert run_id != parked
        assert _wait_ended(run_id) == "completed", Task.get_task(task_id=run_id).data.status_message
        driver.refresh()
        steps = {
            el.get_attribute("data-step"): el.find_element(By.CSS_SELECTOR, ".status").text
            for el in driver.find_elements(By.CSS_SELECTOR, ".dag-step")
        }
        driver.save_screenshot(str(screenshots_dir / "e2e-1-pipeline-dag.png"))
        assert steps and set(steps.values()) == {"completed"}, steps
        assert {"version_data", "federate", "evaluate_register"} <= set(steps)

        # The federate server task, through the link the SDK builds for it.
        step_tasks = {t.name: t for t in Task.get_tasks(task_filter={"parent": run_id})}
        server_id = step_tasks["federate"].artifacts["federated"].get()["server_task_id"]
        link = Task.get_task(task_id=server_id).get_output_log_web_page()
        assert link.startswith(web)
        driver.get(link)
        wait_for(driver, lambda d: "round" in d.find_element(By.ID, "console").text, "empty console")
        driver.find_element(By.LINK_TEXT, "Scalars").click()
        assert _chart_x(driver, "global", "map50_95") == [1, 2]  # one point per (edited) round
        driver.save_screenshot(str(screenshots_dir / "e2e-2-federate-scalars.png"))

        # Clone it, edit federated/rounds, enqueue on the server queue: it runs the edited rounds.
        driver.find_element(By.ID, "clone").click()
        field = wait_for(
            driver, lambda d: d.find_elements(By.NAME, "hp:federated/rounds"), "no rounds field"
        )[0]
        field.clear()
        field.send_keys("1")
        driver.find_element(By.ID, "save-hyperparams").click()
        wait_for(driver, lambda d: "saved" in d.page_source, "hyperparameters not saved")
        Select(driver.find_element(By.NAME, "queue")).select_by_visible_text(q["server"])
        driver.find_element(By.ID, "enqueue").click()
        wait_for(driver, lambda d: "enqueued" in d.page_source, "clone not enqueued")
        clone_id = urllib.parse.urlsplit(driver.current_url).path.split("/tasks/")[1].split("/")[0]
        assert _wait_ended(clone_id) == "completed"
        driver.get(f"{web}/projects/*/tasks/{clone_id}/info-output/metrics/scalar")
        assert _chart_x(driver, "global", "map50_95") == [1]

    # The registry shows the candidate the run registered, with its tag.
    model_id = step_tasks["evaluate_register"].artifacts["candidate"].get()["model_id"]
    assert "candidate" in (Model(model_id=model_id).tags or [])
    driver.get(f"{web}/models?tag=candidate")
    assert f"/models/{model_id}" in driver.page_source
    driver.save_screenshot(str(screenshots_dir / "e2e-3-models.png"))
    # The parked controller leaves its queue through the UI's Dequeue.
    driver.get(f"{web}/projects/*/tasks/{parked}")
    driver.find_element(By.ID, "dequeue").click()
    wait_for(driver, lambda d: "dequeued" in d.page_source, "not dequeued")
