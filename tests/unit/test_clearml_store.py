"""The store: atomic transactions, copy-on-write cache, last_metrics folding, reopen; auth tokens."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from clearml_local.api import ApiError
from clearml_local.auth import Authenticator, load_or_create_credentials
from clearml_local.store import ScalarValue, Store, metric_hash


def test_committed_writes_survive_reopen_and_failed_ones_leave_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.transaction() as tx:
        tx.put("tasks", {"id": "t1", "name": "one"})
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put("tasks", {"id": "t2", "name": "two"})
        task = tx.get("tasks", "t1")
        task["name"] = "changed"
        tx.put("tasks", task)
        raise RuntimeError("abort")
    assert store.get("tasks", "t2") is None
    assert store.get("tasks", "t1")["name"] == "one"
    store.close()
    reopened = Store(tmp_path / "db.sqlite")
    assert [d["id"] for d in reopened.all("tasks")] == ["t1"]


def test_documents_handed_out_are_not_changed_by_later_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.transaction() as tx:
        tx.put("queues", {"id": "q", "entries": []})
    before = store.get("queues", "q")
    with store.transaction() as tx:
        queue = tx.get("queues", "q")
        queue["entries"].append({"task": "t"})
        tx.put("queues", queue)
    assert before["entries"] == []
    assert store.get("queues", "q")["entries"] == [{"task": "t"}]


def test_nested_transactions_join_the_outer_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with pytest.raises(ValueError), store.transaction() as outer:
        with store.transaction() as inner:
            assert inner is outer
            inner.put("models", {"id": "m"})
        raise ValueError("roll back both")
    assert store.get("models", "m") is None


def test_update_task_metrics_folds_min_max_last(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    with store.transaction() as tx:
        tx.put("tasks", {"id": "t", "last_iteration": 0})
        values = [ScalarValue("loss", "total", v, i) for i, v in enumerate([3.0, 1.0, 2.0])]
        assert tx.update_task_metrics("t", values)
        assert not tx.update_task_metrics("missing", values)
    task = store.get("tasks", "t")
    entry = task["last_metrics"][metric_hash("loss")][metric_hash("total")]
    assert entry == {
        "metric": "loss",
        "variant": "total",
        "value": 2.0,
        "min_value": 1.0,
        "min_value_iteration": 1,
        "max_value": 3.0,
        "max_value_iteration": 0,
    }
    assert task["last_iteration"] == 2 and task["last_update"]


def test_credentials_are_private_and_tokens_checked(tmp_path: Path) -> None:
    creds = load_or_create_credentials(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "credentials.json").st_mode) == 0o600
    assert load_or_create_credentials(tmp_path) == creds  # stable across restarts
    assert creds.secret_key not in repr(creds)
    auth = Authenticator(creds)
    basic = "Basic " + base64.b64encode(f"{creds.access_key}:{creds.secret_key}".encode()).decode()
    token = auth.login(basic)["token"]
    assert auth.authenticate(f"Bearer {token}") == creds.user_id
    for header in (None, "Bearer x.y.z", "Basic " + base64.b64encode(b"a:b").decode(), "Basic !!"):
        with pytest.raises(ApiError) as err:
            auth.authenticate(header)
        assert err.value.result_code == 401
    expired = Authenticator(creds, token_ttl_s=-10).issue_token()
    with pytest.raises(ApiError):
        auth.verify_bearer(expired)
