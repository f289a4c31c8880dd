"""The real ClearML SDK reports scalars, plots, text, single values and debug images to the
embedded server, then reads them back the ways the SDK, pipelines and HPO do."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

REPORTER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from clearml import Task

    task = Task.init(project_name=sys.argv[1], task_name="events-sdk", auto_connect_frameworks=False,
                     auto_resource_monitoring=False)
    logger = task.get_logger()
    for i in range(30):
        logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
        logger.report_scalar("mAP", "val", value=0.01 * i, iteration=i)
    logger.report_single_value("best_mAP", 0.29)
    logger.report_scatter2d("curve", "pr", scatter=[[0, 1], [1, 0.5]], iteration=3)
    logger.report_image("samples", "frame", iteration=2, image=np.zeros((8, 8, 3), dtype=np.uint8))
    logger.report_text("console line from the test")
    print("TASK", task.id)
    task.close()
    """
)


@pytest.mark.slow
def test_sdk_reports_and_reads_back_events(clearml_server, tmp_path: Path) -> None:
    from clearml import Task

    project = f"fleetfl-test/events-{uuid.uuid4().hex[:6]}"
    script = tmp_path / "report.py"
    script.write_text(REPORTER)
    # the server's clearml.conf sets sdk.development.report_use_subprocess: false (avoids a 300 s hang)
    env = {**clearml_server.env, "CLEARML_CONFIG_FILE": str(clearml_server.config_file)}
    run = subprocess.run(
        [sys.executable, str(script), project],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    task_id = next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("TASK "))

    task = Task.get_task(task_id=task_id)
    scalars = task.get_reported_scalars()
    assert scalars["loss"]["train"]["x"] == list(range(30))
    assert scalars["loss"]["train"]["y"][-1] == pytest.approx(1 / 30)
    assert "Summary" not in scalars
    everything = task.get_all_reported_scalars()
    assert everything["mAP"]["val"]["y"][-1] == pytest.approx(0.29)

    last = task.get_last_scalar_metrics()
    assert last["mAP"]["val"]["last"] == pytest.approx(0.29)
    assert last["mAP"]["val"]["min"] == pytest.approx(0.0)
    assert last["loss"]["train"]["max"] == pytest.approx(1.0)
    assert task.get_reported_single_value("best_mAP") == pytest.approx(0.29)
    assert task.data.last_iteration >= 29

    plots = task.get_reported_plots()
    assert any(p["metric"] == "curve" and json.loads(p["plot_str"])["data"] for p in plots)
    assert any("console line from the test" in line for line in task.get_reported_console_output(50))

    samples = task.get_debug_samples("samples", "frame")
    assert samples and samples[0]["url"].startswith(clearml_server.files_host)
    from clearml import StorageManager

    assert Path(StorageManager.get_local_copy(samples[0]["url"], force_download=True)).stat().st_size > 0

    # HyperParameterOptimizer's objective: last_metrics (by md5 keys) and the histogram's last point
    from clearml.automation.optimization import Objective

    objective = Objective("mAP", "val")
    assert objective.get_objective(task_id) == pytest.approx(0.29)
    iteration, value = objective.get_current_raw_objective(task)
    assert (iteration, value) == (29, pytest.approx(0.29))
