"""Fuzz every endpoint of the embedded ClearML server with schemathesis; prints one JSON object.

The server describes its endpoints at ``/openapi.json`` (request bodies from the SDK's schemas).
For each operation, schemathesis generates bodies that fit the schema (positive) and bodies that do
not (negative: wrong types, missing fields, odd values), and each one is sent with the server's
credentials. The invariant: no answer is a 500 (or any 5xx), no request takes longer than
``--timeout`` seconds, and the server still answers ``debug.ping`` after each operation.

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
) -> FuzzReport:
    """Send ``examples`` positive and ``examples`` negative bodies to every endpoint of the server.

    Args:
        api_host: the server's REST API URL.
        authorization: the ``Authorization`` header to send (``Bearer <token>``).
        examples: generated bodies per endpoint and mode.
        request_timeout: a request still unanswered after this many seconds is a failure (a hang).
        seed: hypothesis seed (the same seed replays the same bodies).
        operations: endpoint names to fuzz (default: all).
    """
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode

    schemathesis.serializer("application/json-lines")(_json_lines)
    schema = schemathesis.openapi.from_url(f"{api_host}/openapi.json")
    http = requests.Session()
    http.headers["Authorization"] = authorization
    report = FuzzReport()
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
        if operations is not None and name not in operations:
            continue
        report.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings
            @hypothesis.seed(seed)
            @hypothesis.given(case=strategy)
            def send(case: Any) -> None:
                name = case.operation.definition.raw["operationId"]
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
            )
            seconds = time.monotonic() - started
        finally:
            stop_process(process)
    print(
        json.dumps(
            {**report.as_dict(), "examples_per_mode": args.examples, "seconds": round(seconds, 1)}, indent=2
        )
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
