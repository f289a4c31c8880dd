"""Pure parts of the web UI: URL tails, metric lookups, the pipeline DAG, lineage, links, sessions."""

from __future__ import annotations

import json
import time

import pytest

from clearml_local.auth import Credentials
from clearml_local.store import metric_hash
from clearml_local.web import views
from clearml_local.web.session import SessionStore


@pytest.mark.parametrize(
    ("tail", "tab"),
    [
        ("output/log", "console"),
        ("", "info"),
        ("info-output", "info"),
        ("execution", "execution"),
        ("hyper-params/hyper-param/Args", "configuration"),
        ("info-output/metrics/scalar", "scalars"),
        ("info-output/metrics/plots", "plots"),
        ("info-output/debugImages", "debug"),
        ("artifacts/output-model/abc", "artifacts"),
        ("models", "models"),
        ("trials", "trials"),
        ("no-such-tab", "info"),
    ],
)
def test_url_tails_open_their_tab(tail: str, tab: str) -> None:
    assert views.tab_for_tail(tail) == tab


def test_last_value_and_summary_read_last_metrics() -> None:
    task = {
        "last_metrics": {
            metric_hash("global"): {
                metric_hash("map50_95"): {"metric": "global", "variant": "map50_95", "value": 0.25},
            }
        }
    }
    assert views.last_value(task, "global/map50_95") == 0.25
    assert views.last_value(task, "global/map50") is None
    assert views.last_value({}, "global/map50_95") is None
    assert views.metric_path("global/map50_95").startswith(f"last_metrics.{metric_hash('global')}.")
    assert [e["variant"] for e in views.metric_summary(task)] == ["map50_95"]


def test_param_diff_puts_differences_first() -> None:
    def task(rounds: str, lr: str) -> dict:
        return {
            "hyperparams": {
                "Args": {"rounds": {"name": "rounds", "value": rounds}, "lr": {"name": "lr", "value": lr}}
            }
        }

    rows = views.param_diff([task("1", "0.1"), task("2", "0.1"), {"hyperparams": {}}])
    assert [(r["name"], r["differs"]) for r in rows] == [("Args/lr", True), ("Args/rounds", True)]
    rows = views.param_diff([task("1", "0.1"), task("2", "0.1")])
    assert [(r["name"], r["differs"]) for r in rows] == [("Args/rounds", True), ("Args/lr", False)]


def test_pipeline_dag_layers_steps_after_their_parents() -> None:
    steps = {
        "version_data": {"parents": [], "job_id": "a", "status": "completed"},
        "tune": {"parents": ["version_data"], "job_id": "b"},
        "federate": {"parents": ["tune", "version_data"], "executed": "c"},
        "evaluate_register": {"parents": ["federate"]},
    }
    task = {"configuration": {"Pipeline": {"value": json.dumps(steps)}}}
    layers = views.pipeline_dag(task)
    assert [[s["name"] for s in layer] for layer in layers] == [
        ["version_data"],
        ["tune"],
        ["federate"],
        ["evaluate_register"],
    ]
    assert layers[2][0]["job_id"] == "c" and layers[3][0]["status"] == "pending"
    assert views.pipeline_dag({"configuration": {"Pipeline": {"value": "not json"}}}) == []
    assert views.pipeline_dag({}) == []
    looped = {"a": {"parents": ["b"]}, "b": {"parents": ["a"]}}
    assert (
        sum(
            len(layer)
            for layer in views.pipeline_dag({"configuration": {"Pipeline": {"value": json.dumps(looped)}}})
        )
        == 2
    )


def test_dataset_lineage_from_the_dataset_struct() -> None:
    struct = {
        "0": {
            "job_id": "child",
            "name": "shard",
            "version": "1.1.0",
            "status": "completed",
            "parents": ["1"],
        },
        "1": {"job_id": "root", "name": "shard", "version": "1.0.0", "status": "completed", "parents": []},
    }
    task = {"id": "child", "configuration": {"Dataset Struct": {"value": json.dumps(struct)}}}
    lineage = views.dataset_lineage(task)
    assert [(v["job_id"], v["parents"]) for v in lineage] == [("child", ["root"]), ("root", [])]
    assert views.dataset_lineage({"configuration": {"Dataset Struct": {"value": "[]"}}}) == []


def test_files_links_go_through_the_proxy_only_for_the_file_server() -> None:
    host = "http://127.0.0.1:8081"
    assert views.files_link(f"{host}/p/task.x/artifacts/a.json", host) == "/files/p/task.x/artifacts/a.json"
    assert views.files_link("http://localhost:8081/p/x.png", host) == "/files/p/x.png"
    assert views.files_link("s3://bucket/x", host) == "s3://bucket/x"
    assert views.files_link(None, host) is None
    assert views.compare_ids(["a,b", "c"] + ["x"] * 50)[:3] == ["a", "b", "c"]
    assert len(views.compare_ids(["x"] * 50)) == views.MAX_COMPARED


def test_sessions_are_signed_expire_and_check_csrf() -> None:
    creds = Credentials(access_key="AK", secret_key="secret", signing_key="signing")
    store = SessionStore(creds, ttl_s=0.2)
    assert store.check_keys("AK", "secret") and not store.check_keys("AK", "secret2")
    assert not store.check_keys("ak", "secret")
    session, cookie = store.open()
    assert store.find(cookie) == session
    session_id, _, signature = cookie.rpartition(".")
    assert store.find(f"{session_id}.{'0' * len(signature)}") is None  # forged signature
    assert store.find(session_id) is None and store.find(None) is None
    other = SessionStore(Credentials("AK", "secret", "another-signing-key"))
    assert other.find(cookie) is None  # another server's key
    assert store.csrf_ok(session, session.csrf_token) and not store.csrf_ok(session, "x")
    assert not store.csrf_ok(session, None)
    time.sleep(0.25)
    assert store.find(cookie) is None  # expired on the server
    fresh, fresh_cookie = store.open()
    store.close(fresh)
    assert store.find(fresh_cookie) is None


def test_chosen_metrics_order_the_charts_and_travel_in_links() -> None:
    assert views.chosen_metrics([]) == [views.DEFAULT_METRIC]
    assert views.chosen_metrics(["loss/train, global/map50", ""]) == ["loss/train", "global/map50"]
    assert len(views.chosen_metrics([",".join(f"m{i}/v" for i in range(20))])) == 8
    assert views.chart_titles_first(["global/map50_95", "loss/train", "global/map50"]) == "global,loss"
    assert views.metric_query([views.DEFAULT_METRIC]) == ""
    assert views.metric_query(["loss/train", "a b/c"]) == "?metric=loss%2Ftrain%2Ca+b%2Fc"


def test_metric_values_format_bytes_in_mb_and_large_numbers_grouped() -> None:
    assert views.fmt_metric(86_296_431.0, "bytes", "sent") == "86.30 MB"
    assert views.fmt_metric(2_500_000, "round", "bytes_sent") == "2.50 MB"
    assert views.fmt_metric(0.25, "global", "map50_95") == "0.2500"
    assert views.fmt_number(86_296_431.0) == "86,296,431" and views.fmt_number(7) == "7"
    assert views.fmt_number(None) == "" and views.fmt_number(True) == "True"


def test_task_counts_per_project() -> None:
    tasks = [{"project": "a"}, {"project": "a"}, {"project": "b"}, {"project": None}]
    assert views.task_counts(tasks, [{"project": "a"}]) == {
        "a": {"total": 2, "running": 1},
        "b": {"total": 1, "running": 0},
        "": {"total": 1, "running": 0},
    }
