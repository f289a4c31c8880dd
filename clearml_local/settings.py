"""Defaults shared by the server and its CLI (a light module: the CLI imports it at start-up)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8008
DEFAULT_FILES_PORT = 8081
#: The web UI's port (what ClearML derives from the API port 8008, so the SDK's printed links work).
DEFAULT_WEB_PORT = 8080
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3
#: Cap on one REST API request body (the SDK sends event batches of at most 15 MB).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024**2
#: Deepest ``[``/``{`` nesting accepted in a request body (the SDK's own documents stay under 20).
MAX_JSON_DEPTH = 100
STATE_FILE = "server.json"
DB_FILE = "server.db"
FILES_DIR = "files"
#: The clearml.conf the server keeps for its clients (``fleetfl server env`` points at it).
CONF_FILE = "clearml.conf"
LOG_FILE = "server.log"


def default_data_dir() -> Path:
    """``$FLEETFL_HOME/clearml`` (``FLEETFL_HOME`` defaults to ``<repo>/.fleetfl``)."""
    from federated.runtime import DEFAULT_STATE_DIR

    return Path(os.environ.get("FLEETFL_HOME") or DEFAULT_STATE_DIR) / "clearml"


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The ``server.json`` of a server started on ``data_dir``, or ``None``."""
    path = Path(data_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
