"""The get_all query language: filters, tag operators, ordering, paging, MongoDB-style projections."""

from __future__ import annotations

import pytest

from clearml_local.api import ApiError
from clearml_local.query import project, run_query
from clearml_local.store import metric_hash

M, V = metric_hash("loss"), metric_hash("total")
DOCS = [
    {"id": "a", "name": "train-1", "status": "completed", "tags": ["x", "y"], "system_tags": [],
     "runtime": {},
     "last_metrics": {M: {V: {"value": 0.5}}}, "execution": {"artifacts": [{"key": "k", "uri": "u"}]}},
    {"id": "b", "name": "train-2", "status": "stopped", "tags": ["x"], "system_tags": ["archived"],
     "runtime": {"version": "1"}, "last_metrics": {M: {V: {"value": 10}}}},
    {"id": "c", "name": "eval", "status": "completed", "tags": [], "system_tags": ["hidden"],
     "last_metrics": {M: {V: {"value": 2}}}},
]  # fmt: skip


def ids(body: dict) -> list[str]:
    return [d["id"] for d in run_query(DOCS, body)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "^train"}, ["a", "b"]),
        ({"name": "TRAIN-1"}, ["a"]),  # case-insensitive, like clearml-server
        ({"status": ["completed"]}, ["a", "c"]),
        ({"status": "stopped"}, ["b"]),
        ({"tags": ["y"]}, ["a"]),
        ({"tags": ["x", "missing"]}, ["a", "b"]),  # default: any
        ({"tags": ["__$all", "x", "y"]}, ["a"]),
        ({"tags": ["-y"]}, ["b", "c"]),
        ({"system_tags": ["__$not", "archived"]}, ["a", "c"]),
        ({"system_tags": ["__$all", "hidden", "__$not", "archived"]}, ["c"]),
        ({"runtime.version": "1"}, ["b"]),
        ({"id": ["c", "a"]}, ["a", "c"]),
        ({"tags": "x"}, ["a", "b"]),  # a scalar matches inside an array
    ],
)
def test_filters(body: dict, expected: list[str]) -> None:
    assert ids(body) == expected


def test_order_by_nested_numbers_both_directions_and_paging() -> None:
    key = f"last_metrics.{M}.{V}.value"
    assert ids({"order_by": [key]}) == ["a", "c", "b"]  # 0.5 < 2 < 10: numbers, not strings
    assert ids({"order_by": [f"-{key}"]}) == ["b", "c", "a"]
    assert ids({"order_by": [f"-{key}"], "page": 0, "page_size": 1}) == ["b"]
    assert ids({"order_by": [f"-{key}"], "page": 1, "page_size": 2}) == ["a"]


def test_multi_key_order() -> None:
    assert ids({"order_by": ["status", "-name"]}) == ["a", "c", "b"]  # completed (train-1, eval), stopped


def test_missing_values_sort_first_ascending() -> None:
    docs = [{"id": "1", "v": 3}, {"id": "2"}, {"id": "3", "v": 1}]
    assert [d["id"] for d in run_query(docs, {"order_by": ["v"]})] == ["2", "3", "1"]
    assert [d["id"] for d in run_query(docs, {"order_by": ["-v"]})] == ["1", "3", "2"]


def test_projection_keeps_empty_parent_objects_like_mongodb() -> None:
    """A task with runtime {} asked for runtime.version comes back with runtime {} (notes, item 1)."""
    assert project(DOCS[0], ["runtime.version", "name"]) == {"id": "a", "name": "train-1", "runtime": {}}
    assert project(DOCS[1], ["runtime.version"]) == {"id": "b", "runtime": {"version": "1"}}
    assert project(DOCS[2], ["runtime.version"]) == {"id": "c"}  # no runtime at all: left out
    assert project(DOCS[0], [f"last_metrics.{M}.{V}"]) == {
        "id": "a",
        "last_metrics": {M: {V: {"value": 0.5}}},
    }


def test_projection_into_arrays_and_exclusion() -> None:
    assert project(DOCS[0], ["execution.artifacts.key"]) == {
        "id": "a",
        "execution": {"artifacts": [{"key": "k"}]},
    }
    excluded = project(DOCS[0], ["-last_metrics", "-execution.artifacts"])
    assert "last_metrics" not in excluded and excluded["execution"] == {}
    assert "last_metrics" in DOCS[0] and DOCS[0]["execution"]["artifacts"]  # the source is untouched


@pytest.mark.parametrize(
    "body",
    [{"name": "(bad"}, {"order_by": [3]}, {"page_size": -1}, {"only_fields": "name"}, {"tags": 5}],
)
def test_bad_queries_are_400(body: dict) -> None:
    with pytest.raises(ApiError) as err:
        run_query(DOCS, body)
    assert err.value.result_code == 400
