"""Contract: the real clearml-agent 3.0.3 (venv mode, reusing ``.venv``) against the embedded server.

Flows (e) clone/edit/enqueue/run/stop/workers/clearml-task and (f) what the AutoScaler reads.
The task scripts live in the test's temporary folder (outside git), so the SDK stores the whole
script in the task and the agent runs it from there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.clearml import (
    REPO_ROOT,
    ClearMLServer,
    api_call,
    ensure_queue,
    run_sdk_script,
    wait_for,
)

BASE_TASK = r"""
import time
from clearml import Task

task = Task.init(project_name="contract-agent", task_name="{name}", auto_connect_frameworks=False,
                 auto_resource_monitoring=False, reuse_last_task_id=False)
params = task.connect({{"value": 1, "sleep": 0.0}})
task.get_logger().report_scalar("result", "doubled", value=float(params["value"]) * 2, iteration=0)
task.flush(wait_for_uploads=True)
time.sleep(float(params["sleep"]))
print("TASK_ID", task.id)
"""


def _task_id(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("TASK_ID"))


def _status(server: ClearMLServer, task_id: str) -> str:
    return api_call(server, "tasks.get_by_id", {"task": task_id})["data"]["task"]["status"]


def _last_value(server: ClearMLServer, task_id: str) -> float | None:
    task = api_call(server, "tasks.get_by_id", {"task": task_id})["data"]["task"]
    for variants in (task.get("last_metrics") or {}).values():
        for entry in variants.values():
            if entry.get("metric") == "result":
                return entry["value"]
    return None


def _clone_and_enqueue(server: ClearMLServer, tmp_path: Path, base_id: str, params: dict, queue: str) -> str:
    ensure_queue(server, queue)
    code = f"""
from clearml import Task
base = Task.get_task(task_id="{base_id}")
clone = Task.clone(source_task=base, name="clone of base")
clone.set_parameters({params!r})
Task.enqueue(clone, queue_name="{queue}")
print("TASK_ID", clone.id)
"""
    return _task_id(run_sdk_script(server, code, tmp_path, name="clone.py"))


@pytest.mark.slow
def test_clone_edit_enqueue_run_stop_and_workers(
    clearml_server: ClearMLServer, clearml_agent, tmp_path: Path
) -> None:
    """(e) An agent runs an edited clone with the edited values; a running task is stopped."""
    base_id = _task_id(run_sdk_script(clearml_server, BASE_TASK.format(name="base"), tmp_path / "base"))
    assert _last_value(clearml_server, base_id) == 2.0

    clone_id = _clone_and_enqueue(clearml_server, tmp_path, base_id, {"General/value": 21}, "contract-e")
    assert _status(clearml_server, clone_id) == "queued"
    agent = clearml_agent("contract-e")

    def agent_workers() -> list[dict]:
        workers = api_call(clearml_server, "workers.get_all")["data"]["workers"]
        return [w for w in workers if w["id"] == agent.worker_id]

    workers = wait_for(agent_workers, 60, "the agent in workers.get_all")
    assert workers[0]["register_time"] and workers[0]["last_report_time"]
    done = ("completed", "failed")
    wait_for(lambda: _status(clearml_server, clone_id) in done, 180, f"clone run\n{agent.log()}")
    assert _status(clearml_server, clone_id) == "completed", agent.log()
    assert _last_value(clearml_server, clone_id) == 42.0

    # a long-running clone, stopped from the SDK while the agent runs it
    long_id = _clone_and_enqueue(clearml_server, tmp_path, base_id, {"General/sleep": 120}, "contract-e")
    wait_for(lambda: _status(clearml_server, long_id) == "in_progress", 120, f"long start\n{agent.log()}")
    # the task's own process runs once it reported its first scalar
    wait_for(lambda: _last_value(clearml_server, long_id) is not None, 120, f"long run\n{agent.log()}")
    stop = f"""
from clearml import Task
Task.get_task(task_id="{long_id}").mark_stop_request()
"""
    run_sdk_script(clearml_server, stop, tmp_path, name="stop.py")
    wait_for(lambda: _status(clearml_server, long_id) != "in_progress", 90, f"the stop\n{agent.log()}")
    stopped = api_call(clearml_server, "tasks.get_by_id", {"task": long_id})["data"]["task"]
    assert stopped["status"] == "stopped", (stopped["status"], stopped["status_message"], agent.log())

    def agent_idle() -> bool:
        workers = api_call(clearml_server, "workers.get_all")["data"]["workers"]
        return any(w["id"] == agent.worker_id and not w.get("task") for w in workers)

    wait_for(agent_idle, 90, "the agent to be idle again")


@pytest.mark.slow
def test_clearml_task_cli_creates_and_enqueues(
    clearml_server: ClearMLServer, clearml_agent, tmp_path: Path
) -> None:
    """(e) ``clearml-task --script ... --queue ...`` creates and enqueues a task an agent runs."""
    script = tmp_path / "cli_task.py"
    script.write_text(
        "from clearml import Task\n"
        "task = Task.init(auto_resource_monitoring=False)\n"
        "task.get_logger().report_scalar('result', 'cli', value=7.0, iteration=0)\n"
    )
    ensure_queue(clearml_server, "contract-cli-q")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("clearml\n")  # the agent reuses .venv: nothing is installed
    clearml_task = REPO_ROOT / ".venv" / "bin" / "clearml-task"
    result = subprocess.run(
        [
            str(clearml_task),
            "--project",
            "contract-cli",
            "--name",
            "from-cli",
            "--script",
            str(script),
            "--queue",
            "contract-cli-q",
            "--requirements",
            str(requirements),
        ],
        cwd=tmp_path,
        env=clearml_server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = api_call(clearml_server, "tasks.get_all", {"name": "^from-cli$", "only_fields": ["id", "status"]})
    (task,) = tasks["data"]["tasks"]
    assert task["status"] == "queued"
    queue = api_call(clearml_server, "queues.get_all", {"name": "^contract-cli-q$"})["data"]["queues"][0]
    assert [e["task"] for e in queue["entries"]] == [task["id"]]

    agent = clearml_agent("contract-cli-q")
    done = ("completed", "failed")
    wait_for(lambda: _status(clearml_server, task["id"]) in done, 180, f"cli task\n{agent.log()}")
    assert _status(clearml_server, task["id"]) == "completed", agent.log()
    assert _last_value(clearml_server, task["id"]) == 7.0
