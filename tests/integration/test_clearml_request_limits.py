"""Malformed or oversized requests get a ClearML 400/413 envelope, never a 500, and break nothing.

The REST app runs in-process (starlette's TestClient) over a real SQLite store in a temp dir.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from clearml_local.app import create_api_app
from clearml_local.auth import Authenticator, load_or_create_credentials
from clearml_local.fileserver import create_file_app
from clearml_local.jsonbody import nesting_depth
from clearml_local.settings import MAX_JSON_DEPTH
from clearml_local.store import Store

MAX_REQUEST_BYTES = 512 * 1024


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Store]]:
    creds = load_or_create_credentials(tmp_path)
    store = Store(tmp_path / "server.db")
    app = create_api_app(store, Authenticator(creds), {}, max_request_bytes=MAX_REQUEST_BYTES)
    token = base64.b64encode(f"{creds.access_key}:{creds.secret_key}".encode()).decode()
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Basic {token}"
        yield client, store
    store.close()


def post(client: TestClient, name: str, data: bytes | str, content_type: str = "application/json") -> tuple:
    reply = client.post(f"/v2.23/{name}", content=data, headers={"Content-Type": content_type})
    meta = reply.json()["meta"]
    assert reply.status_code == meta["result_code"]
    return meta["result_code"], meta["result_subcode"], meta["result_msg"]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "code", "subcode", "words"),
    [
        ('{"name": "x", "runtime": {"a": ' + nested(MAX_JSON_DEPTH) + "}}", 400, 11, "levels deep"),
        ('{"name": ' + nested(200_000) + "}", 400, 11, "levels deep"),  # Python's json: RecursionError
        ('{"name": "x", "type": "training", "last_iteration": 18446744073709551616}', 400, 12, "64-bit"),
        ('{"name": "x", "runtime": {"iter": -9223372036854775809}}', 400, 12, "64-bit"),
        ('{"name": "x\\ud800", "type": "training"}', 400, 11, "surrogate"),
        ('{"name": "x\\udc00y", "type": "training"}', 400, 11, "surrogate"),
        (b'{"name": "\xff\xfe", "type": "training"}', 400, 11, "Malformed"),
    ],
)
def test_malformed_bodies_get_a_400(api, body: Any, code: int, subcode: int, words: str) -> None:
    client, store = api
    assert post(client, "tasks.create", body)[:2] == (code, subcode)
    assert words in post(client, "tasks.create", body)[2]
    assert store.count("tasks") == 0


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("tasks.get_all", {"order_by": 5}),
        ("projects.get_all", {"order_by": True}),
        ("tasks.get_all", {"project": [{"a": 1}]}),
        ("models.get_all", {"project": [["x"]]}),
        ("tasks.get_all", {"_any_": {"pattern": 5, "fields": ["name"]}}),
    ],
)
def test_wrongly_typed_fields_get_a_400(api, name: str, body: dict) -> None:
    """Each of these answered 500 (found by benchmarks/server_fuzz.py's type-swap pass)."""
    client, _ = api
    code, subcode, message = post(client, name, json.dumps(body))
    assert (code, subcode) == (400, 12) and "must be" in message


def test_bodies_within_the_limits_are_accepted(api) -> None:
    client, store = api
    deep = nested(MAX_JSON_DEPTH - 2)
    runtime = {"a": json.loads(deep), "n": 2**63 - 1, "s": "[" * 5000}  # brackets in a string do not count
    body = {"name": "ok \U0001f600", "type": "training", "runtime": runtime}
    assert post(client, "tasks.create", json.dumps(body))[0] == 200
    (task,) = store.all("tasks")
    assert task["name"] == "ok \U0001f600" and task["runtime"] == runtime


def test_json_lines_bodies_are_checked_too(api) -> None:
    client, _ = api
    fine = '{"type": "log", "task": "t", "msg": "fine"}\n'
    for bad in ('{"x": ' + nested(1000) + "}", '{"type": "log", "task": "t", "msg": "\\udfff"}'):
        assert post(client, "events.add_batch", fine + bad, "application/json-lines")[:2] == (400, 11)


def test_bodies_over_the_cap_get_413_declared_or_streamed(api) -> None:
    client, _ = api
    big = json.dumps({"name": "x" * MAX_REQUEST_BYTES})
    assert post(client, "tasks.create", big)[0] == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while it streams
        yield b'{"name": "'
        for _ in range(MAX_REQUEST_BYTES // 4096 + 1):
            yield b"x" * 4096
        yield b'"}'

    reply = client.post("/v2.23/tasks.create", content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["meta"]["result_code"] == 413
    assert post(client, "debug.ping", "{}")[0] == 200


def _store_deeply_nested(api, kind: str, create: dict, field: str) -> str:
    """Create a ``kind`` (tasks/models) through the API, then store ``field`` 600 levels deep."""
    client, store = api
    assert post(client, f"{kind}.create", json.dumps(create))[0] == 200
    (doc,) = store.all(kind)
    deep: Any = {}
    for _ in range(600):
        deep = {"k": deep}
    with store.transaction() as tx:
        tx.put(kind, {**doc, field: deep})
    return doc["id"]


def test_a_task_stored_deeply_nested_can_still_be_edited_and_pinged(api) -> None:
    """Data stored before the nesting limit (``copy.deepcopy`` failed on it: 500 on every edit)."""
    client, store = api
    task_id = _store_deeply_nested(api, "tasks", {"name": "deep", "type": "training"}, "runtime")
    assert post(client, "tasks.ping", json.dumps({"task": task_id}))[0] == 200
    edit = {"task": task_id, "comment": "still editable", "force": True}
    assert post(client, "tasks.edit", json.dumps(edit))[0] == 200
    assert store.get("tasks", task_id)["comment"] == "still editable"


def test_a_model_stored_deeply_nested_can_still_be_edited(api) -> None:
    """The same for models (``models.edit`` copied the model with ``copy.deepcopy``)."""
    client, store = api
    model_id = _store_deeply_nested(api, "models", {"name": "deep", "uri": "file:///m.pt"}, "design")
    edit = {"model": model_id, "comment": "still editable"}
    assert post(client, "models.edit", json.dumps(edit))[0] == 200
    assert store.get("models", model_id)["comment"] == "still editable"


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b'{"a": 1}', 1),
        (b'[[{"a": "[[[[\\"[["}]]', 3),  # brackets and an escaped quote inside a string
        (b'["\\\\", [[[]]]]', 4),  # an escaped backslash ends the string
        (b'["]]]]", [[[[]]]]]', 5),
        (b"]]]]][[[", 3),  # stray closers do not hide the openers after them
        (b'{"a": 1}\n[[[]]]\n{}', 3),  # json-lines: the deepest line
    ],
)
def test_nesting_depth(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_file_server_refuses_names_too_long_for_the_file_system(tmp_path: Path) -> None:
    app = create_file_app(tmp_path / "files", lambda token: token == "t")
    auth = {"Authorization": "Bearer t"}
    with TestClient(app, raise_server_exceptions=False) as client:
        for name in ("/p/" + "n" * 256 + "/a.bin", "/p/" + "é" * 150 + ".bin", "/p" + "/d" * 2100 + "/a.bin"):
            assert client.post("/", files={name: ("a.bin", b"1")}, headers=auth).status_code == 400
            assert client.get(name, headers=auth).status_code == 400
            assert client.delete(name, headers=auth).status_code == 400
        ok = "/p/" + "n" * 200 + ".bin"
        assert client.post("/", files={ok: ("a.bin", b"1")}, headers=auth).status_code == 200
        assert client.get(ok, headers=auth).content == b"1"
