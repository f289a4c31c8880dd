"""Run the embedded server: REST API, file server and web UI, three uvicorn servers in one event loop.

``python -m clearml_local.server --data DIR [--host H] [--api-port P] [--files-port Q] [--web-port W]``
(what ``fleetfl server start`` runs). Port 0 picks a free port. Once the servers listen, the actual
address is written to ``<data>/server.json`` (pid, host, ports, URLs), removed again on a clean exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from clearml_local.app import create_api_app
from clearml_local.auth import Authenticator, load_or_create_credentials
from clearml_local.clientconf import client_env, write_conf
from clearml_local.datadir import PRIVATE_UMASK, open_private, secure_tree
from clearml_local.services.tasks import requeue_orphans
from clearml_local.settings import (
    CONF_FILE,
    DB_FILE,
    DEFAULT_API_PORT,
    DEFAULT_FILES_PORT,
    DEFAULT_HOST,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_WEB_PORT,
    FILES_DIR,
    STATE_FILE,
    default_data_dir,
    read_state,
)
from clearml_local.store import Store
from clearml_local.web import create_web_app

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Where the server keeps its state and where it listens."""

    data_dir: Path
    host: str = DEFAULT_HOST
    api_port: int = DEFAULT_API_PORT
    files_port: int = DEFAULT_FILES_PORT
    web_port: int = DEFAULT_WEB_PORT
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    path = data_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(state, indent=2))
    os.replace(tmp, path)


class _Server(uvicorn.Server):
    """uvicorn server whose signals the runner handles (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every reply (headers and body written separately) waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _file_app(config: ServerConfig, authenticator: Authenticator) -> Any:
    try:
        module = importlib.import_module("clearml_local.fileserver")
    except ModuleNotFoundError as exc:
        if exc.name != "clearml_local.fileserver":
            raise
        log.warning("clearml_local.fileserver is missing: no file server")
        return None
    root = config.data_dir / FILES_DIR
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return module.create_file_app(root, authenticator, max_upload_bytes=config.max_upload_bytes)


async def serve(config: ServerConfig) -> None:
    """Run both servers until SIGTERM/SIGINT; write ``server.json`` and ``clearml.conf`` once they
    listen. Before that: the data dir is made private (umask 077, 0700/0600, see
    :mod:`clearml_local.datadir`), stale temp files go, orphaned queued tasks are re-queued."""
    data_dir = config.data_dir
    os.umask(PRIVATE_UMASK)
    secure_tree(data_dir)
    credentials = load_or_create_credentials(data_dir)
    authenticator = Authenticator(credentials)
    store = Store(data_dir / DB_FILE)
    requeued = requeue_orphans(store)
    if requeued:
        log.warning("re-queued %d task(s) whose queue entry was handed out before a crash", len(requeued))
    api_sock = _bind(config.host, config.api_port)
    files_sock = _bind(config.host, config.files_port)
    api_port, files_port = api_sock.getsockname()[1], files_sock.getsockname()[1]
    web_sock = _bind(config.host, config.web_port)
    web_port = web_sock.getsockname()[1]
    urls = {
        "api_host": _url(config.host, api_port),
        "files_host": _url(config.host, files_port),
        "web_host": _url(config.host, web_port),
    }
    api_app = create_api_app(
        store, authenticator, {"credentials": credentials, **urls}, max_request_bytes=config.max_request_bytes
    )
    servers = [_Server(uvicorn.Config(api_app, log_level="warning", access_log=False, lifespan="off"))]
    sockets = [api_sock]
    web_settings = {"credentials": credentials, "files_dir": str(data_dir / FILES_DIR), **urls}
    web_app = create_web_app(store, authenticator, web_settings)
    servers.append(_Server(uvicorn.Config(web_app, log_level="warning", access_log=False, lifespan="off")))
    sockets.append(web_sock)
    file_app = _file_app(config, authenticator)
    if file_app is not None:
        servers.append(
            _Server(uvicorn.Config(file_app, log_level="warning", access_log=False, lifespan="off"))
        )
        sockets.append(files_sock)
    else:
        files_sock.close()

    loop = asyncio.get_running_loop()

    def _stop() -> None:
        for srv in servers:
            srv.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    tasks = [
        asyncio.create_task(srv.serve(sockets=[sock])) for srv, sock in zip(servers, sockets, strict=True)
    ]
    while not all(srv.started for srv in servers):
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    ports = {"api_port": api_port, "files_port": files_port, "web_port": web_port}
    state = {"pid": os.getpid(), "host": config.host, **ports, **urls}
    if all(srv.started for srv in servers):
        write_conf(data_dir / CONF_FILE, client_env(urls, credentials), with_credentials=False)
        _write_state(data_dir, state)
        log.info(
            "ClearML API on %s, files on %s, web UI on %s, data in %s",
            urls["api_host"],
            urls["files_host"],
            urls["web_host"],
            data_dir,
        )
    try:
        await asyncio.gather(*tasks)
    finally:
        current = read_state(data_dir)
        if current and current.get("pid") == os.getpid():
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        store.close()


def run(config: ServerConfig) -> None:
    """Blocking: run the server in this process until it is told to stop."""
    asyncio.run(serve(config))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clearml_local.server``."""
    parser = argparse.ArgumentParser(prog="clearml_local.server", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="data dir (default $FLEETFL_HOME/clearml)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    parser.add_argument("--files-port", type=int, default=DEFAULT_FILES_PORT)
    parser.add_argument("--web-port", type=int, default=DEFAULT_WEB_PORT)
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULT_MAX_REQUEST_BYTES / 1024**2,
        help="cap on one REST API request body in MiB (default %(default).0f); larger ones get 413",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        data_dir=(args.data or default_data_dir()).resolve(),
        host=args.host,
        api_port=args.api_port,
        files_port=args.files_port,
        web_port=args.web_port,
        max_request_bytes=max(1, int(args.max_request_mb * 1024**2)),
    )
    run(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
