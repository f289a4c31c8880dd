"""The web UI's other screens over HTTP: HPO leaderboard, model registry, queues and workers, bulk
archive. Objects are made through the server's REST API (what the SDK and agents call)."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import httpx
import pytest

from tests.fixtures.clearml import ClearMLServer, run_sdk_script
from tests.ui.conftest import login


def _api(server: ClearMLServer, name: str, body: dict[str, Any], worker: str | None = None) -> dict[str, Any]:
    headers = {"X-ClearML-Worker": worker} if worker else {}
    reply = httpx.post(
        f"{server.api_host}/{name}", json=body, auth=(server.access_key, server.secret_key), headers=headers
    ).json()
    assert reply["meta"]["result_code"] == 200, reply["meta"]
    return reply["data"]


def _report(server: ClearMLServer, task: str, values: list[float]) -> None:
    lines = [
        json.dumps(
            {"type": "training_stats_scalar", "task": task, "metric": "global", "variant": "map50_95",
             "value": v, "iter": i + 1, "timestamp": 1_700_000_000_000 + i}
        )
        for i, v in enumerate(values)
    ]  # fmt: skip
    reply = httpx.post(
        f"{server.api_host}/events.add_batch",
        content="\n".join(lines),
        headers={"Content-Type": "application/json-lines"},
        auth=(server.access_key, server.secret_key),
    ).json()
    assert reply["data"]["added"] == len(values)


def test_hpo_trials_leaderboard_sorted_by_objective(clearml_server: ClearMLServer, web: httpx.Client) -> None:
    tuner = _api(clearml_server, "tasks.create", {"name": "tune", "type": "optimizer"})["id"]
    trials = {}
    for lr, curve in (("0.1", [0.1, 0.2]), ("0.01", [0.2, 0.4]), ("0.001", [0.05, 0.05])):
        trial = _api(
            clearml_server,
            "tasks.create",
            {"name": f"trial lr={lr}", "type": "training", "parent": tuner,
             "hyperparams": {"Args": {"lr": {"section": "Args", "name": "lr", "value": lr}}}},
        )["id"]  # fmt: skip
        _report(clearml_server, trial, curve)
        trials[lr] = trial
    login(clearml_server, web)
    board = web.get(f"/projects/*/tasks/{tuner}/trials").text
    order = re.findall(r"trial lr=([\d.]+)</a>", board)
    assert order == ["0.01", "0.1", "0.001"]  # best last global/map50_95 first
    assert "0.4000" in board and "<th>Args/lr</th>" in board


def test_model_registry_tags_and_publish(clearml_server: ClearMLServer, web: httpx.Client) -> None:
    model = _api(
        clearml_server,
        "models.create",
        {"name": "fleet-yolo", "uri": "file:///tmp/w.pt", "framework": "PyTorch", "tags": ["candidate"]},
    )["id"]
    _api(
        clearml_server,
        "models.add_or_update_metadata",
        {"model": model, "metadata": [{"key": "map50_95", "type": "float", "value": "0.42"}]},
    )
    token = login(clearml_server, web)
    listed = web.get("/models", params={"tag": "candidate"}).text
    assert "fleet-yolo" in listed and "map50_95=0.42" in listed
    here = f"/models/{model}"
    web.post(f"/actions/models/{model}/tags", data={"csrf_token": token, "next": here, "tags": "production"})
    web.post(f"/actions/models/{model}/publish", data={"csrf_token": token, "next": here})
    page = web.get(here).text
    assert '<span class="tag">production</span>' in page and "<td>yes</td>" in page
    assert "fleet-yolo" not in web.get("/models", params={"tag": "candidate"}).text


def test_queue_order_workers_and_bulk_archive(clearml_server: ClearMLServer, web: httpx.Client) -> None:
    queue = _api(clearml_server, "queues.create", {"name": "screens-queue"})["id"]
    first, second = (
        _api(clearml_server, "tasks.create", {"name": f"queued-{i}", "type": "training"})["id"]
        for i in (1, 2)
    )
    for task in (first, second):
        _api(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})
    _api(
        clearml_server, "workers.register", {"worker": "screens-worker", "queues": [queue]}, "screens-worker"
    )
    token = login(clearml_server, web)
    section = web.get("/queues").text.split("screens-queue", 1)[1]
    assert section.index("queued-1") < section.index("queued-2")
    web.post(f"/actions/queues/{queue}/down", data={"csrf_token": token, "task": first})
    section = web.get("/queues").text.split("screens-queue", 1)[1]
    assert section.index("queued-2") < section.index("queued-1")
    workers = web.get("/workers").text
    assert "screens-worker" in workers and "screens-queue" in workers
    here = "/projects/*/experiments?name=queued-"
    done = web.post(
        "/actions/tasks/bulk",
        data={"csrf_token": token, "next": here, "what": "archive", "ids": [first, second]},
    )
    assert "2+experiment" in done.headers["location"]
    assert "queued-1" not in web.get("/projects/*/experiments", params={"name": "queued-"}).text
    archived = web.get("/projects/*/experiments", params={"name": "queued-", "archived": "1"}).text
    assert "queued-1" in archived and "queued-2" in archived


DATASETS = r"""
import json, pathlib
from clearml import Dataset

folder = pathlib.Path("shard"); folder.mkdir(exist_ok=True)
(folder / "a.txt").write_text("first")
v1 = Dataset.create(dataset_name="web-ui-shard", dataset_project="web-ui-data", dataset_version="1.0.0")
v1.add_files(str(folder)); v1.upload(); v1.finalize()
(folder / "b.txt").write_text("second")
v2 = Dataset.create(dataset_name="web-ui-shard", dataset_project="web-ui-data", dataset_version="1.1.0",
                    parent_datasets=[v1.id])
v2.add_files(str(folder)); v2.upload(); v2.finalize()
print(json.dumps({"v1": v1.id, "v2": v2.id}))
"""


@pytest.mark.slow  # an SDK process uploading two dataset versions: ~7-17 s
def test_dataset_versions_and_lineage(clearml_server: ClearMLServer, web: httpx.Client, tmp_path) -> None:
    out = run_sdk_script(clearml_server, DATASETS, tmp_path)
    ids = json.loads(out.strip().splitlines()[-1])
    login(clearml_server, web)
    listed = web.get("/datasets").text
    assert ids["v1"] in listed and ids["v2"] in listed and "1.1.0" in listed
    page = web.get(f"/datasets/simple/*/experiments/{ids['v2']}")
    assert page.status_code == 200
    lineage = page.text.split('id="lineage"', 1)[1]
    assert lineage.index("1.1.0") < lineage.index("1.0.0")  # this version first, then its parent
    assert f'/datasets/simple/*/experiments/{ids["v1"]}"><code>{ids["v1"][:8]}' in lineage
    console = web.get(f"/data/tasks/{ids['v2']}/console").json()["lines"]
    printed = [m for line in console for m in re.findall(r"ClearML dataset page: (\S+)", line["msg"])]
    assert printed, console  # the link the SDK logs for a dataset version opens its page
    assert web.get(urllib.parse.urlsplit(printed[-1]).path).status_code == 200


def test_projects_page_counts_each_projects_experiments(
    clearml_server: ClearMLServer, web: httpx.Client
) -> None:
    project = _api(clearml_server, "projects.create", {"name": "web-ui-counted", "description": ""})["id"]
    tasks = [
        _api(
            clearml_server, "tasks.create", {"name": f"counted-{n}", "type": "training", "project": project}
        )["id"]
        for n in range(3)
    ]
    _api(clearml_server, "tasks.started", {"task": tasks[0]})
    _api(clearml_server, "tasks.archive", {"tasks": [tasks[2]]})  # archived: not in the table, not counted
    login(clearml_server, web)
    page = web.get("/projects").text
    row = re.search(rf'<tr data-id="{project}">(.*?)</tr>', page, re.S)
    assert row, page[-2000:]
    assert re.findall(r'<td class="num">(\d+)</td>', row.group(1)) == ["2", "1"]  # experiments, running
    everything = re.search(r'<tr id="all-projects">(.*?)</tr>', page, re.S).group(1)
    shown = web.get("/projects/*/experiments", params={"size": 500}).text.count('<tr data-id="')
    total = int(re.findall(r'<td class="num">(\d+)</td>', everything)[0])
    assert total >= 2 and (total == shown or shown == 500)
