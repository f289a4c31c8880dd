"""The federate component on the embedded ClearML server with real clearml-agents.

* bad arguments are refused before any task is created or enqueued (fast);
* a server whose clients never come fails with a clear error and its client tasks are stopped;
* a client task killed after round 1 is survived when ``min_clients`` allows (round 2 ends with the
  other client).

The happy path (server task, client tasks, per-round scalars, checkpoints, registered model) and
clone-edit-enqueue of the server task run on the pipeline's federate task in
``tests/e2e/test_pipeline.py``.

Queues get unique names so that other tests' agents never pick these tasks up.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import federate as fed
from components.common import ComponentError

TINY = {
    "rounds": 1,
    "imgsz": 64,
    "batch": 4,
    "nbs": 4,
    "model": "yolov8n.yaml",
    "device": "cpu",
    "round_timeout": 300.0,
}


def _task_count(project: str) -> int:
    from clearml import Task

    return len(Task.get_tasks(project_name=project)) if project else 0


# ---------------------------------------------------------------------- fast: refused before enqueueing
@pytest.mark.parametrize(
    ("datasets", "options", "message"),
    [
        ({"clients": ["a" * 32]}, {}, "no 'eval' Dataset id"),
        ({"eval": "e" * 32, "clients": []}, {}, "'clients' must be a non-empty list"),
        ({"eval": "e" * 32, "clients": ["a" * 32]}, {"min_clients": 2}, "min_clients: 2"),
        (
            {"eval": "e" * 32, "clients": ["a" * 32, "b" * 32]},
            {"client_queues": ["q1"]},
            "one queue per shard",
        ),
        ({"eval": "e" * 32, "clients": ["a" * 32]}, {"rollback_threshold": 1.5}, "rollback_threshold"),
        ({"eval": "e" * 32, "clients": ["a" * 32]}, {"client_wait_s": 0}, "client_wait_s"),
    ],
)
def test_bad_arguments_are_refused_before_any_task(clearml_server, datasets, options, message) -> None:
    project = f"fleetfl-test/federate-bad-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ComponentError, match=message):
        fed.federate(datasets, TINY, project=project, server_queue="nobody-serves-this", **options)
    assert _task_count(project) == 0


def test_bad_config_is_refused_before_any_task(clearml_server) -> None:
    from federated.config import ConfigError

    project = f"fleetfl-test/federate-bad-{uuid.uuid4().hex[:6]}"
    datasets = {"eval": "e" * 32, "clients": ["a" * 32, "b" * 32]}
    with pytest.raises(ConfigError, match="strategy"):
        fed.federate(datasets, {**TINY, "strategy": "fedmagic"}, project=project)
    with pytest.raises(ConfigError, match="unknown key 'epochs'"):
        fed.federate(datasets, {**TINY, "epochs": 3}, project=project)
    with pytest.raises(ConfigError, match="min_clients: 3 is more than the 2 client shards"):
        fed.federate(datasets, {**TINY, "min_clients": 3}, project=project)
    assert _task_count(project) == 0


def test_missing_queues_are_refused_before_any_task(clearml_server) -> None:
    project = f"fleetfl-test/federate-bad-{uuid.uuid4().hex[:6]}"
    datasets = {"eval": "e" * 32, "clients": ["a" * 32, "b" * 32]}
    with pytest.raises(ComponentError, match="queue 'no-such-server-queue' does not exist"):
        fed.federate(datasets, TINY, project=project, server_queue="no-such-server-queue")
    with pytest.raises(ComponentError, match="queue 'site-a' does not exist"):
        fed.federate(datasets, TINY, project=project, server_queue=None, client_queues=["site-a", "site-b"])
    assert _task_count(project) == 0


def test_round_report_and_rollback_record() -> None:
    row = {"round": 3, "map50_95": 0.1, "rolled_back_to": 2, "best_map50_95": 0.3}
    assert fed.rollback_of(row) == {"round": 3, "map50_95": 0.1, "restored_round": 2, "best_map50_95": 0.3}
    assert fed.rollback_of({"round": 1, "map50_95": 0.2}) is None


# ---------------------------------------------------------------------- slow: real agents
@pytest.fixture(scope="module")
def fl_queues(clearml_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Unique server/client queues, one server agent and two client agents (stopped at the end)."""
    from tests.fixtures.clearml import fleet_agents

    suffix = uuid.uuid4().hex[:6]
    queues = {"server": f"p2-fl-server-{suffix}", "clients": f"p2-fl-clients-{suffix}"}
    with fleet_agents({queues["server"]: 1, queues["clients"]: 2}, tmp_path_factory.mktemp("p2-agents")):
        yield queues


@pytest.fixture(scope="module")
def shards(clearml_server) -> dict:
    """16 synthetic 64 px images over 2 clients as ClearML Dataset versions."""
    from components.version_data import version_data

    project = f"fleetfl-test/federate-{uuid.uuid4().hex[:6]}"
    return {**version_data("synthetic:16", clients=2, seed=1, project=project, imgsz=64), "project": project}


def _scalar_iterations(task_id: str, title: str, series: str) -> list[int]:
    from clearml import Task

    scalars = Task.get_task(task_id=task_id).get_reported_scalars()
    return [int(x) for x in scalars.get(title, {}).get(series, {}).get("x", [])]


@pytest.mark.slow
def test_missing_clients_fail_clearly_and_are_cleaned_up(shards: dict, fl_queues: dict[str, str]) -> None:
    from clearml import Task

    from queues.definitions import ensure_queue

    nobody = f"p2-nobody-{uuid.uuid4().hex[:6]}"
    ensure_queue(nobody)  # a queue that exists, but no agent serves it
    started = time.monotonic()
    with pytest.raises(fed.FederateError, match="client SuperNode"):
        fed.federate(
            shards,
            TINY,
            project=shards["project"],
            server_queue=fl_queues["server"],
            client_queue=nobody,
            client_wait_s=15,
            wait_timeout_s=300,
        )
    assert time.monotonic() - started < 280
    server = Task.get_tasks(
        project_name=shards["project"], task_name="federate-server", task_filter={"status": ["failed"]}
    )
    assert server, "the failed server task is not there"
    children = Task.get_tasks(task_filter={"parent": server[0].id})
    assert len(children) == 2
    assert all(child.get_status() == "stopped" for child in children)


def test_find_data_yaml(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data.yaml").write_text("nc: 1\n")
    assert fed._find_data_yaml(tmp_path) == tmp_path / "a" / "data.yaml"
    (tmp_path / "data.yaml").write_text("nc: 1\n")
    assert fed._find_data_yaml(tmp_path) == tmp_path / "data.yaml"
    with pytest.raises(ComponentError, match=r"expected one data\.yaml"):
        fed._find_data_yaml(tmp_path / "a" / "missing")


@pytest.mark.slow
def test_killed_client_task_is_survived_with_min_clients_1(shards: dict, fl_queues: dict[str, str]) -> None:
    """Two clients, min_clients 1: client 1's task is stopped after round 1; the run completes, and
    rounds are short, so the last round (well after the stop) ends with client 0 alone."""
    import json

    from clearml import Task

    from components.common import read_output

    rounds = 5  # the stop takes an agent poll to act: later rounds must run without the victim
    server = fed.create_server_task(
        shards,
        {**TINY, "rounds": rounds, "round_timeout": 60.0},
        project=shards["project"],
        task_name="federate-kill",
        client_queue=fl_queues["clients"],
        min_clients=1,
        client_wait_s=240,
    )
    Task.enqueue(server, queue_name=fl_queues["server"])
    deadline = time.monotonic() + 420
    while _scalar_iterations(server.id, "global", "map50_95") != [1]:
        assert time.monotonic() < deadline, "round 1 was not reported in time"
        assert Task.get_task(task_id=server.id).get_status() in ("queued", "in_progress")
        time.sleep(2)
    clients = Task.get_tasks(task_filter={"parent": server.id})
    victim = next(c for c in clients if c.get_parameter("General/partition_id") == "1")
    victim.mark_stopped(force=True, status_message="killed by the test")
    fed.wait_for_task(server.id, timeout_s=420)
    out = read_output(server.id)
    assert [r["round"] for r in out["rounds"]] == list(range(1, rounds + 1))
    rows = [
        json.loads(line)
        for line in Path(Task.get_task(task_id=server.id).artifacts["metrics.jsonl"].get_local_copy())
        .read_text()
        .splitlines()
    ]
    ok_last_round = [c for c in rows[-1]["clients"] if c["status"] == "ok"]
    assert [c["partition_id"] for c in ok_last_round] == [0]
    assert Task.get_task(task_id=victim.id).get_status() == "stopped"
