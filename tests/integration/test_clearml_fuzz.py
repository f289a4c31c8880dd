"""Fuzz every endpoint with schemathesis: no 500, no hang, and the server keeps answering.

A dedicated server process (fuzzing fills its database with junk); a few generated bodies per
endpoint and mode here, many more in ``benchmarks/server_fuzz.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from benchmarks.server_fuzz import fuzz_server, server_errors
from clearml_local.api import ENDPOINTS
from clearml_local.app import load_handlers
from tests.integration.test_clearml_durability import ServerProcess

#: Generated bodies per endpoint and mode (positive, negative): ~450 requests.
EXAMPLES = 2
#: Values of the type-swap pass (each field of each endpoint gets each): ~1,900 requests.
SWAP_VALUES = (True, 2**63 - 1, [1], {"a": 1})
#: A request unanswered after this long counts as a hang.
REQUEST_TIMEOUT_S = 10.0


def test_openapi_document_lists_every_endpoint_with_the_sdk_schemas(clearml_server) -> None:
    load_handlers()
    reply = requests.get(f"{clearml_server.api_host}/openapi.json", timeout=30)  # no credentials
    assert reply.status_code == 200
    document = reply.json()
    assert document["openapi"].startswith("3.")
    assert {path.rsplit("/", 1)[-1] for path in document["paths"]} == set(ENDPOINTS)
    get_all = document["paths"]["/v2.23/tasks.get_all"]["post"]["requestBody"]["content"]["application/json"]
    assert "array" in get_all["schema"]["properties"]["order_by"]["type"]
    batch = document["paths"]["/v2.23/events.add_batch"]["post"]["requestBody"]["content"]
    assert batch["application/json-lines"]["schema"]["items"]["anyOf"]  # one of the event schemas


@pytest.mark.slow  # ~2,900 requests: ~50 s on 2 cores
def test_fuzzing_every_endpoint_finds_no_500_and_no_hang(tmp_path: Path) -> None:
    load_handlers()
    server = ServerProcess(tmp_path / "data")
    try:
        report = fuzz_server(
            server.api,
            f"Bearer {server.token}",
            EXAMPLES,
            REQUEST_TIMEOUT_S,
            swap_values=SWAP_VALUES,
            swap_depth=1,
        )
        assert report.operations == len(ENDPOINTS)
        assert report.requests >= report.operations * EXAMPLES
        errors = server_errors(tmp_path / "data" / "server.log")
        assert report.failures == [], (report.failures, errors)
        assert requests.get(f"{server.api}/debug.ping", timeout=REQUEST_TIMEOUT_S).status_code == 200
    finally:
        server.stop()
