"""``events.*`` against bad input and large series: out-of-range timestamps and iterations (refused
on ingest, survived on read), the ``samples`` bound of histograms, and 400s for mistyped fields."""

from __future__ import annotations

import base64
import json
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from clearml_local import event_store, events
from clearml_local.api import ENDPOINTS, ApiError, RequestContext
from clearml_local.event_ingest import ITERATION_RANGE_ERROR, TIMESTAMP_RANGE_ERROR
from clearml_local.event_store import MAX_HISTOGRAM_SAMPLES, block_plan, bucket_width, scalar_histogram
from clearml_local.store import Store

T0 = 1_765_000_000_000  # 2025-12-06, in milliseconds


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "server.db")
    events.init_store(store)
    with store.transaction() as tx:
        tx.put("tasks", {"id": "t1", "name": "task", "status": "in_progress"})
    yield store
    store.close()


def call(store: Store, name: str, body: dict[str, Any] | None = None, raw: bytes = b"") -> dict[str, Any]:
    ctx = RequestContext(store=store, user="u", endpoint=name, version="2.23", raw_body=raw)
    return ENDPOINTS[name](ctx, body or {})


def refused(store: Store, name: str, body: dict[str, Any] | None = None, raw: bytes = b"") -> ApiError:
    with pytest.raises(ApiError) as err:
        call(store, name, body, raw)
    assert err.value.result_code == 400
    return err.value


def scalar(it: int, value: float, ts: Any = None, variant: str = "train") -> dict[str, Any]:
    return {"type": "training_stats_scalar", "task": "t1", "iter": it, "metric": "loss", "variant": variant,
            "value": value, "timestamp": T0 + it if ts is None else ts}  # fmt: skip


def lines(items: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(item) for item in items).encode()


def stored_iterations(store: Store) -> list[int]:
    data = call(store, "events.get_scalar_metric_data", {"task": "t1", "metric": "loss", "no_scroll": True})
    return [event["iter"] for event in data["events"]]


@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        ("timestamp", T0 * 1000, TIMESTAMP_RANGE_ERROR),  # microseconds
        ("timestamp", -5, TIMESTAMP_RANGE_ERROR),
        ("timestamp", "yesterday", TIMESTAMP_RANGE_ERROR),
        ("iter", 2**63, ITERATION_RANGE_ERROR),  # clearml-server's message
        ("iter", -(2**64), ITERATION_RANGE_ERROR),
        ("iter", "3", ITERATION_RANGE_ERROR),
    ],
)
def test_an_out_of_range_event_is_refused_with_400_and_the_rest_stored(
    store: Store, field: str, bad: Any, reason: str
) -> None:
    batch = [scalar(0, 1.0), {**scalar(1, 2.0), field: bad}, scalar(2, 3.0)]
    err = refused(store, "events.add_batch", raw=lines(batch))
    assert err.subcode == 12
    assert f"event 2: field '{field}'" in err.message and "the other 2 stored" in err.message
    assert stored_iterations(store) == [0, 2]
    assert store.get("tasks", "t1")["last_iteration"] == 2
    # alone, nothing is stored: clearml-server's "events not added"
    err = refused(store, "events.add", {**scalar(5, 2.0), field: bad})
    assert (err.subcode, reason in err.message) == (131, True)
    assert stored_iterations(store) == [0, 2]


def test_a_value_beyond_a_double_and_a_log_with_a_bad_timestamp_are_refused(store: Store) -> None:
    log = {"type": "log", "task": "t1", "msg": "hi", "timestamp": 2**70}
    batch = [scalar(0, 1.0), {**scalar(1, 1.0), "value": 10**400}, log]
    err = refused(store, "events.add_batch", raw=lines(batch))
    assert "1 event(s) refused" in err.message and "event 3: field 'timestamp'" in err.message
    assert call(store, "events.get_task_log", {"task": "t1"})["total"] == 0
    assert stored_iterations(store) == [0]


def _insert_raw(path: Path, rows: list[tuple[Any, ...]], logs: list[tuple[Any, ...]]) -> None:
    """Write rows straight into SQLite, as a data dir from before the checks may hold them."""
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO events VALUES (?, 0, 'training_stats_scalar', 'loss', 'train', ?, ?, ?, NULL)", rows
        )
        db.executemany(
            "INSERT INTO event_logs (task, model_event, timestamp, level, msg) VALUES (?, 0, ?, 'info', ?)",
            logs,
        )
        db.execute("DROP TABLE event_series")  # made by this version: the restart fills it again
    db.close()


def test_reads_survive_timestamps_stored_before_the_checks(store: Store, tmp_path: Path) -> None:
    call(store, "events.add_batch", raw=lines([scalar(i, float(i)) for i in range(4)]))
    store.close()
    bad = [T0 * 1000, -(2**40), "garbage", 1.5e300]
    _insert_raw(
        tmp_path / "server.db",
        [("t1", 10 + i, 1.0, ts) for i, ts in enumerate(bad)],
        [("t1", ts, f"line {i}") for i, ts in enumerate([*bad, T0])],
    )
    store = Store(tmp_path / "server.db")
    events.init_store(store)
    with store.transaction() as tx:
        tx.put("tasks", {"id": "t1", "name": "task", "status": "in_progress"})
    try:
        by_iter = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1"})["loss"]["train"]
        assert by_iter["x"] == [0, 1, 2, 3, 10, 11, 12, 13]
        for key in ("timestamp", "iso_time"):  # points without a valid time are left out
            curve = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1", "key": key})
            assert len(curve["loss"]["train"]["x"]) == 4
        everything = call(store, "events.get_task_events", {"task": "t1", "batch_size": 100})
        assert everything["total"] == 13 and len(everything["events"]) == 13
        assert sum(event["@timestamp"] is None for event in everything["events"]) == 8
        log = call(store, "events.get_task_log", {"task": "t1", "from_timestamp": T0 + 1})
        assert log["total"] == 5
        assert call(store, "events.get_task_latest_scalar_values", {"task": "t1"})["metrics"]
        assert call(store, "events.get_scalar_metric_data", {"task": "t1", "metric": "loss"})["total"] == 8
    finally:
        store.close()


def _reference(points: dict[int, float], samples: int, blocks: bool) -> tuple[list[int], list[float]]:
    """The buckets the documented rule gives, computed point by point."""
    low, high = min(points), max(points)
    plan = block_plan(len(points), low, high, samples) if blocks else None
    _, width, start = plan or (1, bucket_width(len(points), low, high, samples), low)
    buckets: dict[int, list[float]] = {}
    for x in sorted(points):
        buckets.setdefault(start + (x - start) // width * width, []).append(points[x])
    return list(buckets), [sum(v) / len(v) for v in buckets.values()]


@pytest.mark.parametrize("samples", [1, 7, 100, 999, 1000, 1001, MAX_HISTOGRAM_SAMPLES])
@pytest.mark.parametrize("read_limit", ["default", 0])  # 0: every series long enough for blocks
def test_histograms_keep_within_samples_and_average_buckets(
    store: Store, samples: int, read_limit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if read_limit != "default":
        monkeypatch.setattr(event_store, "POINTS_READ_LIMIT", read_limit)
    rng = random.Random(samples)
    iterations = sorted(rng.sample(range(-50, 5000), 1000))  # gaps, a negative start
    points = {it: round(rng.uniform(-1, 1), 6) for it in iterations}
    order = list(points.items())
    rng.shuffle(order)  # batches out of order, one point reported twice
    batches = [order[:400], order[400:], [order[0]]]
    for batch in batches:
        call(store, "events.add_batch", raw=lines([scalar(it, value) for it, value in batch]))
    curve = scalar_histogram(store, "t1", "iter", samples)["loss"]["train"]
    assert len(curve["x"]) <= samples
    expected_x, expected_y = _reference(points, samples, blocks=True)
    assert curve["x"] == expected_x and curve["y"] == pytest.approx(expected_y)
    by_time = scalar_histogram(store, "t1", "timestamp", samples)["loss"]["train"]
    expected_x, expected_y = _reference(points, samples, blocks=False)  # clearml-server's width exactly
    assert len(by_time["x"]) <= samples and by_time["x"][0] == T0 + iterations[0]
    assert by_time["x"] == [T0 + x for x in expected_x] and by_time["y"] == pytest.approx(expected_y)


def test_block_sums_keep_at_least_two_thirds_of_clearml_servers_points() -> None:
    for points, samples in [(25_000, 2000), (250_000, 2000), (10_000, 6000), (9, 1), (3000, 7)]:
        exact = math.ceil(points / bucket_width(points, 0, points - 1, samples))
        plan = block_plan(points, 0, points - 1, samples)
        kept = exact if plan is None else (points - 1 - plan[2]) // plan[1] + 1
        assert exact * 2 / 3 <= kept <= samples


def test_histogram_defaults_and_bounds_follow_clearml_server(store: Store) -> None:
    call(store, "events.add_batch", raw=lines([scalar(i, 1.0) for i in range(2500)]))
    call(store, "events.add_batch", raw=lines([scalar(i, 1.0, variant="short") for i in range(1999)]))
    curves = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1"})["loss"]
    assert len(curves["train"]["x"]) <= 2000 < 2500  # default samples: 2000
    assert curves["short"]["x"] == list(range(1999))  # fewer points than samples: every one
    for samples in (0, MAX_HISTOGRAM_SAMPLES + 1, 2**70, "10", 1.5):
        err = refused(store, "events.scalar_metrics_iter_histogram", {"task": "t1", "samples": samples})
        assert "samples" in err.message
    filtered = {"task": "t1", "metrics": [{"metric": "loss", "variants": ["short"]}], "samples": 10}
    assert list(call(store, "events.scalar_metrics_iter_histogram", filtered)["loss"]) == ["short"]


def _scroll(kind: str, task: str = "t1", **state: Any) -> str:
    """A scroll id as a client could craft it: the right kind and task, made-up contents."""
    return base64.urlsafe_b64encode(json.dumps({"k": kind, "t": task, **state}).encode()).decode()


HISTOGRAM = "events.scalar_metrics_iter_histogram"
LOG_AFTER_BEYOND_64_BITS = _scroll("task_events", after=[2**64])
METRIC_AFTER_A_LIST = _scroll("metric_data", after=["v", [1]])
IMAGE_BOUND_BEYOND_64_BITS = _scroll("debug_images", "*", bounds={"x": 2**64})
BAD_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (HISTOGRAM, {"task": "t1", "metrics": "loss"}),
    (HISTOGRAM, {"task": "t1", "metrics": [{"metric": 5}]}),
    (HISTOGRAM, {"task": "t1", "metrics": [{"metric": "l", "variants": "v"}]}),
    (HISTOGRAM, {"task": "t1", "key": ["iter"]}),
    ("events.multi_task_scalar_metrics_iter_histogram", {"tasks": ["t1"], "metrics": [{"variants": [1]}]}),
    ("events.get_task_events", {"task": "t1", "scroll_id": 5}),
    ("events.get_task_events", {"task": "t1", "scroll_id": "%%%"}),
    ("events.get_task_events", {"task": "t1", "scroll_id": _scroll("task_events", phase="x")}),
    ("events.get_task_events", {"task": "t1", "scroll_id": _scroll("task_events", phase=9)}),
    ("events.get_task_events", {"task": "t1", "event_type": "log", "scroll_id": LOG_AFTER_BEYOND_64_BITS}),
    ("events.get_task_events", {"task": "t1", "scroll_id": _scroll("task_events", after=[{}])}),
    ("events.get_scalar_metric_data", {"task": "t1", "metric": "m", "scroll_id": METRIC_AFTER_A_LIST}),
    ("events.get_task_plots", {"task": "t1", "scroll_id": _scroll("plots", offset="0")}),
    ("events.get_task_plots", {"task": "t1", "iters": 2**64}),
    ("events.get_task_log", {"task": "t1", "from_timestamp": 2**64}),
    ("events.get_task_log", {"task": "t1", "batch_size": 2**70}),
    ("events.clear_task_log", {"task": "t1", "threshold_sec": 2**63}),
    ("events.debug_images", {"metrics": [{"task": "t1", "metric": 3}]}),
    ("events.debug_images", {"metrics": [{"task": "t1", "variants": 3}]}),
    ("events.debug_images", {"metrics": [{"task": "t1"}], "scroll_id": IMAGE_BOUND_BEYOND_64_BITS}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body"), BAD_REQUESTS)
def test_mistyped_and_oversized_fields_answer_400(store: Store, name: str, body: dict[str, Any]) -> None:
    call(store, "events.add_batch", raw=lines([scalar(0, 1.0)]))
    refused(store, name, body)


def _summaries(store: Store) -> tuple[list[Any], list[Any]]:
    with store.reading() as conn:
        return tuple(
            sorted(tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table}"))
            for table in ("event_series", "event_blocks")
        )


def test_series_counts_and_block_sums_stay_exact(store: Store, tmp_path: Path) -> None:
    call(store, "events.add_batch", raw=lines([scalar(i, 1.0) for i in (5, 6, 7, -70)]))
    call(store, "events.add_batch", raw=lines([scalar(i, 2.0, ts=T0 - 10 * i) for i in (1, 6, 9)]))  # 6 again
    call(store, "events.add_batch", raw=lines([scalar(i, 0.5, variant="b") for i in range(-3, 200, 3)]))
    series, blocks = _summaries(store)
    assert series[1][4:] == (6, -70, 9, T0 - 90, T0 + 7)  # ("t1", 0, "loss", "train", ...)
    assert ("t1", 0, "loss", "b", 64, -1, 1, 1, 0.5) in blocks  # iteration -3 alone in [-64, 0)
    # the same sums as a data dir from before these tables gets at its first start
    store.close()
    db = sqlite3.connect(tmp_path / "server.db")
    db.execute("DROP TABLE event_series")
    db.commit()
    db.close()
    reopened = Store(tmp_path / "server.db")
    events.init_store(reopened)
    try:
        assert _summaries(reopened) == (series, blocks)
    finally:
        reopened.close()
    store = Store(tmp_path / "server.db")
    events.init_store(store)
    with store.transaction() as tx:
        tx.put("tasks", {"id": "t1", "name": "task", "status": "in_progress"})
    call(store, "events.delete_for_task", {"task": "t1"})
    assert _summaries(store) == ([], [])
    store.close()


def test_iso_times_are_exact_to_the_millisecond(store: Store) -> None:
    stamps = {0: 0, 1: 65_382_126_307_418, 2: event_store.MAX_TIMESTAMP_MS}  # a float of seconds gave .417
    call(store, "events.add_batch", raw=lines([scalar(it, 1.0, ts=ts) for it, ts in stamps.items()]))
    expected = ["1970-01-01T00:00:00.000Z", "4041-11-16T13:45:07.418Z", "9999-12-31T23:59:59.999Z"]
    curve = call(store, "events.scalar_metrics_iter_histogram", {"task": "t1", "key": "iso_time"})
    assert curve["loss"]["train"]["x"] == expected
    stored = call(store, "events.get_task_events", {"task": "t1"})["events"]
    assert [event["@timestamp"] for event in stored] == expected


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"type": "log"}\n' + b'{"a": ' * 100_000])
def test_deeply_nested_json_lines_answer_400(store: Store, raw: bytes) -> None:
    assert "not valid JSON" in refused(store, "events.add_batch", raw=raw).message
