"""The get_all query language: filters, tag operators, ordering, paging, MongoDB-style projections."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from clearml_local.api import ApiError
from clearml_local.query import project, run_query
from clearml_local.query_filters import (
    MODEL_QUERY,
    PROJECT_QUERY,
    TASK_QUERY,
    _may_backtrack,
    pattern_matcher,
)
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
        ({"name": "TRAIN-1"}, []),  # case-sensitive: clearml-server compiles it without flags
        ({"name": "(?i)TRAIN-1"}, ["a"]),
        ({"name": ""}, ["a", "b", "c"]),  # an empty pattern is no filter
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


# --- clearml-server semantics: ranges, dates, multi-field, list operators, RE2 -------------------
TASKS = [
    {"id": "t1", "name": "alpha", "comment": "keep", "status": "completed", "last_iteration": 5,
     "created": "2026-01-10T08:00:00.000000+00:00", "status_changed": "2026-12-07T10:00:00.000000+00:00",
     "last_update": "2026-12-07T10:00:00.000000+00:00", "active_duration": 30,
     "last_metrics": {M: {V: {"value": 0.9, "max_value": 0.95, "min_value": 0.1}}}, "tags": ["a"]},
    {"id": "t2", "name": "beta", "comment": "drop", "status": "failed", "last_iteration": 50,
     "created": "2026-06-01T00:00:00.000000+00:00", "status_changed": "2026-12-08T00:00:01.000000+00:00",
     "last_update": "2026-12-08T00:00:01.000000+00:00", "last_change": "2026-01-01T00:00:00+00:00",
     "last_metrics": {M: {V: {"value": 0.2, "max_value": 0.3, "min_value": 0.2}}}, "tags": []},
    {"id": "t3", "name": "gamma", "status": "stopped", "last_iteration": 500,
     "created": "2025-12-31T23:59:59.000000+00:00", "status_changed": "2025-01-01T00:00:00.000000+00:00",
     "last_update": "2025-01-01T00:00:00.000000+00:00", "last_metrics": {}},
]  # fmt: skip
MAX = f"last_metrics.{M}.{V}.max_value"
MIN = f"last_metrics.{M}.{V}.min_value"


def task_ids(body: dict) -> list[str]:
    return [d["id"] for d in run_query(TASKS, body, options=TASK_QUERY)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # [min, max] ranges (both ends included; a null min also accepts a missing value)
        ({"last_iteration": [5, 50]}, ["t1", "t2"]),
        ({"last_iteration": [6, None]}, ["t2", "t3"]),
        ({"last_iteration": ["5", "5"]}, ["t1"]),  # numeric strings are numbers
        ({MAX: [0.9, None]}, ["t1"]),  # the TriggerScheduler's "above the threshold" filter
        ({MIN: [None, 0.15]}, ["t1", "t3"]),  # null min: also tasks without the metric (as MongoDB)
        ({"active_duration": [None, 40]}, ["t1", "t2", "t3"]),
        ({"created": ["2026-01-01", "2026-12-31"]}, ["t1", "t2"]),  # dates, not strings
        ({"created": ["2026-01-01T00:00:00Z", None]}, ["t1", "t2"]),
        # datetime fields: parsed conditions, a single string, a [min, max] pair, equality
        ({"status_changed": ["<2026-12-07 23:59:59"]}, ["t1", "t3"]),
        ({"status_changed": [">2026-12-07T23:00:00", "<2026-12-09"]}, ["t2"]),
        ({"last_update": ">2000-01-01T00:00:00"}, ["t1", "t2", "t3"]),
        ({"last_update": ">2026-12-08T00:00:00+00:00"}, ["t2"]),
        ({"last_update": ">2026-12-08T01:00:00+02:00"}, ["t2"]),  # zones are honoured
        ({"status_changed": ["2025-01-01", "2026-12-07T10:00:00"]}, ["t1", "t3"]),
        ({"status_changed": "2025-01-01T00:00:00"}, ["t3"]),
        # _or_/_any_/_all_ over several fields
        ({"_or_": {"fields": ["last_update", "last_change"], "datetime": [">2026-12-07T12:00:00"]}}, ["t2"]),
        ({"_any_": {"fields": ["name", "comment"], "pattern": "^(ALPHA|drop)$"}}, ["t1", "t2"]),
        ({"_all_": {"fields": ["name", "comment"], "pattern": "a"}}, []),
        ({"_and_": {"fields": ["name", "comment"], "pattern": "P"}}, ["t1"]),  # case-insensitive
        ({"_any_": {"fields": ["name"], "pattern": "GAMMA"}, "status": ["stopped"]}, ["t3"]),
        # list fields: operators and the legacy '-' prefix on any list field, null = empty
        ({"status": ["-completed"]}, ["t2", "t3"]),
        ({"status": ["__$not", "completed", "__$not", "failed"]}, ["t3"]),
        ({"id": ["__$any", "t1", "__$not", "t3"]}, ["t1", "t2"]),
        ({"tags": [None]}, ["t2", "t3"]),
        ({"tags": ["a", None]}, ["t1", "t2", "t3"]),
        ({"tags": ["__$all", "-a"]}, []),  # after an operator '-' is a literal character
        ({"filters": {"tags": {"any": {"include": ["a"]}}}}, ["t1"]),
        ({"filters": {"status": {"all": {"exclude": ["failed", "stopped"]}}}}, ["t1"]),
        # null-valued filters are no filters (the SDK sends "name": null, "project": null...)
        ({"name": None, "tags": None, "status": None}, ["t1", "t2", "t3"]),
    ],
)
def test_clearml_server_semantics(body: dict, expected: list[str]) -> None:
    assert task_ids(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"last_iteration": [1]},  # a range needs [min, max]
        {"last_iteration": [None, None]},
        {"last_iteration": ["x", 3]},
        {"created": ["not a date", None]},
        {"status_changed": ["<yesterday"]},  # clearml-server silently drops this condition
        {"_or_": {"fields": ["name"]}},  # neither pattern nor datetime
        {"_or_": {"fields": ["name"], "pattern": "a", "datetime": ">2020-01-01"}},
        {"_any_": "alpha"},
        {"status": ["__$bogus", "x"]},
        {"status": ["__$not"]},
        {"status": ["__$not", "__$not", "x"]},
        {"filters": {"tags": {"any": {"include": "a"}}}},
        {"name": r"(a)\1"},  # RE2: no backreferences
        {"name": ["alpha"]},
    ],
)
def test_malformed_filters_are_400_naming_the_field(body: dict) -> None:
    with pytest.raises(ApiError) as err:
        task_ids(body)
    assert err.value.result_code == 400
    assert next(iter(body)) in err.value.message


def test_pathological_pattern_runs_in_linear_time() -> None:
    """``(a+)+$`` over a long name backtracks for ages in Python's re; RE2 answers at once."""
    docs = [{"id": str(i), "name": "a" * 20_000 + "!"} for i in range(50)]
    done = threading.Event()
    result: list[list] = []

    def run() -> None:
        result.append(
            run_query(docs, {"name": "(a+)+$", "_any_": {"fields": ["name"], "pattern": "(a|aa)+$"}})
        )
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout=30), "the pattern did not finish (a backtracking engine?)"
    assert result == [[]]


def test_model_and_project_options() -> None:
    models = [
        {"id": "m1", "name": "best", "last_update": "2026-01-01T00:00:00+00:00",
         "last_change": "2026-12-08T00:00:00+00:00", "ready": True},
        {"id": "m2", "name": "old", "last_update": "2026-01-01T00:00:00+00:00", "ready": False},
    ]  # fmt: skip
    newer = {"_or_": {"fields": ["last_update", "last_change"], "datetime": [">2026-06-01T00:00:00+00:00"]}}
    assert [m["id"] for m in run_query(models, newer, options=MODEL_QUERY)] == ["m1"]
    assert [m["id"] for m in run_query(models, {**newer, "ready": False}, options=MODEL_QUERY)] == []
    projects = [{"id": "p1", "name": "a/b", "basename": "b", "description": "Fleet runs"}]
    assert run_query(projects, {"description": "Fleet"}, options=PROJECT_QUERY) == projects
    assert run_query(projects, {"description": "fleet"}, options=PROJECT_QUERY) == []


def test_keys_clearml_server_ignores_are_ignored() -> None:
    """The SDK's DatasetTrigger sends ``task_types``: clearml-server ignores it, so does this."""
    assert task_ids({"task_types": ["data_processing"], "status": ["completed"]}) == ["t1"]


def test_dates_accept_epoch_seconds_and_reject_nonsense() -> None:
    cutoff = datetime(2026, 12, 7, 12, tzinfo=UTC).timestamp()
    assert task_ids({"status_changed": [f">{cutoff:.0f}"]}) == ["t2"]
    with pytest.raises(ApiError):
        task_ids({"status_changed": [">99999999999999999999"]})


@pytest.mark.parametrize(
    ("pattern", "backtracks"),
    [
        ("^exact\\.name$", False),
        ("(?i)^abc[+*?|]x$", False),  # inside a class, and group syntax, are not operators
        ("[]a+]b", False),
        ("a+", True),
        ("(a|b)", True),
        ("a{2}", True),
        ("[a]b*", True),
        ("\\\\*", True),  # an escaped backslash, then a star
    ],
)
def test_only_patterns_without_repetition_or_alternation_skip_re2(pattern: str, backtracks: bool) -> None:
    assert _may_backtrack(pattern) is backtracks


def test_both_engines_agree_on_what_matches() -> None:
    for pattern, text, expected in [("^ab$", "ab", True), ("(?i)^AB", "abc", True), ("a+$", "caaa", True)]:
        assert pattern_matcher("name", pattern)(text) is expected
    assert pattern_matcher("name", "B", ignore_case=True)("abc") is True


def test_list_fields_through_arrays_of_objects() -> None:
    """``models.input.model`` reads through the array, as MongoDB does."""
    docs = [
        {"id": "x", "models": {"input": [{"model": "m1"}, {"model": "m2"}]}},
        {"id": "y", "models": {"input": []}},
    ]
    found = [d["id"] for d in run_query(docs, {"models.input.model": ["m2"]}, options=TASK_QUERY)]
    assert found == ["x"]
    found = [d["id"] for d in run_query(docs, {"models.input.model": ["-m2"]}, options=TASK_QUERY)]
    assert found == ["y"]


def test_the_first_operator_joins_the_groups_unless_a_term_came_first() -> None:
    """clearml-server: ``["__$any", ...]`` ORs the groups; a term before any operator means AND."""
    docs = [{"id": "1", "tags": ["a"]}, {"id": "2", "tags": ["b", "c"]}, {"id": "3", "tags": ["a", "c"]}]

    def found(tags: list) -> list[str]:
        return [d["id"] for d in run_query(docs, {"tags": tags}, options=TASK_QUERY)]

    assert found(["__$any", "b", "__$all", "a", "c"]) == ["2", "3"]  # b OR (a AND c)
    assert found(["b", "__$all", "a", "c"]) == []  # b AND (a AND c)
    assert found(["__$all", "a", "__$not", "c"]) == ["1"]
