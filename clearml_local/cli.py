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
        run(ServerConfig(data_dir, args.host, args.api_port, args.files_port, args.web_port))
        return 0
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "clearml_local.server", "--data", str(data_dir), "--host", args.host]
    command += ["--api-port", str(args.api_port), "--files-port", str(args.files_port)]
    command += ["--web-port", str(args.web_port)]
    with open(data_dir / "server.log", "ab") as log:
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

    creds = load_or_create_credentials(data_dir)
    state = srv.read_state(data_dir) or {
        "api_host": f"http://{srv.DEFAULT_HOST}:{srv.DEFAULT_API_PORT}",
        "files_host": f"http://{srv.DEFAULT_HOST}:{srv.DEFAULT_FILES_PORT}",
        "web_host": f"http://{srv.DEFAULT_HOST}:{srv.DEFAULT_WEB_PORT}",
    }
    return {
        "CLEARML_API_HOST": state["api_host"],
        "CLEARML_WEB_HOST": state["web_host"],
        "CLEARML_FILES_HOST": state["files_host"],
        "CLEARML_API_ACCESS_KEY": creds.access_key,
        "CLEARML_API_SECRET_KEY": creds.secret_key,
    }


def clearml_conf(settings: dict[str, str]) -> str:
    """A clearml.conf (HOCON) for the SDK and clearml-agent."""
    return f"""# Written by `fleetfl server env --write-conf`: the embedded FleetFL ClearML server.
api {{
    api_server: "{settings["CLEARML_API_HOST"]}"
    web_server: "{settings["CLEARML_WEB_HOST"]}"
    files_server: "{settings["CLEARML_FILES_HOST"]}"
    credentials {{
        access_key: "{settings["CLEARML_API_ACCESS_KEY"]}"
        secret_key: "{settings["CLEARML_API_SECRET_KEY"]}"
    }}
}}
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


def write_conf(path: Path, settings: dict[str, str]) -> None:
    """Write a clearml.conf with mode 0600 (it holds the secret key), atomically."""
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(clearml_conf(settings))
    os.replace(tmp, path)


def cmd_env(args: argparse.Namespace) -> int:
    """Print ``export`` lines for the SDK/agent; optionally write a clearml.conf."""
    import shlex

    settings = client_settings(_data_dir(args))
    for key, value in settings.items():
        print(f"export {key}={shlex.quote(value)}")
    if args.write_conf is not None:
        write_conf(args.write_conf, settings)
        print(f"export CLEARML_CONFIG_FILE={shlex.quote(str(args.write_conf.expanduser().resolve()))}")
    return 0
