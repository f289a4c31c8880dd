"""Start and stop local ``clearml-agent`` daemons that run FleetFL tasks in the project's environment.

clearml-agent lives in its own environment (``.venv-agent``: it pins ``requests<2.33``, Flower needs
``>=2.33``). It runs in venv mode but reuses the project's Python instead of building a venv per
task (``CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=<python>``, ``CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1``:
no pip, no network), with the repository root on the tasks' ``PYTHONPATH``
(``CLEARML_AGENT_EXTRA_PYTHON_PATH``): component tasks carry only their entry script (see
``components/common.py``).

Each daemon gets a folder ``$FLEETFL_HOME/agents/<slug>/`` with its ``clearml.conf`` (the server
settings of the current SDK configuration plus private agent folders), ``agent.log`` and
``agent.json`` (pid, worker id, queue): :func:`stop_agents` reads those records, so ``fleetfl agent
stop`` works from another shell. A stopped daemon unregisters its worker from the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from queues.definitions import ensure_queue

LOG = logging.getLogger(__name__)

#: Variables by which the ClearML SDK marks a process (and its children) as belonging to a task that
#: already runs: ``Task.init`` sets them in the calling process. A daemon that inherits them passes them
#: to every task it runs, whose ``Task.init`` then believes it is a sub-process of that foreign task and
#: returns a do-nothing stub (clearml 2.1.12, ``Task.init`` / ``__is_subprocess``).
INHERITED_TASK_VARS = ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID", "CLEARML_TASK_ID", "TRAINS_TASK_ID")


def task_free_environment(**extra: str) -> dict[str, str]:
    """This process' environment without :data:`INHERITED_TASK_VARS`, plus ``extra``.

    For child processes that create or run ClearML tasks of their own (agents, a pipeline
    controller started in a subprocess).
    """
    env = {key: value for key, value in os.environ.items() if key not in INHERITED_TASK_VARS}
    env.update(extra)
    return env


REPO_ROOT = Path(__file__).resolve().parent.parent
_STOP_WAIT_S = 20.0


class AgentError(ValueError):
    """An agent cannot be started (no clearml-agent, bad arguments)."""


@dataclass
class AgentRecord:
    """A daemon started by :func:`start_agents` (stored as ``agent.json`` in its folder)."""

    worker_id: str
    queue: str
    pid: int
    folder: str
    started: float

    @property
    def log_path(self) -> Path:
        """The daemon's output."""
        return Path(self.folder) / "agent.log"

    def alive(self) -> bool:
        """Whether the daemon process is still running (and is still a clearml-agent)."""
        return _is_agent_process(self.pid)

    def log(self) -> str:
        """The daemon's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def agents_dir() -> Path:
    """Where agent folders live: ``$FLEETFL_HOME/agents`` (default ``<repo>/.fleetfl/agents``)."""
    home = Path(os.environ.get("FLEETFL_HOME") or REPO_ROOT / ".fleetfl")
    return home / "agents"


def find_agent_binary() -> Path:
    """``clearml-agent``: ``$FLEETFL_AGENT_BIN``, then ``<repo>/.venv-agent/bin``, then ``PATH``.

    Raises:
        AgentError: none found (``make install`` creates ``.venv-agent``).
    """
    candidates = [
        os.environ.get("FLEETFL_AGENT_BIN"),
        str(REPO_ROOT / ".venv-agent" / "bin" / "clearml-agent"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("clearml-agent")
    if found:
        return Path(found)
    raise AgentError(
        "clearml-agent not found: run `make install` (creates .venv-agent) or set FLEETFL_AGENT_BIN"
    )


def agent_conf_text(work_dir: Path) -> str:
    """An agent ``clearml.conf``: the SDK's current one (if any) plus this agent's private folders."""
    base = ""
    # the SDK's own lookup: $CLEARML_CONFIG_FILE, else ~/clearml.conf (CLEARML_* variables, which the
    # daemon inherits, override both)
    config_file = os.environ.get("CLEARML_CONFIG_FILE") or str(Path.home() / "clearml.conf")
    if Path(config_file).is_file():
        base = Path(config_file).read_text(encoding="utf-8")
    return base + (
        "\n# Added by `fleetfl agent start`: private folders of this daemon.\n"
        "sdk {\n"
        "    development { report_use_subprocess: false }\n"
        f'    storage {{ cache {{ default_base_dir: "{work_dir / "cache"}" }} }}\n'
        "}\n"
        "agent {\n"
        f'    venvs_dir: "{work_dir / "venvs"}"\n'
        f'    vcs_cache {{ enabled: false, path: "{work_dir / "vcs"}" }}\n'
        f'    pip_download_cache {{ enabled: false, path: "{work_dir / "pip"}" }}\n'
        f'    docker_pip_cache: "{work_dir / "docker-pip"}"\n'
        "    venvs_cache { max_entries: 0 }\n"
        "    package_manager { type: pip }\n"
        "}\n"
    )


def start_agents(
    queue: str,
    count: int = 1,
    *,
    python: str | Path | None = None,
    state_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    name_prefix: str = "fleetfl",
) -> list[AgentRecord]:
    """Start ``count`` ``clearml-agent daemon --queue <queue>`` processes (detached).

    Args:
        queue: queue the daemons serve (created first if missing).
        count: how many daemons (each runs one task at a time).
        python: the environment the tasks run in (default: this process' Python, i.e. ``.venv``).
        state_dir: parent of the agents' folders (default :func:`agents_dir`).
        extra_env: more environment variables for the daemons and their tasks.
        name_prefix: worker ids are ``<prefix>-<host>:<queue>-<random>``.

    Returns:
        One record per daemon; the server lists each as a worker within a few seconds.
    """
    if not isinstance(count, int) or count < 1:
        raise AgentError(f"--count {count}: must be a positive integer")
    if not queue or not queue.strip():
        raise AgentError("--queue: a queue name is required")
    binary = find_agent_binary()
    # Created here, once: daemons started together with ``--create-queue`` race, and every one that
    # loses exits with "Queue with this name already exists" (seen in CI with two client agents).
    ensure_queue(queue)
    python = Path(python or sys.executable)
    folder_root = Path(state_dir) if state_dir else agents_dir()
    host = socket.gethostname().split(".")[0] or "localhost"
    records = []
    for _ in range(count):
        worker_id = f"{name_prefix}-{host}:{queue}-{uuid.uuid4().hex[:6]}"
        folder = folder_root / worker_id.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "clearml.conf"
        conf.write_text(agent_conf_text(folder), encoding="utf-8")
        conf.chmod(0o600)  # holds the access key and secret
        env = {
            **task_free_environment(),
            "CLEARML_CONFIG_FILE": str(conf),
            "CLEARML_WORKER_ID": worker_id,
            "CLEARML_WORKER_NAME": worker_id,
            "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": str(python),
            "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
            "CLEARML_AGENT_EXTRA_PYTHON_PATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        env.pop("VIRTUAL_ENV", None)  # the agent must not think it runs inside the project's venv
        argv = [str(binary), "--config-file", str(conf), "daemon", "--queue", queue]
        with open(folder / "agent.log", "ab") as log:
            process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        record = AgentRecord(
            worker_id=worker_id, queue=queue, pid=process.pid, folder=str(folder), started=time.time()
        )
        (folder / "agent.json").write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
        LOG.info(
            "started clearml-agent %s on queue %s (pid %d, log %s)", worker_id, queue, process.pid, folder
        )
        records.append(record)
    return records


def list_agents(state_dir: Path | None = None) -> list[AgentRecord]:
    """Records of the daemons started from this machine's state dir (alive or not)."""
    root = Path(state_dir) if state_dir else agents_dir()
    records = []
    for path in sorted(root.glob("*/agent.json")):
        try:
            records.append(AgentRecord(**json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, TypeError):
            LOG.warning("ignoring unreadable agent record %s", path)
    return records


def stop_agents(
    queue: str | None = None,
    worker_ids: list[str] | None = None,
    state_dir: Path | None = None,
    timeout_s: float = _STOP_WAIT_S,
) -> list[AgentRecord]:
    """Stop daemons started by :func:`start_agents` (all, or those of ``queue`` / ``worker_ids``).

    Each daemon gets SIGTERM (it unregisters its worker and ends the task it runs), then SIGKILL
    after ``timeout_s``. Records of stopped daemons are removed. Returns the records stopped.
    """
    stopped = []
    for record in list_agents(state_dir):
        if queue and record.queue != queue:
            continue
        if worker_ids and record.worker_id not in worker_ids:
            continue
        if record.alive():
            _terminate_group(record.pid, timeout_s)
            LOG.info("stopped clearml-agent %s (pid %d)", record.worker_id, record.pid)
        Path(record.folder, "agent.json").unlink(missing_ok=True)
        stopped.append(record)
    return stopped


def wait_for_workers(worker_ids: list[str], timeout_s: float = 60.0, present: bool = True) -> bool:
    """Wait until every worker id is (``present``) or is no longer (not ``present``) on the server."""
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    deadline = time.monotonic() + timeout_s
    wanted = set(worker_ids)
    while True:
        ids = {worker.id for worker in client.workers.get_all() or []}
        if (wanted <= ids) if present else not (wanted & ids):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)


def _is_agent_process(pid: int) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return (
            process.is_running()
            and process.status() != psutil.STATUS_ZOMBIE
            and any("clearml-agent" in part or "clearml_agent" in part for part in process.cmdline())
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _terminate_group(pid: int, timeout_s: float) -> None:
    """SIGTERM the daemon's process group (daemon and the task it runs), then SIGKILL what is left."""
    import psutil

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        psutil.Process(pid).wait(timeout_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        LOG.warning("clearml-agent pid %d ignored SIGTERM for %.0f s: killing it", pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
