"""The web UI over HTTP: login, cookie and CSRF rules, the paths the SDK prints, actions, 404s.

Runs against the session's real embedded server (``clearml_server``) with a task reported by the
real clearml SDK (``reported_task``).
"""

from __future__ import annotations

import json
import re
import urllib.parse

import httpx

from tests.fixtures.clearml import ClearMLServer
from tests.ui.conftest import ReportedTask, login


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def test_pages_and_actions_refused_without_login(
    clearml_server: ClearMLServer, web: httpx.Client, reported_task: ReportedTask
) -> None:
    state = json.loads((clearml_server.data_dir / "server.json").read_text())
    assert state["web_host"] == clearml_server.web_host == f"http://127.0.0.1:{state['web_port']}"
    assert state["web_port"] not in (0, state["api_port"], state["files_port"])
    page = _path(reported_task.page)
    reply = web.get(page)
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/login?next={urllib.parse.quote(page, safe='')}"
    assert web.get(f"/data/tasks/{reported_task.task_id}/scalars").status_code == 401
    assert web.get("/files/anything").status_code == 401
    refused = web.post(f"/actions/tasks/{reported_task.task_id}/clone", data={"csrf_token": "x"})
    assert refused.status_code == 401
    web.cookies.set("fleetfl_session", "abc.def")
    assert web.get("/projects").status_code == 303  # a forged cookie is no session


def test_login_checks_the_server_keys_and_sets_a_strict_cookie(
    clearml_server: ClearMLServer, web: httpx.Client
) -> None:
    wrong = web.post("/login", data={"access_key": clearml_server.access_key, "secret_key": "nope"})
    assert wrong.status_code == 401
    assert "Wrong access key or secret key" in wrong.text
    assert "fleetfl_session" not in wrong.headers.get("set-cookie", "")
    huge = web.post("/login", data={"access_key": "x" * 10_000, "secret_key": "y"})
    assert huge.status_code == 413  # refused before the body is read
    ok = web.post(
        "/login",
        data={
            "access_key": clearml_server.access_key,
            "secret_key": clearml_server.secret_key,
            "next": "//evil.example/x",
        },
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/projects"  # never another host
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    page = web.get("/projects")
    assert page.status_code == 200
    assert clearml_server.secret_key not in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    log = (clearml_server.data_dir / "server.log").read_text(errors="replace")
    assert clearml_server.secret_key not in log


def test_state_changes_need_the_csrf_token(
    clearml_server: ClearMLServer, web: httpx.Client, reported_task: ReportedTask
) -> None:
    token = login(clearml_server, web)
    url = f"/actions/tasks/{reported_task.task_id}/clone"
    assert web.post(url, data={"name": "no-token"}).status_code == 403
    assert web.post(url, data={"name": "bad-token", "csrf_token": token[:-2] + "xx"}).status_code == 403
    done = web.post(url, data={"name": "with-token", "csrf_token": token})
    assert done.status_code == 303
    clone_page = web.get(done.headers["location"])
    assert clone_page.status_code == 200 and "with-token" in clone_page.text
    logout = web.post("/logout", data={"csrf_token": token})
    assert logout.status_code == 303
    assert web.get("/projects").status_code == 303  # the session is gone


def test_the_paths_the_sdk_prints_open_the_task(
    clearml_server: ClearMLServer, web: httpx.Client, reported_task: ReportedTask
) -> None:
    assert reported_task.page.startswith(clearml_server.web_host + "/projects/")
    assert reported_task.page.endswith(f"/tasks/{reported_task.task_id}/output/log")
    login(clearml_server, web)
    page = web.get(_path(reported_task.page))
    assert page.status_code == 200
    assert "federate-like" in page.text and 'id="console"' in page.text
    base = _path(reported_task.page).removesuffix("/output/log")
    old_style = base.replace("/tasks/", "/experiments/")
    for tail, marker in (
        ("execution", "Uncommitted changes"),
        ("hyper-params/hyper-param/Args", 'name="hp:Args/rounds"'),
        ("info-output/metrics/scalar", 'id="scalar-charts"'),
        ("info-output/metrics/plots", "pr_curve"),
        ("artifacts/output-model", "summary.json"),
        ("models", "Output models"),
    ):
        for prefix in (base, old_style):
            reply = web.get(f"{prefix}/{tail}")
            assert reply.status_code == 200, (prefix, tail)
            assert marker in reply.text, (prefix, tail)
    missing = web.get("/projects/*/tasks/0123456789abcdef/output/log")
    assert missing.status_code == 404
    assert "Invalid task id" in missing.text and "Traceback" not in missing.text
    assert web.get("/no/such/page").status_code == 404
    assert web.get("/models/nope").status_code == 404
    assert web.get("/pipelines/*/experiments/nope").status_code == 404


def test_experiments_table_and_chart_data(
    clearml_server: ClearMLServer, web: httpx.Client, reported_task: ReportedTask
) -> None:
    login(clearml_server, web)
    table = web.get("/projects/*/experiments", params={"name": "federate-like", "status": "completed"})
    assert table.status_code == 200
    row = re.search(rf'<tr data-id="{reported_task.task_id}">(.*?)</tr>', table.text, re.S)
    assert row, table.text[-3000:]
    assert "0.3000" in row.group(1)  # the last global/map50_95
    none = web.get("/projects/*/experiments", params={"name": "federate-like", "status": "failed"})
    assert f'data-id="{reported_task.task_id}"' not in none.text
    by_metric = web.get("/projects/*/experiments", params={"sort": "-metric:global/map50_95"})
    assert by_metric.status_code == 200
    charts = web.get(f"/data/tasks/{reported_task.task_id}/scalars").json()
    assert charts["global"]["map50_95"]["x"] == [1, 2, 3]
    assert charts["global"]["map50_95"]["y"] == [0.1, 0.2, 0.30000000000000004]
    log = web.get(f"/data/tasks/{reported_task.task_id}/console").json()
    assert any("round 3: mAP50-95 0.300" in line["msg"] for line in log["lines"])
    assert web.get("/static/plotly.min.js").headers["content-type"].startswith("application/javascript")


def test_debug_samples_and_artifacts_through_the_files_proxy(
    clearml_server: ClearMLServer, web: httpx.Client, reported_task: ReportedTask
) -> None:
    login(clearml_server, web)
    base = f"/projects/*/tasks/{reported_task.task_id}"
    debug = web.get(f"{base}/info-output/debugImages").text
    image = re.search(r'<img src="(/files/[^"]+)"', debug)
    assert image, debug[-2000:]
    got = web.get(image.group(1))
    assert got.status_code == 200 and len(got.content) > 0
    artifacts = web.get(f"{base}/artifacts").text
    link = re.search(r'<a href="(/files/[^"]+)" download>', artifacts)
    assert link and "summary" in artifacts, artifacts[-2000:]
    assert web.get(link.group(1)).status_code == 200
    assert web.get("/files/../credentials.json").status_code in (400, 404)


def test_actions_follow_the_server_state_machine(
    clearml_server: ClearMLServer, web: httpx.Client, reported_task: ReportedTask
) -> None:
    token = login(clearml_server, web)
    task = reported_task.task_id
    here = f"/projects/*/tasks/{task}/hyper-params"
    refused = web.post(
        f"/actions/tasks/{task}/hyperparams", data={"csrf_token": token, "next": here, "hp:Args/rounds": "9"}
    )
    assert refused.status_code == 303
    shown = web.get(refused.headers["location"])
    assert "Invalid task status" in shown.text  # the server's reason, on the page
    cloned = web.post(f"/actions/tasks/{task}/clone", data={"csrf_token": token, "name": "edit-me"})
    clone_url = cloned.headers["location"].split("?")[0]
    clone_id = clone_url.split("/tasks/")[1].split("/")[0]
    saved = web.post(
        f"/actions/tasks/{clone_id}/hyperparams",
        data={"csrf_token": token, "next": clone_url, "hp:Args/rounds": "5", "hp:Args/lr": "0.01"},
    )
    assert "notice=1+hyperparameter" in saved.headers["location"]
    assert 'name="hp:Args/rounds" value="5"' in web.get(clone_url).text
    queue = httpx.post(
        f"{clearml_server.api_host}/queues.create",
        json={"name": "web-ui-test"},
        auth=(clearml_server.access_key, clearml_server.secret_key),
    ).json()["data"]["id"]
    enq = web.post(f"/actions/tasks/{clone_id}/enqueue", data={"csrf_token": token, "queue": queue})
    assert "enqueued" in urllib.parse.unquote_plus(enq.headers["location"])
    queues = web.get("/queues").text
    assert "web-ui-test" in queues and "edit-me" in queues
    again = web.post(
        f"/actions/tasks/{clone_id}/enqueue", data={"csrf_token": token, "queue": queue, "next": "/queues"}
    )
    assert "error=Task+already+queued" in again.headers["location"]
    removed = web.post(f"/actions/queues/{queue}/remove", data={"csrf_token": token, "task": clone_id})
    assert removed.status_code == 303
    assert _status(web, clone_id) == "created"

    config = web.get(clone_url).text
    assert "imgsz" in config and 'name="name" value="federated"' in config
    edited = web.post(
        f"/actions/tasks/{clone_id}/configuration",
        data={"csrf_token": token, "next": clone_url, "name": "federated", "value": "imgsz: 96\nbatch: 4\n"},
    )
    assert "configuration" in urllib.parse.unquote_plus(edited.headers["location"])
    assert "imgsz: 96" in web.get(clone_url).text
    web.post(f"/actions/tasks/{clone_id}/tags", data={"csrf_token": token, "tags": "candidate, web"})
    assert '<span class="tag">web</span>' in web.get(f"/projects/*/tasks/{clone_id}").text
    steps = [("enqueue", "queued"), ("abort", "stopped"), ("reset", "created")]
    steps += [("enqueue", "queued"), ("abort", "stopped"), ("publish", "published")]
    for action, status in steps:
        web.post(f"/actions/tasks/{clone_id}/{action}", data={"csrf_token": token, "queue": queue})
        assert _status(web, clone_id) == status, action
    refused = web.post(
        f"/actions/tasks/{clone_id}/reset",
        data={"csrf_token": token, "next": f"/projects/*/tasks/{clone_id}"},
    )
    assert "error=" in refused.headers["location"] and _status(web, clone_id) == "published"


def _status(web: httpx.Client, task_id: str) -> str:
    page = web.get(f"/projects/*/tasks/{task_id}").text
    return re.search(r'<h1>.*?<span class="status (\w+)">', page, re.S).group(1)


def _add_log_lines(server: ClearMLServer, task_id: str, lines: list[tuple[int, str]]) -> None:
    events = [
        {"type": "log", "task": task_id, "timestamp": ts, "msg": msg, "level": "info"} for ts, msg in lines
    ]
    reply = httpx.post(
        f"{server.api_host}/events.add_batch",
        content="\n".join(json.dumps(e) for e in events),
        headers={"Content-Type": "application/json-lines"},
        auth=(server.access_key, server.secret_key),
    ).json()
    assert reply["data"]["added"] == len(events), reply


def test_console_tail_reads_lines_sharing_a_millisecond_once(
    clearml_server: ClearMLServer, web: httpx.Client
) -> None:
    from tests.fixtures.clearml import api_call

    task_id = api_call(clearml_server, "tasks.create", {"name": "console-tail", "type": "training"})["data"][
        "id"
    ]
    now = 1_765_000_000_000
    _add_log_lines(clearml_server, task_id, [(now - 5, "first"), (now, "a0"), (now, "a1")])
    login(clearml_server, web)
    source = f"/data/tasks/{task_id}/console"

    def read(cursor: dict | None) -> dict:
        params = {} if cursor is None else {"after": cursor["after"], "skip": cursor["skip"]}
        reply = web.get(source, params=params)
        assert reply.status_code == 200, reply.text
        return reply.json()

    first = read(None)
    assert [line["msg"] for line in first["lines"]] == ["first", "a0", "a1"]
    assert first["cursor"] == {"after": now, "skip": 2} and not first["more"]
    # Written later in the same millisecond as the last line read, 600 of them (more than a batch).
    _add_log_lines(clearml_server, task_id, [(now, f"b{i}") for i in range(600)] + [(now + 1, "c")])
    shown, cursor, pages = [], first["cursor"], 0
    while True:
        page = read(cursor)
        shown += [line["msg"] for line in page["lines"]]
        cursor, pages = page["cursor"], pages + 1
        if not page["more"]:
            break
    assert shown == [f"b{i}" for i in range(600)] + ["c"]  # every line once, in order, paged
    assert pages >= 2 and cursor == {"after": now + 1, "skip": 1}
    assert read(cursor)["lines"] == []  # nothing new: nothing repeated
    assert web.get(source, params={"after": "soon"}).status_code == 400
