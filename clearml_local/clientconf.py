"""The clearml.conf that points the ClearML SDK and clearml-agent at the embedded server.

The server keeps one in its data dir (``<data>/clearml.conf``, 0600, no secrets: the keys travel
in ``CLEARML_API_ACCESS_KEY``/``CLEARML_API_SECRET_KEY``) and ``fleetfl server env`` always exports
``CLEARML_CONFIG_FILE`` pointing at it. The file matters beyond the addresses: it turns off the SDK's
event-reporting subprocess (``sdk.development.report_use_subprocess``), which clearml 2.1.12
starts by default on Linux whatever the server answers, and which can make a finished script wait
~300 s at exit ("Event reporting sub-process lost"). ``--write-conf PATH`` writes a full copy
with the keys, for machines without the environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def client_env(urls: dict[str, str], credentials: Any) -> dict[str, str]:
    """The ``CLEARML_*`` settings of a client: ``urls`` has ``api_host``, ``web_host``,
    ``files_host`` (as in ``server.json``), ``credentials`` the access and secret key."""
    return {
        "CLEARML_API_HOST": urls["api_host"],
        "CLEARML_WEB_HOST": urls["web_host"],
        "CLEARML_FILES_HOST": urls["files_host"],
        "CLEARML_API_ACCESS_KEY": credentials.access_key,
        "CLEARML_API_SECRET_KEY": credentials.secret_key,
    }


def clearml_conf(settings: dict[str, str], with_credentials: bool = True) -> str:
    """A clearml.conf (HOCON) for the SDK and clearml-agent from ``CLEARML_*`` ``settings``."""
    credentials = (
        f"""    credentials {{
        access_key: "{settings["CLEARML_API_ACCESS_KEY"]}"
        secret_key: "{settings["CLEARML_API_SECRET_KEY"]}"
    }}
"""
        if with_credentials
        else "    # credentials: CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY (fleetfl server env)\n"
    )
    return f"""# Written by FleetFL for its embedded ClearML server.
api {{
    api_server: "{settings["CLEARML_API_HOST"]}"
    web_server: "{settings["CLEARML_WEB_HOST"]}"
    files_server: "{settings["CLEARML_FILES_HOST"]}"
{credentials}}}
sdk {{
    development {{
        # clearml 2.1.12's reporting subprocess can hang 300 s ("Event reporting sub-process lost")
        report_use_subprocess: false
    }}
}}
agent {{
    package_manager {{ type: pip }}
}}
"""


def write_conf(path: Path, settings: dict[str, str], with_credentials: bool = True) -> Path:
    """Write a clearml.conf with mode 0600, atomically; return its resolved path."""
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(clearml_conf(settings, with_credentials))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
