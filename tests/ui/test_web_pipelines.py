"""A pipeline run's page: the link PipelineController prints, its DAG, and New run (clone, edit Args,
enqueue). The controller is a real clearml PipelineController run locally with function steps."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.fixtures.clearml import ClearMLServer, run_sdk_script
from tests.ui.conftest import login

PIPELINE = r"""
from clearml import PipelineController

def make_data(n: int = 3):
    return list(range(int(n)))

def total(data):
    return sum(data)

pipe = PipelineController(name="web-ui-pipe", project="web-ui", version="0.1", pool_frequency=0.02,
                          add_pipeline_tags=False)
pipe.add_parameter("n", 3)
pipe.add_function_step(name="make_data", function=make_data, function_kwargs={"n": "${pipeline.n}"},
                       function_return=["data"], cache_executed_step=False)
pipe.add_function_step(name="total", function=total, function_kwargs={"data": "${make_data.data}"},
                       function_return=["result"], parents=["make_data"], cache_executed_step=False)
pipe.start_locally(run_pipeline_steps_locally=True)
print("PIPELINE_ID", pipe.id)
"""


@pytest.mark.slow  # a local pipeline with two steps: ~15 s
def test_pipeline_page_dag_and_new_run(
    clearml_server: ClearMLServer, web: httpx.Client, tmp_path: Path
) -> None:
    out = run_sdk_script(clearml_server, PIPELINE, tmp_path)
    pipeline_id = re.search(r"PIPELINE_ID (\w+)", out).group(1)
    printed = re.search(r"ClearML pipeline page: (\S+)", out).group(1)
    assert printed.startswith(clearml_server.web_host) and printed.endswith(f"/experiments/{pipeline_id}")
    token = login(clearml_server, web)
    page = web.get(urllib.parse.urlsplit(printed).path)
    assert page.status_code == 200, page.text[-2000:]
    steps = dict(re.findall(r'data-step="(\w+)">.*?<span class="status (\w+)"', page.text, re.S))
    assert steps == {"make_data": "completed", "total": "completed"}
    assert 'name="arg:n" value="3"' in page.text
    runs = web.get("/pipelines").text
    assert pipeline_id[:8] in runs
    queue = httpx.post(
        f"{clearml_server.api_host}/queues.create",
        json={"name": "web-ui-services"},
        auth=(clearml_server.access_key, clearml_server.secret_key),
    ).json()["data"]["id"]
    started = web.post(
        f"/actions/pipelines/{pipeline_id}/run", data={"csrf_token": token, "queue": queue, "arg:n": "5"}
    )
    assert started.status_code == 303
    new_run = started.headers["location"].split("?")[0]
    new_id = new_run.rsplit("/", 1)[1]
    assert new_id != pipeline_id
    task = httpx.post(
        f"{clearml_server.api_host}/tasks.get_by_id",
        json={"task": new_id},
        auth=(clearml_server.access_key, clearml_server.secret_key),
    ).json()["data"]["task"]
    assert task["status"] == "queued"
    assert task["hyperparams"]["Args"]["n"]["value"] == "5"
    assert task["execution"]["queue"] == queue
    assert web.get(new_run).status_code == 200
