"""Queues on the embedded server and real clearml-agent daemons started and stopped by FleetFL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from queues.agents import list_agents, start_agents, stop_agents, wait_for_workers
from queues.definitions import create_queues, load_queue_specs


def _queue_names() -> list[str]:
    from clearml.backend_api.session.client import APIClient

    return [queue.name for queue in APIClient().queues.get_all()]


@pytest.mark.slow
def test_queues_create_is_idempotent(clearml_server, repo_root: Path) -> None:
    first = create_queues()
    second = create_queues()
    assert list(first) == ["services", "fl-server", "fl-clients", "hpo"]
    assert {name: info["id"] for name, info in first.items()} == {n: i["id"] for n, i in second.items()}
    assert not any(info["created"] for info in second.values())
    names = _queue_names()
    assert all(names.count(spec.name) == 1 for spec in load_queue_specs())
    # the command line does the same and says so
    cli = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "queues", "create"],
        cwd=repo_root,
        env=clearml_server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert cli.stdout.count("exists") == 4, cli.stdout
    assert _queue_names().count("services") == 1


@pytest.mark.slow
def test_agents_start_visible_as_workers_and_gone_after_stop(clearml_server, tmp_path: Path) -> None:
    queue = f"fl-clients-{uuid.uuid4().hex[:6]}"  # new: the two daemons must not race to create it
    records = start_agents(queue, count=2, state_dir=tmp_path)
    try:
        ids = [record.worker_id for record in records]
        assert len(set(ids)) == 2
        assert wait_for_workers(ids, timeout_s=90), "\n".join(record.log()[-1500:] for record in records)
        assert {record.worker_id for record in list_agents(tmp_path)} == set(ids)
        assert all(record.alive() for record in records)
        assert _queue_names().count(queue) == 1
    finally:
        stopped = stop_agents(state_dir=tmp_path)
    assert {record.worker_id for record in stopped} == set(ids)
    assert not any(record.alive() for record in records)
    assert wait_for_workers(ids, timeout_s=30, present=False), "stopped agents are still registered"
    assert list_agents(tmp_path) == []
