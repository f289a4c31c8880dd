"""Unit tests of the ``events.*`` handlers against a real SQLite store (no HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clearml.backend_api.services.v2_23 import events as sdk_events

from clearml_local import event_ingest, events
from clearml_local.api import ENDPOINTS, ApiError, RequestContext
from clearml_local.store import Store, metric_hash


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "server.db")
    events.init_store(store)
    with store.transaction() as tx:
        for task_id in ("t1", "t2"):
            tx.put("tasks", {"id": task_id, "name": f"task {task_id}", "status": "in_progress"})
        tx.put("tasks", {"id": "pub", "name": "published", "status": "published"})
        tx.put("models", {"id": "m1", "name": "model"})
    yield store
    store.close()


def call(store: Store, name: str, body: dict[str, Any] | None = None, raw: bytes = b"") -> dict[str, Any]:
    """Run endpoint ``name`` and check that its reply parses into the SDK's typed response."""
    ctx = RequestContext(store=store, user="u", endpoint=name, version="2.23", worker="w1", raw_body=raw)
    data = ENDPOINTS[name](ctx, body or {})
    json.dumps(data, allow_nan=True)  # serialisable
    action = name.split(".", 1)[1]
    response_cls = next(
        (
            cls
            for cls in vars(sdk_events).values()
            if isinstance(cls, type)
            and issubclass(cls, sdk_events.Response)
            and getattr(cls, "_action", None) == action
        ),
        None,
    )
    assert response_cls is not None, f"the SDK has no response class for {name}"
    response_cls(**data)  # raises TypeError where the SDK would warn "Failed parsing response"
    return data


def scalar(task: str, it: int, value: float, metric: str = "loss", variant: str = "train", **extra: Any):
    return {"type": "training_stats_scalar", "task": task, "iter": it, "metric": metric, "variant": variant,
            "value": value, "timestamp": 1_000_000 + max(it, 0), **extra}  # fmt: skip


def json_lines(items: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(item) for item in items).encode()


def test_add_batch_updates_last_metrics_and_iteration(store: Store) -> None:
    batch = [scalar("t1", i, v) for i, v in enumerate([0.9, 0.5, 0.7])]
    batch.append({"type": "log", "task": "t1", "msg": "hello", "level": "info", "timestamp": 5})
    data = call(store, "events.add_batch", raw=json_lines(batch))
    assert data == {"added": 4, "errors": 0, "errors_info": {}}
    task = store.get("tasks", "t1")
    entry = task["last_metrics"][metric_hash("loss")][metric_hash("train")]
    assert entry["value"] == 0.7 and entry["metric"] == "loss" and entry["variant"] == "train"
    assert (entry["min_value"], entry["min_value_iteration"]) == (0.5, 1)
    assert (entry["max_value"], entry["max_value_iteration"]) == (0.9, 0)
    assert task["last_iteration"] == 2
    # a later batch keeps min/max across batches and moves the last value
    call(store, "events.add_batch", raw=json_lines([scalar("t1", 3, 0.1)]))
    entry = store.get("tasks", "t1")["last_metrics"][metric_hash("loss")][metric_hash("train")]
    assert (entry["value"], entry["min_value"], entry["max_value"]) == (0.1, 0.1, 0.9)


def test_add_batch_counts_bad_events_and_stores_the_rest(store: Store) -> None:
    batch = [
        scalar("t1", 0, 1.0),
        scalar("nope", 0, 1.0),
        scalar("pub", 0, 1.0),
        {"type": "bogus", "task": "t1"},
        {"type": "training_stats_scalar", "task": "t1", "metric": "m", "variant": "v", "value": "x"},
    ]
    data = call(store, "events.add_batch", raw=json_lines(batch))
    assert data["added"] == 1 and data["errors"] == 4
    assert data["errors_info"]["Invalid task id"] == 1
    assert "last_metrics" not in store.get("tasks", "pub")


def test_add_batch_malformed_line_writes_nothing(store: Store) -> None:
    raw = json_lines([scalar("t1", 0, 1.0)]) + b"\n{not json\n"
    with pytest.raises(ApiError) as err:
        call(store, "events.add_batch", raw=raw)
    assert err.value.result_code == 400 and "line 2" in err.value.message
    assert call(store, "events.get_task_events", {"task": "t1"})["total"] == 0
    with pytest.raises(ApiError):
        call(store, "events.add_batch", raw=b"   ")


def test_rereported_point_replaces_the_old_one(store: Store) -> None:
    call(store, "events.add_batch", raw=json_lines([scalar("t1", 0, 1.0), scalar("t1", 0, 2.0)]))
    hist = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1", "key": "iter"})
    assert hist == {"loss": {"train": {"name": "train", "x": [0], "y": [2.0]}}}


def test_histogram_downsamples_by_averaging(store: Store) -> None:
    call(store, "events.add_batch", raw=json_lines([scalar("t1", i, float(i)) for i in range(100)]))
    hist = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1", "samples": 10})
    curve = hist["loss"]["train"]
    assert curve["x"] == list(range(0, 100, 10))
    assert curve["y"] == [i + 4.5 for i in range(0, 100, 10)]
    by_time = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1", "key": "iso_time"})
    assert by_time["loss"]["train"]["x"][0].endswith("Z")
    with pytest.raises(ApiError):
        call(store, "events.scalar_metrics_iter_histogram", {"task": "missing"})


def test_single_values_are_kept_apart(store: Store) -> None:
    single = scalar("t1", events.SINGLE_VALUE_ITERATION, 0.42, metric="Summary", variant="acc")
    call(store, "events.add_batch", raw=json_lines([single, scalar("t1", 5, 1.0)]))
    assert store.get("tasks", "t1")["last_iteration"] == 5
    assert "Summary" not in call(store, "events.scalar_metrics_iter_histogram", {"task": "t1"})
    data = call(store, "events.get_task_single_value_metrics", {"tasks": ["t1"]})
    assert data["tasks"][0]["values"][0]["variant"] == "acc"
    assert data["tasks"][0]["values"][0]["value"] == 0.42
    entry = store.get("tasks", "t1")["last_metrics"][metric_hash("Summary")][metric_hash("acc")]
    assert entry["value"] == 0.42


def test_get_task_events_scrolls_through_everything(store: Store) -> None:
    batch = [scalar("t1", i, float(i)) for i in range(25)]
    batch += [{"type": "log", "task": "t1", "msg": f"line {i}", "timestamp": i} for i in range(7)]
    call(store, "events.add_batch", raw=json_lines(batch))
    for event_type, expected in ((None, 32), ("training_stats_scalar", 25), ("log", 7)):
        seen: list[dict[str, Any]] = []
        scroll = None
        while True:
            body = {"task": "t1", "batch_size": 10, "scroll_id": scroll}
            if event_type:
                body["event_type"] = event_type
            page = call(store, "events.get_task_events", body)
            assert page["total"] == expected
            seen += page["events"]
            scroll = page["scroll_id"]
            if page["returned"] < 10:
                break
        assert len(seen) == expected
    desc = call(store, "events.get_task_events", {"task": "t1", "order": "desc", "event_type": "log"})
    assert desc["events"][0]["msg"] == "line 6"
    with pytest.raises(ApiError):
        call(store, "events.get_task_events", {"task": "t1", "scroll_id": "garbage!"})


def test_get_task_log_navigation(store: Store) -> None:
    lines = [{"type": "log", "task": "t1", "msg": f"l{i}", "timestamp": 100 + i} for i in range(10)]
    call(store, "events.add_batch", raw=json_lines(lines))
    # Task.get_reported_console_output: the newest N lines, oldest first
    last = call(
        store,
        "events.get_task_log",
        {"task": "t1", "order": "asc", "navigate_earlier": True, "batch_size": 3},
    )
    assert [e["msg"] for e in last["events"]] == ["l7", "l8", "l9"] and last["total"] == 10
    earlier = call(store, "events.get_task_log", {"task": "t1", "from_timestamp": 107, "batch_size": 2})
    assert [e["msg"] for e in earlier["events"]] == ["l6", "l5"]
    later = call(
        store,
        "events.get_task_log",
        {"task": "t1", "from_timestamp": 107, "navigate_earlier": False, "order": "asc"},
    )
    assert [e["msg"] for e in later["events"]] == ["l8", "l9"]
    assert call(store, "events.clear_task_log", {"task": "t1"})["deleted"] == 10


def test_plots_return_latest_iterations(store: Store) -> None:
    plots = [
        {
            "type": "plot",
            "task": "t1",
            "iter": i,
            "metric": "Pipeline",
            "variant": "Flow",
            "plot_str": f'{{"i": {i}}}',
        }
        for i in range(3)
    ]
    call(store, "events.add_batch", raw=json_lines(plots))
    data = call(store, "events.get_task_plots", {"task": "t1", "iters": 1})
    assert data["returned"] == 1 and json.loads(data["plots"][0]["plot_str"]) == {"i": 2}
    assert data["plots"][0]["worker"] == "w1"
    data = call(store, "events.get_task_plots", {"task": "t1", "iters": 2, "no_scroll": True})
    assert sorted(p["iter"] for p in data["plots"]) == [1, 2]


def test_debug_images_scroll_ends(store: Store) -> None:
    images = [
        {
            "type": "training_debug_image",
            "task": "t1",
            "iter": i,
            "metric": "img",
            "variant": v,
            "url": f"http://f/{i}{v}",
        }
        for i in range(3)
        for v in ("a", "b")
    ]
    call(store, "events.add_batch", raw=json_lines(images))
    body: dict[str, Any] = {"metrics": [{"task": "t1", "metric": "img", "variants": ["a"]}], "iters": 1}
    seen = []
    for _ in range(5):
        page = call(store, "events.debug_images", body)
        iterations = page["metrics"][0]["iterations"]
        if not iterations:
            break
        seen += [(it["iter"], ev["url"]) for it in iterations for ev in it["events"]]
        body["scroll_id"] = page["scroll_id"]
    assert seen == [(2, "http://f/2a"), (1, "http://f/1a"), (0, "http://f/0a")]


def test_latest_values_metric_data_and_names(store: Store) -> None:
    batch = [scalar("t1", i, float(i)) for i in range(5)] + [scalar("t1", 0, 3.0, variant="val")]
    call(store, "events.add_batch", raw=json_lines(batch))
    latest = call(store, "events.get_task_latest_scalar_values", {"task": "t1"})
    variants = {v["name"]: v for v in latest["metrics"][0]["variants"]}
    assert variants["train"]["last_value"] == 4.0 and variants["train"]["last_100_value"] == 2.0
    data = call(store, "events.get_scalar_metric_data", {"task": "t1", "metric": "loss"})
    assert data["total"] == 6 and data["returned"] == 6
    names = call(store, "events.get_scalar_metrics_and_variants", {"task": "t1"})
    assert set(names["metrics"]["loss"]) == {"train", "val"}
    assert call(store, "events.get_task_metrics", {"tasks": ["t1"]})["metrics"][0]["metrics"] == ["loss"]
    multi = call(store, "events.multi_task_scalar_metrics_iter_histogram", {"tasks": ["t1"]})
    assert multi["metrics"]["loss"]["train"]["t1"]["y"][-1] == 4.0


def test_model_events_and_deletion(store: Store) -> None:
    call(store, "events.add", scalar("m1", 0, 1.0, model_event=True))
    assert "last_metrics" not in store.get("tasks", "t1")
    hist = call(store, "events.scalar_metrics_iter_histogram", {"task": "m1", "model_events": True})
    assert hist["loss"]["train"]["y"] == [1.0]
    assert call(store, "events.delete_for_model", {"model": "m1"})["deleted"] is True
    call(store, "events.add_batch", raw=json_lines([scalar("t1", 0, 1.0)]))
    assert call(store, "events.delete_for_task", {"task": "t1"})["deleted"] is True
    assert call(store, "events.get_task_events", {"task": "t1"})["total"] == 0
    with pytest.raises(ApiError):
        call(store, "events.delete_for_task", {"task": "pub"})


def test_nan_is_stored_as_null_and_ignored_in_metrics(store: Store) -> None:
    raw = b'{"type": "training_stats_scalar", "task": "t1", "iter": 0, "metric": "m", "variant": "v", '
    raw += b'"value": NaN}'
    assert call(store, "events.add_batch", raw=raw)["added"] == 1
    assert "last_metrics" not in store.get("tasks", "t1") or not store.get("tasks", "t1")["last_metrics"]
    assert call(store, "events.scalar_metrics_iter_histogram", {"task": "t1"})["m"]["v"]["y"] == [None]


def test_events_of_a_task_deleted_during_ingest_are_dropped(store: Store) -> None:
    batch = event_ingest._Batch(store, worker=None)  # validated while the task exists...
    batch.add(scalar("t2", 0, 1.0), 0)
    with store.transaction() as tx:  # ...deleted before the batch's transaction opens
        tx.delete("tasks", "t2")
    result = batch.write()
    assert (result.added, result.errors) == (0, 1)
    with store.reading() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM events WHERE task = 't2'").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM event_series WHERE task = 't2'").scalar_one() == 0


def test_every_events_endpoint_answers_in_the_sdk_schema(store: Store) -> None:
    image = {
        "type": "training_debug_image",
        "task": "t1",
        "iter": 0,
        "metric": "img",
        "variant": "a",
        "url": "u",
    }
    plot = {"type": "plot", "task": "t1", "iter": 0, "metric": "p", "variant": "v", "plot_str": "{}"}
    log = {"type": "log", "task": "t1", "msg": "m"}
    call(store, "events.add_batch", raw=json_lines([scalar("t1", 0, 1.0), image, plot, log]))
    bodies: dict[str, dict[str, Any]] = {
        "events.add": scalar("t1", 1, 2.0),
        "events.scalar_metrics_iter_histogram": {"task": "t1"},
        "events.multi_task_scalar_metrics_iter_histogram": {"tasks": ["t1"]},
        "events.get_task_latest_scalar_values": {"task": "t1"},
        "events.get_task_single_value_metrics": {"tasks": ["t1"]},
        "events.get_scalar_metric_data": {"task": "t1", "metric": "loss"},
        "events.get_scalar_metrics_and_variants": {"task": "t1"},
        "events.get_task_metrics": {"tasks": ["t1"]},
        "events.get_task_events": {"task": "t1"},
        "events.get_task_log": {"task": "t1"},
        "events.get_task_plots": {"task": "t1"},
        "events.debug_images": {"metrics": [{"task": "t1", "metric": "img"}]},
        "events.clear_task_log": {"task": "t1"},
        "events.delete_for_model": {"model": "m1"},
        "events.delete_for_task": {"task": "t1"},
    }
    registered = {name for name in ENDPOINTS if name.startswith("events.")}
    assert registered - {"events.add_batch"} == set(bodies)
    for name, body in bodies.items():
        assert isinstance(call(store, name, body), dict)
