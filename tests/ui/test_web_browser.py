"""The web UI in a real Chromium (Debian's chromium + chromedriver, driven by Selenium).

Logs in through the form reached from the link the SDK printed, sees the mAP50-95 chart's points
and the console, clones the task, edits a hyperparameter, enqueues the clone; a page without the
cookie is the login form and a forged POST without the CSRF token is refused. Screenshots go to
``runs/ui-screenshots`` (look at them after a failure).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.fixtures.browser import browser_login, wait_for
from tests.fixtures.clearml import ClearMLServer
from tests.ui.conftest import ReportedTask


@pytest.mark.slow  # Chromium and its driver: ~15 s
def test_login_chart_console_clone_edit_enqueue(
    chromium,
    clearml_server: ClearMLServer,
    reported_task: ReportedTask,
    screenshots_dir: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    driver = chromium
    # Without the cookie, the SDK's link lands on the login form, which then opens the link.
    driver.get(reported_task.page)
    wait_for(driver, ec.presence_of_element_located((By.NAME, "access_key")), "no login form")
    driver.save_screenshot(str(screenshots_dir / "01-login.png"))
    browser_login(driver, clearml_server)
    wait_for(
        driver, lambda d: "round 3: mAP50-95 0.300" in d.find_element(By.ID, "console").text, "no console"
    )
    assert urllib.parse.urlsplit(driver.current_url).path.endswith(
        f"/tasks/{reported_task.task_id}/output/log"
    )
    assert clearml_server.secret_key not in driver.page_source
    driver.save_screenshot(str(screenshots_dir / "02-console.png"))

    # Scalars: one chart per metric, one point per round on global/map50_95.
    driver.find_element(By.LINK_TEXT, "Scalars").click()
    wait_for(
        driver,
        ec.presence_of_element_located((By.CSS_SELECTOR, '.chart[data-metric="global"] .main-svg')),
        "no chart",
    )
    traces = driver.execute_script(
        "const c = document.querySelector('.chart[data-metric=\"global\"]');"
        "return c.data.map(t => [t.name, t.x, t.y, t.yaxis || 'y']);"
    )
    by_name = {name: (x, y) for name, x, y, _ in traces}
    # The loss (~10) is on its own right-hand axis, so the mAP lines (< 1) are not flattened to 0.
    axes = {name: axis for name, _, _, axis in traces}
    assert axes == {"map50": "y2", "map50_95": "y2", "train_loss": "y"}
    assert by_name["map50_95"][0] == [1, 2, 3]
    assert by_name["map50_95"][1] == pytest.approx([0.1, 0.2, 0.3])
    # The key metric's chart comes first ("bytes" sorts before "global" by name); bytes are in MB,
    # and the flat bytes series gets distinct, unclipped y tick labels.
    order = driver.execute_script(
        "return [...document.querySelectorAll('.chart')].map(c => c.dataset.metric);"
    )
    assert order == ["global", "bytes"]
    wait_for(
        driver,
        ec.presence_of_element_located((By.CSS_SELECTOR, '.chart[data-metric="bytes"] .ytick')),
        "no ticks",
    )
    ticks = driver.execute_script(
        "const c = document.querySelector('.chart[data-metric=\"bytes\"]');"
        "const box = c.getBoundingClientRect();"
        "return {y: c.data[0].y, title: c.layout.yaxis.title.text,"
        " labels: [...c.querySelectorAll('.ytick text')]"
        "   .map(t => [t.textContent, t.getBoundingClientRect().left - box.left])};"
    )
    assert ticks["title"] == "MB" and ticks["y"] == pytest.approx([86.296431] * 3)
    labels = [text for text, _ in ticks["labels"]]
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    assert all(left >= 0 for _, left in ticks["labels"]), ticks["labels"]  # not cut off on the left
    assert all(sum(ch.isdigit() for ch in text) <= 4 for text in labels), labels  # not "86.29643M"
    summary = driver.find_element(By.ID, "scalar-summary").text
    assert "86.30 MB" in summary and "0.3000" in summary
    driver.save_screenshot(str(screenshots_dir / "03-scalars.png"))

    # Plots: the SDK's scatter, drawn by the wheel's plotly.js.
    driver.find_element(By.LINK_TEXT, "Plots").click()
    wait_for(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".plotly-plot .main-svg")), "no plot")
    driver.save_screenshot(str(screenshots_dir / "04-plots.png"))

    # Debug samples: the image comes from the file server through the logged-in /files/ proxy.
    driver.find_element(By.LINK_TEXT, "Debug samples").click()
    wait_for(
        driver,
        lambda d: d.execute_script(
            "const i = document.querySelector('.images img'); return i && i.naturalWidth;"
        ),
        "no debug image",
    )

    # Clone -> the Draft's configuration; edit a hyperparameter; enqueue it.
    for queue in ("browser-queue", "aaa-browser-other"):  # the other sorts first in the queue list
        httpx.post(
            f"{clearml_server.api_host}/queues.create",
            json={"name": queue},
            auth=(clearml_server.access_key, clearml_server.secret_key),
        )
    clone_name = driver.find_element(By.NAME, "name")
    clone_name.clear()
    clone_name.send_keys("browser clone")
    driver.find_element(By.ID, "clone").click()
    wait_for(driver, ec.presence_of_element_located((By.NAME, "hp:Args/rounds")), "no hyperparameter form")
    assert "cloned to draft" in driver.find_element(By.CSS_SELECTOR, ".notice").text
    rounds = driver.find_element(By.NAME, "hp:Args/rounds")
    rounds.clear()
    rounds.send_keys("7")
    driver.find_element(By.ID, "save-hyperparams").click()
    wait_for(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "saved"), "not saved")
    assert driver.find_element(By.NAME, "hp:Args/rounds").get_attribute("value") == "7"
    Select(driver.find_element(By.NAME, "queue")).select_by_visible_text("browser-queue")
    driver.find_element(By.ID, "enqueue").click()
    wait_for(
        driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "enqueued"), "not enqueued"
    )
    assert driver.find_element(By.CSS_SELECTOR, "h1 .status").text == "queued"
    # The queue chooser shows the task's own queue, not the first queue by name.
    assert Select(driver.find_element(By.NAME, "queue")).first_selected_option.text == "browser-queue"
    driver.save_screenshot(str(screenshots_dir / "05-clone-enqueued.png"))
    clone_id = urllib.parse.urlsplit(driver.current_url).path.split("/tasks/")[1].split("/")[0]

    # A forged request from the logged-in page without the CSRF token is refused.
    status = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/actions/tasks/{clone_id}/dequeue', {{method: 'POST', credentials: 'same-origin'}})"
        ".then(r => done(r.status));"
    )
    assert status == 403

    # The project's experiments table: the mAP column, then two rows selected and compared.
    project = urllib.parse.urlsplit(reported_task.page).path.split("/")[2]
    driver.get(f"{clearml_server.web_host}/projects/{project}/experiments")
    wait_for(driver, ec.presence_of_element_located((By.ID, "experiments")), "no table")
    assert "0.3000" in driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{reported_task.task_id}"]').text
    assert "queued" in driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{clone_id}"]').text
    for task_id in (reported_task.task_id, clone_id):
        driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{task_id}"] input[name="ids"]').click()
    driver.save_screenshot(str(screenshots_dir / "06-experiments.png"))
    driver.find_element(By.ID, "compare-selected").click()
    wait_for(
        driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".chart .main-svg")), "no compare chart"
    )
    assert "rounds" in driver.find_element(By.CSS_SELECTOR, "#param-diff tr.differs").text
    driver.save_screenshot(str(screenshots_dir / "07-compare.png"))

    # Logged out (no cookie), a page is the login form again.
    driver.delete_all_cookies()
    driver.get(f"{clearml_server.web_host}/projects/*/tasks/{clone_id}")
    wait_for(driver, ec.presence_of_element_located((By.NAME, "secret_key")), "no login form after logout")
