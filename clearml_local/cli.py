"""``fleetfl server start|stop|status|env``: run and use the embedded ClearML-compatible server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from clearml_local.clientconf import clearml_conf, client_env, write_conf

__all__ = ["clearml_conf", "client_settings", "register", "running_state", "stop_server", "write_conf"]

LOG = logging.getLogger(__name__)

#: How long ``start --detach`` and ``stop`` wait for the server.
WAIT_S = 15.0


def register(subparsers: Any) -> None:
    """Add the ``server`` command group."""
    from clearml_local import settings as srv

    parser = subparsers.add_parser("server", help="the embedded ClearML-compatible server")
    commands = parser.add_subparsers(dest="server_command", metavar="ACTION", required=True)

    def data_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, default=None, help="data dir (default $FLEETFL_HOME/clearml)")

    start = commands.add_parser("start", help="start the server (foreground unless --detach)")
    data_arg(start)
    start.add_argument("--host", default=srv.DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    start.add_argument("--api-port", type=int, default=srv.DEFAULT_API_PORT, help="REST API port (8008)")
    start.add_argument(
        "--files-port", type=int, default=srv.DEFAULT_FILES_PORT, help="file server port (8081)"
    )
    start.add_argument("--web-port", type=int, default=srv.DEFAULT_WEB_PORT, help="web UI port (8080)")
    start.add_argument(
        "--max-request-mb",
        type=float,
        default=srv.DEFAULT_MAX_REQUEST_BYTES / 1024**2,
        help="cap on one REST API request body in MiB (default %(default).0f); larger ones get 413",
    )
    start.add_argument("--detach", action="store_true", help="run in the background and return")
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser("stop", help="stop a server started on --data")
    data_arg(stop)
    stop.set_defaults(func=cmd_stop)

    status = commands.add_parser("status", help="is the server on --data running?")
    data_arg(status)
    status.set_defaults(func=cmd_status)

    env = commands.add_parser(
        "env", help="print `export CLEARML_...` lines (eval them) / write a clearml.conf"
    )
    data_arg(env)
    env.add_argument(
        "--write-conf", type=Path, default=None, metavar="PATH", help="also write a clearml.conf"
    )
    env.set_defaults(func=cmd_env)


def _data_dir(args: argparse.Namespace) -> Path:
    from clearml_local.settings import default_data_dir

    return (args.data or default_data_dir()).resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ping(api_host: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_host}/debug.ping", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running_state(data_dir: Path) -> dict[str, Any] | None:
    """``server.json`` of a live server on ``data_dir`` (its process exists), else ``None``."""
    from clearml_local.settings import read_state

    state = read_state(data_dir)
    if state is None or not _alive(int(state.get("pid", -1))):
        return None
    return state


def cmd_start(args: argparse.Namespace) -> int:
    """Start the server in the foreground, or detached (waits until it answers)."""
    from clearml_local.server import ServerConfig, run

    data_dir = _data_dir(args)
    if running_state(data_dir) is not None:
        raise ValueError(
            f"a server is already running on {data_dir} (fleetfl server status --data {data_dir})"
        )
    if not args.detach:
        from federated.runtime import configure_offline

        configure_offline(with_ultralytics=False)
        max_request = max(1, int(args.max_request_mb * 1024**2))
        run(
            ServerConfig(
                data_dir,
                args.host,
                args.api_port,
                args.files_port,
                args.web_port,
                max_request_bytes=max_request,
            )
        )
        return 0
    from clearml_local.datadir import make_private_dir, open_private
    from clearml_local.settings import LOG_FILE

    make_private_dir(data_dir)
    command = [sys.executable, "-m", "clearml_local.server", "--data", str(data_dir), "--host", args.host]
    command += ["--api-port", str(args.api_port), "--files-port", str(args.files_port)]
    command += ["--web-port", str(args.web_port)]
    command += ["--max-request-mb", str(args.max_request_mb)]
    with os.fdopen(open_private(data_dir / LOG_FILE), "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = running_state(data_dir)
        if state is not None and state.get("pid") == process.pid:
            print(
                f"ClearML API {state['api_host']}  files {state['files_host']}  "
                f"web UI {state['web_host']}  data {data_dir}"
            )
            return 0
        if process.poll() is not None:
            raise ValueError(
                f"the server exited with code {process.returncode}: see {data_dir / 'server.log'}"
            )
        time.sleep(0.1)
    process.terminate()
    raise ValueError(f"the server did not start within {WAIT_S:.0f} s: see {data_dir / 'server.log'}")


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the server on ``--data`` (SIGTERM, then wait)."""
    data_dir = _data_dir(args)
    pid = stop_server(data_dir)
    print(f"stopped server pid {pid}" if pid else f"no server running on {data_dir}")
    return 0


def stop_server(data_dir: Path, wait_s: float = WAIT_S, kill_after_s: float | None = None) -> int | None:
    """Stop the server running on ``data_dir``; return its pid (``None`` if none was running).

    SIGTERM first; if it is still alive after ``wait_s`` it is killed (SIGKILL) when
    ``kill_after_s`` allows ``kill_after_s`` more seconds of grace, else a ``ValueError`` is raised.
    """
    state = running_state(data_dir)
    if state is None:
        return None
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    if _wait_exit(pid, wait_s):
        return pid
    if kill_after_s is None:
        raise ValueError(f"server pid {pid} did not stop within {wait_s:.0f} s")
    if not _wait_exit(pid, kill_after_s):
        LOG.warning("server pid %d ignored SIGTERM; killing it", pid)
        os.kill(pid, signal.SIGKILL)
    return pid


def _wait_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def cmd_status(args: argparse.Namespace) -> int:
    """Print whether the server runs and answers; exit code 0 if so, 1 if not."""
    data_dir = _data_dir(args)
    state = running_state(data_dir)
    if state is None:
        print(f"not running (data {data_dir})")
        return 1
    answering = _ping(state["api_host"])
    print(
        json.dumps(
            {
                "running": True,
                "answering": answering,
                "pid": state["pid"],
                "api_host": state["api_host"],
                "files_host": state["files_host"],
                "data_dir": str(data_dir),
            }
        )
    )
    return 0 if answering else 1


def client_settings(data_dir: Path) -> dict[str, str]:
    """API/web/files hosts and keys for clients of the server on ``data_dir``.

    Uses the running server's address if there is one, else the default ports. Creates the
    credentials if the server never ran (so that a config can be written before the first start).
    """
    from clearml_local import settings as srv
    from clearml_local.auth import load_or_create_credentials
    from clearml_local.datadir import make_private_dir

    make_private_dir(data_dir)
    creds = load_or_create_credentials(data_dir)
    state = srv.read_state(data_dir) or {
        "api_host": f"http://{srv.DEFAULT_HOST}:{srv.DEFAULT_API_PORT}",
        "files_host": f"http://{srv.DEFAULT_HOST}:{srv.DEFAULT_FILES_PORT}",
        "web_host": f"http://{srv.DEFAULT_HOST}:{srv.DEFAULT_WEB_PORT}",
    }
    return client_env(state, creds)


def cmd_env(args: argparse.Namespace) -> int:
    """Print ``export`` lines for the SDK/agent, ``CLEARML_CONFIG_FILE`` included: the data dir's
    clearml.conf (no keys), or with ``--write-conf PATH`` a full one written there."""
    import shlex

    from clearml_local.settings import CONF_FILE

    data_dir = _data_dir(args)
    settings = client_settings(data_dir)
    for key, value in settings.items():
        print(f"export {key}={shlex.quote(value)}")
    if args.write_conf is not None:
        conf = write_conf(args.write_conf, settings)
    else:
        conf = write_conf(data_dir / CONF_FILE, settings, with_credentials=False)
    print(f"export CLEARML_CONFIG_FILE={shlex.quote(str(conf))}")
    return 0
