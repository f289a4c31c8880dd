"""Fuzz every endpoint of the embedded ClearML server with schemathesis; prints one JSON object.

The server describes its endpoints at ``/openapi.json`` (request bodies from the SDK's schemas).
Two passes, every request sent with the server's credentials: a type-swap pass sends each field of
each endpoint with a value of every JSON type (the object ids pointing at real objects, so that the
handler gets past them); then, for each operation, schemathesis generates bodies that fit the schema
(positive) and bodies that do not (negative: wrong types, missing fields, odd values), some of
their ids again swapped for real ones. The invariant: no answer is a 500 (or any 5xx), no request
takes longer than ``--timeout`` seconds, and the server still answers ``debug.ping`` after each
operation.

Usage::

    .venv/bin/python benchmarks/server_fuzz.py [--examples 200] [--timeout 10] [--seed 0]

Prints ``{"operations", "requests", "failures": [...], "status_counts", "seconds"}``; exit code 1
if anything failed. The suite runs the same :func:`fuzz_server` with a few examples per endpoint
(``tests/integration/test_clearml_fuzz.py``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@dataclass
class FuzzReport:
    """What a fuzzing run found."""

    operations: int = 0
    requests: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    status_counts: collections.Counter = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "requests": self.requests,
            "failures": self.failures,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
        }


def _json_lines(ctx: Any, value: Any) -> dict[str, Any]:
    """schemathesis serializer for ``application/json-lines`` (``events.add_batch``): one line per item."""
    items = value if isinstance(value, list) else [value]
    return {"data": "\n".join(json.dumps(item) for item in items).encode()}


#: Body fields that name one object, and the kind of object (what :func:`_real_objects` creates).
_ID_FIELDS = {"task": "task", "parent": "task", "project": "project", "queue": "queue", "model": "model"}
#: Body fields that name several objects.
_ID_LIST_FIELDS = {
    "tasks": "task",
    "ids": "task",
    "projects": "project",
    "queues": "queue",
    "models": "model",
}


def _real_objects(api_host: str, http: requests.Session) -> dict[str, str]:
    """Create a project, a task with a scalar event, a queue and a model; return their ids by kind."""

    def call(name: str, body: dict[str, Any]) -> dict[str, Any]:
        return http.post(f"{api_host}/v2.23/{name}", json=body, timeout=30).json()["data"]

    suffix = os.urandom(4).hex()
    project = call("projects.create", {"name": f"fuzz-{suffix}", "description": ""})["id"]
    task = call("tasks.create", {"name": f"fuzz-{suffix}", "type": "training", "project": project})["id"]
    event = {
        "type": "training_stats_scalar",
        "task": task,
        "iter": 1,
        "metric": "m",
        "variant": "v",
        "value": 1.0,
    }
    http.post(f"{api_host}/v2.23/events.add", json=event, timeout=30)
    queue = call("queues.create", {"name": f"fuzz-{suffix}"})["id"]
    model = call("models.create", {"name": f"fuzz-{suffix}", "uri": "file:///m.pt", "task": task})["id"]
    return {"task": task, "project": project, "queue": queue, "model": model}


def _with_real_ids(body: Any, objects: dict[str, str], swaps: list[bool]) -> Any:
    """``body`` with id fields pointing at real objects where ``swaps`` says so (else untouched):
    random ids stop most handlers at "invalid id", before the code that reads the other fields."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for index, key in enumerate(sorted(body)):
        if not swaps[index % len(swaps)]:
            continue
        if key in _ID_FIELDS and isinstance(body[key], str):
            body[key] = objects[_ID_FIELDS[key]]
        elif key in _ID_LIST_FIELDS and isinstance(body[key], list):
            body[key] = [objects[_ID_LIST_FIELDS[key]]]
    return body


#: Values of every JSON type (and edge values) that the type-swap pass puts into each field.
SWAP_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**63 - 1,
    1.5,
    "",
    "x",
    "-x",
    [],
    ["x"],
    [1],
    [[1]],
    [{"a": 1}],
    {},
    {"a": 1},
    {"$regex": 1},
)


def _variants(schema: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    """``schema`` and its ``anyOf``/``oneOf``/``allOf`` variants, references resolved."""
    found, pending = [], [schema]
    while pending:
        node = pending.pop()
        if "$ref" in node:
            node = components.get(node["$ref"].rsplit("/", 1)[-1], {})
        found.append(node)
        for key in ("anyOf", "oneOf", "allOf"):
            pending.extend(item for item in node.get(key) or () if isinstance(item, dict))
    return found


def field_paths(schema: dict[str, Any], components: dict[str, Any], depth: int = 2) -> list[tuple[str, ...]]:
    """The property paths of a body schema down to ``depth`` levels (``("script", "repository")``),
    through ``anyOf``/``oneOf``/``allOf`` variants (``events.add`` is one of several event schemas)."""
    paths: set[tuple[str, ...]] = set()
    for node in _variants(schema, components):
        for key, sub in (node.get("properties") or {}).items():
            paths.add((key,))
            if depth > 1 and isinstance(sub, dict):
                paths.update((key, *rest) for rest in field_paths(sub, components, depth - 1))
    return sorted(paths)


def _nest(path: tuple[str, ...], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


def type_swaps(
    api_host: str,
    http: requests.Session,
    path: str,
    document: dict[str, Any],
    objects: dict[str, str],
    report: FuzzReport,
    timeout: float,
    values: tuple[Any, ...] = SWAP_VALUES,
    depth: int = 2,
) -> None:
    """Send every field the schema of endpoint ``path`` names (nested ones down to ``depth``
    levels) with each of ``values``, the object ids pointing at the real ``objects`` (so that the
    handler gets past them)."""
    name = path.rsplit("/", 1)[-1]
    content = document["paths"][path]["post"]["requestBody"]["content"]
    if "application/json" not in content:
        return
    fields = field_paths(content["application/json"]["schema"], document["components"]["schemas"], depth)
    base = {key: objects[kind] for key, kind in _ID_FIELDS.items() if (key,) in fields}
    for field_path in fields:
        for value in values:
            body = {**base, **_nest(field_path, value)}
            report.requests += 1
            try:
                reply = http.post(f"{api_host}{path}", json=body, timeout=timeout)
            except requests.Timeout:
                _record(report, name, body, f"no answer within {timeout} s")
                continue
            report.status_counts[reply.status_code] += 1
            if reply.status_code >= 500:
                _record(report, name, body, f"HTTP {reply.status_code}: {reply.text[:200]}")


def _record(report: FuzzReport, operation: str, body: Any, problem: str) -> None:
    if sum(f["operation"] == operation for f in report.failures) < 3:  # a few per operation
        report.failures.append({"operation": operation, "problem": problem, "body": repr(body)[:300]})


def fuzz_server(
    api_host: str,
    authorization: str,
    examples: int,
    request_timeout: float = 10.0,
    seed: int = 0,
    operations: list[str] | None = None,
    swap_values: tuple[Any, ...] = SWAP_VALUES,
    swap_depth: int = 2,
) -> FuzzReport:
    """Send ``examples`` positive and ``examples`` negative bodies to every endpoint of the server.

    Args:
        api_host: the server's REST API URL.
        authorization: the ``Authorization`` header to send (``Bearer <token>``).
        examples: generated bodies per endpoint and mode.
        request_timeout: a request still unanswered after this many seconds is a failure (a hang).
        seed: hypothesis seed (the same seed replays the same bodies).
        operations: endpoint names to fuzz (default: all).
        swap_values: the values of the :func:`type_swaps` pass (every field with each; none: no pass).
        swap_depth: how deep into nested objects the type-swap pass goes.
    """
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase, strategies
    from schemathesis import GenerationMode

    schemathesis.serializer("application/json-lines")(_json_lines)
    document = requests.get(f"{api_host}/openapi.json", timeout=30).json()
    if operations is not None:
        document["paths"] = {p: v for p, v in document["paths"].items() if p.rsplit("/", 1)[-1] in operations}
    schema = schemathesis.openapi.from_dict(document)
    http = requests.Session()
    http.headers["Authorization"] = authorization
    report = FuzzReport()
    objects: dict[str, str] = {}
    settings = hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        name = operation.definition.raw.get("operationId") or operation.path
        report.operations += 1
        objects.update(_real_objects(api_host, http))  # afresh: the last endpoint may have deleted them
        if swap_values:
            type_swaps(
                api_host,
                http,
                operation.path,
                document,
                objects,
                report,
                request_timeout,
                swap_values,
                swap_depth,
            )
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings
            @hypothesis.seed(seed)
            @hypothesis.given(
                case=strategy, swaps=strategies.lists(strategies.booleans(), min_size=1, max_size=4)
            )
            def send(case: Any, swaps: list[bool]) -> None:
                name = case.operation.definition.raw["operationId"]
                case.body = _with_real_ids(case.body, objects, swaps)
                report.requests += 1
                try:
                    reply = case.call(base_url=api_host, session=http, timeout=request_timeout)
                except requests.Timeout:
                    _record(report, name, case.body, f"no answer within {request_timeout} s")
                    return
                except requests.ConnectionError as exc:
                    _record(report, name, case.body, f"connection failed: {exc}")
                    return
                report.status_counts[reply.status_code] += 1
                if reply.status_code >= 500:
                    _record(report, name, case.body, f"HTTP {reply.status_code}: {reply.text[:200]}")

            # Unsatisfiable: e.g. no negative body exists for an endpoint that takes any object
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                send()
        try:
            alive = requests.get(f"{api_host}/debug.ping", timeout=request_timeout).status_code == 200
        except requests.RequestException:
            alive = False
        if not alive:
            _record(report, name, None, "debug.ping did not answer afterwards")
            break
    return report


def server_errors(log_path: Path) -> list[str]:
    """``endpoint: the exception and where it was raised`` for each traceback in the server log."""
    found: list[str] = []
    endpoint, where = "", ""
    for line in log_path.read_text(errors="replace").splitlines():
        if "internal error in " in line:
            endpoint = line.rsplit("internal error in ", 1)[-1]
        elif line.startswith('  File "') and "clearml_local" in line:
            where = line.strip()
        elif endpoint and line and not line.startswith((" ", "Traceback", "The above", "During")):
            found.append(f"{endpoint}: {line} ({where})")
            endpoint = where = ""
    return sorted(set(found))


def login(api_host: str, data_dir: Path) -> str:
    """``Bearer <token>`` for the server whose data dir is ``data_dir``."""
    creds = json.loads((data_dir / "credentials.json").read_text())
    reply = requests.get(
        f"{api_host}/auth.login", auth=(creds["access_key"], creds["secret_key"]), timeout=30
    )
    return f"Bearer {reply.json()['data']['token']}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=200, help="bodies per endpoint and mode")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a request is a hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="endpoint names (default: all)")
    parser.add_argument("--swap-depth", type=int, default=3, help="nesting levels of the type-swap pass")
    args = parser.parse_args()
    from tests.fixtures.clearml import start_server, stop_process

    with tempfile.TemporaryDirectory(prefix="fleetfl-fuzz-") as tmp:
        data_dir = Path(tmp) / "data"
        process, state = start_server(data_dir)
        try:
            started = time.monotonic()
            report = fuzz_server(
                state["api_host"],
                login(state["api_host"], data_dir),
                args.examples,
                args.timeout,
                args.seed,
                args.only,
                swap_depth=args.swap_depth,
            )
            seconds = time.monotonic() - started
        finally:
            stop_process(process)
        errors = server_errors(data_dir / "server.log")
    summary = {**report.as_dict(), "server_errors": errors, "examples_per_mode": args.examples}
    print(json.dumps({**summary, "seconds": round(seconds, 1)}, indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
