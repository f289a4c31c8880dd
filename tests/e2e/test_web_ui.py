"""The web UI end to end, on the real server with real agents (issue 11, section 4).

The run is the package's shared ``pipeline_run`` (tests/e2e/conftest.py): a New run of the pipeline
"fleetfl-federated" started in a real Chromium from a parked controller's page with one edited
parameter (``rounds``). Here, in the browser: its DAG turned completed; the link the SDK builds for
the federate server task shows one mAP50-95 point per round and the console; cloning that task,
editing ``federated/rounds`` and enqueuing it on the server queue runs the edited number of rounds
(with new client tasks); the registry shows the candidate model's tag; the parked controller leaves
its queue through Dequeue. Screenshots go to ``runs/ui-screenshots/e2e-*``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.conftest import EDITED_ROUNDS, SHARED_RUN_TEST_TIMEOUT_S, reported_iterations, wait_ended
from tests.fixtures.browser import browser_login, wait_for
from tests.fixtures.clearml import ClearMLServer

CLONE_ROUNDS = 1  # the clone's edited federated/rounds (its source ran EDITED_ROUNDS)


def _chart_x(driver, metric: str, variant: str) -> list:
    script = (
        "const c = document.querySelector(`.chart[data-metric='${arguments[0]}']`);"
        "if (!c || !c.data) return null;"
        "const t = c.data.find(t => t.name === arguments[1]); return t ? Array.from(t.x) : null;"
    )
    return wait_for(
        driver, lambda d: d.execute_script(script, metric, variant), f"no {metric}/{variant} chart"
    )


@pytest.mark.slow  # shares the package's pipeline run; adds one cloned federate run of 1 round
@pytest.mark.timeout(SHARED_RUN_TEST_TIMEOUT_S)
def test_new_run_clone_edit_enqueue_in_the_browser(
    chromium, clearml_server: ClearMLServer, completed_run: dict, screenshots_dir: Path
) -> None:
    from clearml import Model, Task
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from components.common import read_output

    run_id, parked, queues = completed_run["run_id"], completed_run["parked"], completed_run["queues"]
    # The New run form was prefilled from the parked run, and started a run of its own.
    assert completed_run["prefilled_rounds"] == "1" and run_id != parked
    driver = chromium
    web = clearml_server.web_host
    driver.get(f"{web}/pipelines/*/experiments/{run_id}")
    browser_login(driver, clearml_server)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".dag-step"), "no DAG")
    steps = {
        el.get_attribute("data-step"): el.find_element(By.CSS_SELECTOR, ".status").text
        for el in driver.find_elements(By.CSS_SELECTOR, ".dag-step")
    }
    driver.save_screenshot(str(screenshots_dir / "e2e-1-pipeline-dag.png"))
    assert steps and set(steps.values()) == {"completed"}, steps
    assert {"version_data", "tune", "federate", "evaluate_register"} <= set(steps)

    # The federate server task, through the link the SDK builds for it.
    source = completed_run["federated"]["server_task_id"]
    link = Task.get_task(task_id=source).get_output_log_web_page()
    assert link.startswith(web)
    driver.get(link)
    wait_for(driver, lambda d: "round" in d.find_element(By.ID, "console").text, "empty console")
    driver.find_element(By.LINK_TEXT, "Scalars").click()
    every_round = list(range(1, EDITED_ROUNDS + 1))
    assert _chart_x(driver, "global", "map50_95") == every_round  # one point per (edited) round
    driver.save_screenshot(str(screenshots_dir / "e2e-2-federate-scalars.png"))

    # Clone it, edit federated/rounds, enqueue on the server queue: it runs the edited rounds.
    driver.find_element(By.ID, "clone").click()
    field = wait_for(driver, lambda d: d.find_elements(By.NAME, "hp:federated/rounds"), "no rounds field")[0]
    field.clear()
    field.send_keys(str(CLONE_ROUNDS))
    driver.find_element(By.ID, "save-hyperparams").click()
    wait_for(driver, lambda d: "saved" in d.page_source, "hyperparameters not saved")
    Select(driver.find_element(By.NAME, "queue")).select_by_visible_text(queues["server"])
    driver.find_element(By.ID, "enqueue").click()
    wait_for(driver, lambda d: "enqueued" in d.page_source, "clone not enqueued")
    clone_id = urllib.parse.urlsplit(driver.current_url).path.split("/tasks/")[1].split("/")[0]
    assert clone_id != source
    assert wait_ended(clone_id) == "completed", Task.get_task(task_id=clone_id).data.status_message
    driver.get(f"{web}/projects/*/tasks/{clone_id}/info-output/metrics/scalar")
    clone_rounds = list(range(1, CLONE_ROUNDS + 1))
    assert _chart_x(driver, "global", "map50_95") == clone_rounds
    out = read_output(clone_id)
    assert [r["round"] for r in out["rounds"]] == clone_rounds
    assert reported_iterations(clone_id, "global", "map50_95") == clone_rounds
    assert set(out["client_task_ids"]).isdisjoint(completed_run["federated"]["client_task_ids"])

    # The registry shows the model the run registered under each tag it now has (registered as
    # `candidate`, test_pipeline.py; its demo-story test may since have had the monitor promote and
    # retire it: the page must show whatever the registry holds).
    model_id = completed_run["candidate"]["model_id"]
    tags = Model(model_id=model_id).tags or []
    assert set(tags) & {"candidate", "production", "retired", "rolled-back"}, tags
    for tag in tags:
        driver.get(f"{web}/models?tag={tag}")
        assert f"/models/{model_id}" in driver.page_source, tag
    driver.save_screenshot(str(screenshots_dir / "e2e-3-models.png"))
    # The parked controller leaves its queue through the UI's Dequeue.
    driver.get(f"{web}/projects/*/tasks/{parked}")
    driver.find_element(By.ID, "dequeue").click()
    wait_for(driver, lambda d: "dequeued" in d.page_source, "not dequeued")
    assert str(Task.get_task(task_id=parked).get_status()) != "queued"
