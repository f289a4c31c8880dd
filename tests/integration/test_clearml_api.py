"""The REST API beyond the happy path: SDK response schemas, errors, transitions, concurrency, security."""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import stat
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from clearml_local.api import ENDPOINTS
from clearml_local.app import load_handlers
from tests.fixtures.clearml import ClearMLServer, api_call

#: Endpoints that exist on clearml-server but have no typed response class in the SDK's v2_23.
NO_SDK_SCHEMA = {
    "debug.ping",
    "server.info",
    "users.get_current_user",
    "users.get_by_id",
    "users.get_all",
    "users.get_vaults",
    "workers.get_runtime_properties",
    "workers.set_runtime_properties",
    "tasks.get_all_ex",
    "tasks.get_by_id_ex",
    "projects.get_all_ex",
    "queues.get_all_ex",
    "models.get_all_ex",
}


def _response_class(endpoint: str) -> type | None:
    service, action = endpoint.split(".")
    try:
        module = importlib.import_module(f"clearml.backend_api.services.v2_23.{service}")
    except ModuleNotFoundError:
        return None
    name = "".join(part.capitalize() for part in action.split("_")) + "Response"
    return getattr(module, name, None)


def _parse_like_sdk(endpoint: str, data: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """What the SDK's CallResult does: ``ResponseClass(**data)``; any error or warning fails."""
    cls = _response_class(endpoint)
    assert cls is not None, f"no SDK response class for {endpoint}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caplog.clear()
        try:
            cls(**data)
        except Exception as exc:
            raise AssertionError(
                f"{endpoint}: {type(exc).__name__}: {exc}\n{json.dumps(data)[:2000]}"
            ) from None
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], endpoint


class Recorder:
    """Calls endpoints and remembers every successful (endpoint, data) pair."""

    def __init__(self, server: ClearMLServer) -> None:
        self.server = server
        self.seen: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, endpoint: str, **body: Any) -> dict[str, Any]:
        reply = api_call(self.server, endpoint, body)
        meta = reply["meta"]
        assert meta["result_code"] == 200, (
            f"{endpoint}: {meta['result_code']}/{meta['result_subcode']} {meta['result_msg']}"
        )
        self.seen.setdefault(endpoint, []).append(reply["data"])
        return reply["data"]


def _exercise_everything(call: Recorder) -> None:
    call("debug.ping")
    call("server.info")
    call("users.get_current_user")
    call("users.get_all")
    call("users.get_by_id", user="fleetfl")
    call("users.get_vaults")
    call("auth.get_credentials")
    # projects
    project = call("projects.create", name="schema/sub", description="d")["id"]
    call("projects.get_by_id", project=project)
    call("projects.get_all", name="^schema", search_hidden=True)
    call("projects.get_all_ex", name="^schema")
    call("projects.update", project=project, tags=["t"])
    # tasks
    task = call("tasks.create", name="schema-task", type="training", project=project)["id"]
    call("tasks.validate", name="x", type="training")
    call("tasks.get_by_id", task=task)
    call("tasks.get_all", project=[project], only_fields=["id", "name"])
    call("tasks.get_all_ex", id=[task])
    call("tasks.get_by_id_ex", id=[task])
    call("tasks.get_types")
    call("tasks.edit", task=task, comment="edited", script={"entry_point": "x.py"})
    call("tasks.update", task=task, tags=["a"])
    call("tasks.set_requirements", task=task, requirements={"pip": "numpy"})
    call(
        "tasks.edit_hyper_params",
        task=task,
        hyperparams=[{"section": "General", "name": "lr", "value": "0.1"}],
    )
    call("tasks.get_hyper_params", tasks=[task])
    call("tasks.delete_hyper_params", task=task, hyperparams=[{"section": "General", "name": "lr"}])
    call(
        "tasks.edit_configuration",
        task=task,
        configuration=[{"name": "cfg", "value": "a: 1", "type": "yaml"}],
    )
    call("tasks.get_configurations", tasks=[task])
    call("tasks.get_configuration_names", tasks=[task])
    call("tasks.delete_configuration", task=task, configuration=["cfg"])
    call("tasks.add_or_update_artifacts", task=task, artifacts=[{"key": "k", "type": "str", "uri": "u"}])
    call("tasks.delete_artifacts", task=task, artifacts=[{"key": "k"}])
    model = call("models.create", name="schema-model", uri="file:///m.bin", project=project, tags=["m"])["id"]
    call("tasks.add_or_update_model", task=task, name="in", model=model, type="input")
    call("tasks.delete_models", task=task, models=[{"name": "in", "type": "input"}])
    clone = call("tasks.clone", task=task, new_task_name="schema-clone")["id"]
    call("tasks.ping", task=task)
    # queues and workers
    queue = call("queues.create", name="schema-q")["id"]
    call("queues.get_default")
    call("queues.update", queue=queue, tags=["q"])
    call("tasks.enqueue", task=task, queue=queue)
    call("queues.get_by_id", queue=queue)
    call("queues.get_all", name="^schema-q$")
    call("queues.get_all_ex", name="^schema-q$")
    call("queues.peek_task", queue=queue)
    call("queues.get_num_entries", queue=queue)
    call("tasks.dequeue", task=task)
    call("queues.add_task", queue=queue, task=clone)
    call("queues.add_task", queue=queue, task=task)
    call("queues.move_task_forward", queue=queue, task=task)
    call("queues.move_task_backward", queue=queue, task=task)
    call("queues.move_task_to_front", queue=queue, task=task)
    call("queues.move_task_to_back", queue=queue, task=task)
    call("queues.remove_task", queue=queue, task=clone)
    call("queues.remove_task", queue=queue, task=task)
    call("queues.add_or_update_metadata", queue=queue, metadata=[{"key": "k", "type": "str", "value": "v"}])
    call("queues.get_queue_metrics", queue_ids=[queue])
    call("tasks.enqueue", task=clone, queue=queue, verify_watched_queue=True)
    call("workers.register", worker="schema:worker", queues=[queue])
    call("queues.get_next_task", queue=queue)
    call("queues.get_next_task", queue=queue)  # empty: {}
    call("workers.status_report", worker="schema:worker", task=clone, queue=queue, timestamp=0)
    call("workers.get_all")
    call("workers.get_runtime_properties", worker="schema:worker")
    call("workers.set_runtime_properties", worker="schema:worker", runtime_properties=[])
    call("workers.get_activity_report", from_date=0, to_date=1, interval=1)
    call("workers.get_stats", from_date=0, to_date=1, interval=1, items=[])
    call("workers.get_metric_keys")
    call("workers.unregister", worker="schema:worker")
    # status changes
    call("tasks.started", task=clone)
    call("tasks.stop", task=clone)
    call("tasks.stopped", task=clone)
    call("tasks.failed", task=clone, force=True)
    call("tasks.close", task=clone, force=True)
    call("tasks.reset", task=clone)
    call("tasks.started", task=task)
    call("tasks.completed", task=task)
    call("tasks.publish", task=task)
    call("tasks.archive", tasks=[clone])
    call("tasks.archive_many", ids=[clone])
    call("tasks.unarchive_many", ids=[clone])
    # models
    call("models.get_by_id", model=model)
    call("models.get_all", project=[project], tags=["m"])
    call("models.get_all_ex", name="^schema")
    call("models.edit", model=model, comment="c")
    call("models.update", model=model, tags=["m", "n"])
    out = call("models.update_for_task", task=clone, uri="file:///out.bin", name="out")["id"]
    call("models.get_by_task_id", task=clone)
    call("models.set_ready", model=model, publish_task=False)
    call("models.publish_many", ids=[out], publish_task=False)
    call("models.archive_many", ids=[model])
    call("models.unarchive_many", ids=[model])
    call("models.get_frameworks")
    call("models.add_or_update_metadata", model=model, metadata=[{"key": "k", "type": "str", "value": "v"}])
    call("models.delete_metadata", model=model, keys=["k"])
    call("projects.get_task_tags")
    call("projects.get_model_tags")
    call("projects.get_unique_metric_variants", project=project)
    call("models.delete", model=out, force=True)
    spare = call("models.create", name="spare", uri="file:///s.bin")["id"]
    call("models.delete_many", ids=[spare])
    # deletions
    call("tasks.delete", task=clone, force=True)
    call("queues.delete", queue=queue, force=True)
    other = call("projects.create", name="schema-empty")["id"]
    call("projects.delete", project=other)


def test_every_endpoint_parses_into_sdk_response_classes(
    clearml_server: ClearMLServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every implemented endpoint is called, and each reply parses like the SDK parses it."""
    call = Recorder(clearml_server)
    _exercise_everything(call)
    load_handlers()
    own = {name for name in ENDPOINTS if not name.startswith("events.")}
    assert own - set(call.seen) == set(), "endpoints not exercised"
    failures = []
    for endpoint, replies in call.seen.items():
        if endpoint in NO_SDK_SCHEMA:
            continue
        for data in replies:
            try:
                _parse_like_sdk(endpoint, data, caplog)
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures)


# --- errors ---------------------------------------------------------------------------------------
def _raw(server: ClearMLServer, path: str, data: bytes, auth: str | None = "basic") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if auth == "basic":
        token = base64.b64encode(f"{server.access_key}:{server.secret_key}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(f"{server.api_host}{path}", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("path", "body", "code", "subcode"),
    [
        ("/v2.23/tasks.no_such_action", b"{}", 404, 0),
        ("/v2.23/tasks.get_by_id", b"{not json", 400, 11),
        ("/v2.23/tasks.get_by_id", b"[1, 2]", 400, 11),
        ("/v2.23/tasks.get_by_id", b"{}", 400, 12),
        ("/v2.23/tasks.get_by_id", b'{"task": 5}', 400, 12),
        ("/v2.23/tasks.get_by_id", b'{"task": "0123456789abcdef"}', 400, 100),
        ("/v2.23/projects.get_by_id", b'{"project": "nope"}', 400, 401),
        ("/v2.23/queues.get_by_id", b'{"queue": "nope"}', 400, 701),
        ("/v2.23/models.get_by_id", b'{"model": "nope"}', 400, 201),
        ("/v2.23/tasks.create", b'{"name": "x", "type": "bogus"}', 400, 12),
        ("/v2.23/tasks.get_all", b'{"order_by": [5]}', 400, 12),
        ("/v2.23/tasks.get_all", b'{"name": "(unclosed"}', 400, 12),
        ("/not-an-endpoint", b"{}", 404, 0),
    ],
)
def test_error_envelopes(
    clearml_server: ClearMLServer, path: str, body: bytes, code: int, subcode: int
) -> None:
    """Bad requests get a ClearML error envelope with the right codes, never a 500 or a traceback."""
    status, reply = _raw(clearml_server, path, body)
    assert status == code
    meta = reply["meta"]
    assert (meta["result_code"], meta["result_subcode"]) == (code, subcode), meta
    assert meta["result_msg"] and "Traceback" not in meta["result_msg"]
    assert meta["error_stack"] is None


def test_wrong_or_missing_credentials_get_401(clearml_server: ClearMLServer) -> None:
    """Wrong secret, forged token or no credentials: 401 (login included)."""
    wrong = base64.b64encode(f"{clearml_server.access_key}:wrong".encode()).decode()
    assert _raw(clearml_server, "/auth.login", b"", auth=f"Basic {wrong}")[0] == 401
    assert _raw(clearml_server, "/v2.23/tasks.get_all", b"{}", auth=f"Basic {wrong}")[0] == 401
    assert _raw(clearml_server, "/v2.23/tasks.get_all", b"{}", auth="Bearer abc.def.ghi")[0] == 401
    assert _raw(clearml_server, "/v2.23/tasks.get_all", b"{}", auth=None)[0] == 401
    status, reply = _raw(clearml_server, "/auth.login", b"")
    assert status == 200
    token = reply["data"]["token"]
    assert _raw(clearml_server, "/v2.23/tasks.get_all", b"{}", auth=f"Bearer {token}")[0] == 200


def test_server_binds_localhost_and_keeps_credentials_private(clearml_server: ClearMLServer) -> None:
    """Default bind address is 127.0.0.1; the credentials file is mode 0600."""
    from clearml_local.settings import DEFAULT_HOST, read_state

    assert DEFAULT_HOST == "127.0.0.1"
    assert read_state(clearml_server.data_dir)["host"] == "127.0.0.1"
    mode = stat.S_IMODE(os.stat(clearml_server.data_dir / "credentials.json").st_mode)
    assert mode == 0o600
    log = (clearml_server.data_dir / "server.log").read_text()
    assert clearml_server.secret_key not in log


# --- state machine --------------------------------------------------------------------------------
def _new_task(server: ClearMLServer, name: str = "sm") -> str:
    return api_call(server, "tasks.create", {"name": name, "type": "training"})["data"]["id"]


def _code(reply: dict) -> tuple[int, int]:
    return reply["meta"]["result_code"], reply["meta"]["result_subcode"]


def test_invalid_transitions_are_refused(clearml_server: ClearMLServer) -> None:
    """created -> completed/stopped, completed -> queued, editing a running task: 400/110."""
    task = _new_task(clearml_server)
    assert _code(api_call(clearml_server, "tasks.completed", {"task": task})) == (400, 110)
    assert _code(api_call(clearml_server, "tasks.stopped", {"task": task})) == (400, 110)
    assert _code(api_call(clearml_server, "tasks.started", {"task": task})) == (200, 0)
    assert _code(api_call(clearml_server, "tasks.edit", {"task": task, "name": "x"})) == (400, 110)
    assert _code(api_call(clearml_server, "tasks.edit", {"task": task, "name": "x", "force": True})) == (
        200,
        0,
    )
    assert _code(api_call(clearml_server, "tasks.completed", {"task": task})) == (200, 0)
    queue = api_call(clearml_server, "queues.create", {"name": "sm-q"})["data"]["id"]
    assert _code(api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})) == (400, 110)
    assert _code(api_call(clearml_server, "tasks.publish", {"task": task})) == (200, 0)
    assert _code(api_call(clearml_server, "tasks.reset", {"task": task})) == (400, 113)
    assert _code(api_call(clearml_server, "tasks.started", {"task": task})) == (400, 113)
    # forced changes are allowed, as on clearml-server
    other = _new_task(clearml_server)
    assert _code(api_call(clearml_server, "tasks.completed", {"task": other, "force": True})) == (200, 0)


def test_enqueue_dequeue_reset_keep_queue_consistent(clearml_server: ClearMLServer) -> None:
    """A queued task is in exactly its queue's entries; dequeue/reset/stop take it out."""
    queue = api_call(clearml_server, "queues.create", {"name": "consistency-q"})["data"]["id"]

    def entries() -> list[str]:
        return [
            e["task"]
            for e in api_call(clearml_server, "queues.get_by_id", {"queue": queue})["data"]["queue"][
                "entries"
            ]
        ]

    task = _new_task(clearml_server)
    api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})
    assert entries() == [task]
    assert _code(api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue}))[0] == 400
    api_call(clearml_server, "tasks.dequeue", {"task": task})
    assert entries() == []
    api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})
    api_call(clearml_server, "tasks.stop", {"task": task})
    assert entries() == []
    status = api_call(clearml_server, "tasks.get_by_id", {"task": task})["data"]["task"]["status"]
    assert status == "stopped"
    api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})
    api_call(clearml_server, "tasks.reset", {"task": task})
    assert entries() == []


# --- concurrency ----------------------------------------------------------------------------------
def test_concurrent_get_next_task_hands_out_each_entry_once(clearml_server: ClearMLServer) -> None:
    """16 concurrent callers drain a 120-entry queue: every task exactly once."""
    queue = api_call(clearml_server, "queues.create", {"name": "race-q"})["data"]["id"]
    tasks = []
    for i in range(120):
        task = _new_task(clearml_server, f"race-{i}")
        api_call(clearml_server, "tasks.enqueue", {"task": task, "queue": queue})
        tasks.append(task)

    def drain(_: int) -> list[str]:
        got = []
        while True:
            data = api_call(clearml_server, "queues.get_next_task", {"queue": queue})["data"]
            if not data:
                return got
            got.append(data["entry"]["task"])

    with ThreadPoolExecutor(16) as pool:
        results = [t for part in pool.map(drain, range(16)) for t in part]
    assert sorted(results) == sorted(tasks)
    assert len(results) == len(set(results))


def test_concurrent_read_modify_writes_lose_nothing(clearml_server: ClearMLServer) -> None:
    """8 clients upsert artifacts and hyper-parameters of one task at once: every write is kept."""
    task = _new_task(clearml_server, "rmw")

    def write(worker: int) -> None:
        for i in range(15):
            key = f"w{worker}-{i}"
            artifact = {"key": key, "type": "str", "uri": f"file:///{key}"}
            api_call(clearml_server, "tasks.add_or_update_artifacts", {"task": task, "artifacts": [artifact]})
            param = {"section": "S", "name": key, "value": str(i)}
            api_call(clearml_server, "tasks.edit_hyper_params", {"task": task, "hyperparams": [param]})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    doc = api_call(clearml_server, "tasks.get_by_id", {"task": task})["data"]["task"]
    assert len(doc["execution"]["artifacts"]) == 8 * 15
    assert len(doc["hyperparams"]["S"]) == 8 * 15


def test_nested_and_hidden_projects_and_subproject_queries(clearml_server: ClearMLServer) -> None:
    """Projects nest by path; hidden ones need search_hidden; include_subprojects widens task queries."""
    child = api_call(clearml_server, "projects.create", {"name": "nest/.datasets/ds"})["data"]["id"]
    api_call(clearml_server, "projects.update", {"project": child, "system_tags": ["hidden"]})

    def names(body: dict) -> list[str]:
        projects = api_call(clearml_server, "projects.get_all", body)["data"]["projects"]
        return sorted(p["name"] for p in projects)

    assert names({"name": "^nest"}) == ["nest", "nest/.datasets"]  # parents were created
    assert names({"name": "^nest", "search_hidden": True}) == ["nest", "nest/.datasets", "nest/.datasets/ds"]
    assert names({"name": "^nest", "shallow_search": True}) == ["nest"]
    top = api_call(clearml_server, "projects.get_all", {"name": "^nest$"})["data"]["projects"][0]["id"]
    task = api_call(
        clearml_server, "tasks.create", {"name": "in-child", "type": "training", "project": child}
    )
    task_id = task["data"]["id"]

    def found(body: dict) -> list[str]:
        return [t["id"] for t in api_call(clearml_server, "tasks.get_all", body)["data"]["tasks"]]

    assert found({"project": [top]}) == []
    assert found({"project": [top], "include_subprojects": True}) == [task_id]


def test_workers_expire_after_their_timeout(clearml_server: ClearMLServer) -> None:
    """A worker that stops reporting leaves workers.get_all after its timeout."""
    import time

    api_call(clearml_server, "workers.register", {"worker": "short:lived", "timeout": 1})

    def ids() -> list[str]:
        return [w["id"] for w in api_call(clearml_server, "workers.get_all")["data"]["workers"]]

    assert "short:lived" in ids()
    time.sleep(1.5)
    assert "short:lived" not in ids()
