"""``fleetfl server start --detach | status | env | stop`` on a temporary data dir."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.clearml import REPO_ROOT


def fleetfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow  # five CLI processes: ~5 s idle, 15 s on a loaded machine
def test_server_start_status_env_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    free_ports = ("--api-port", "0", "--files-port", "0", "--web-port", "0")
    started = fleetfl("server", "start", "--data", str(data), *free_ports, "--detach")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "ClearML API http://127.0.0.1:" in started.stdout

        status = fleetfl("server", "status", "--data", str(data))
        assert status.returncode == 0, status.stdout + status.stderr
        assert '"answering": true' in status.stdout

        again = fleetfl("server", "start", "--data", str(data), "--api-port", "0", "--detach")
        assert again.returncode == 2 and "already running" in again.stderr

        conf = tmp_path / "clearml.conf"
        env = fleetfl("server", "env", "--data", str(data), "--write-conf", str(conf))
        assert env.returncode == 0, env.stderr
        exports = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in env.stdout.splitlines()
        )
        assert set(exports) == {
            "CLEARML_API_HOST",
            "CLEARML_WEB_HOST",
            "CLEARML_FILES_HOST",
            "CLEARML_API_ACCESS_KEY",
            "CLEARML_API_SECRET_KEY",
            "CLEARML_CONFIG_FILE",
        }
        assert exports["CLEARML_API_HOST"] in started.stdout
        assert f"web UI {exports['CLEARML_WEB_HOST']}" in started.stdout  # the web port 0 resolved
        with urllib.request.urlopen(f"{exports['CLEARML_WEB_HOST']}/login", timeout=10) as login_page:
            assert login_page.status == 200 and b'name="secret_key"' in login_page.read()
        text = conf.read_text()
        assert "report_use_subprocess: false" in text and exports["CLEARML_API_SECRET_KEY"] in text
        assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
        assert exports["CLEARML_API_SECRET_KEY"] not in (data / "server.log").read_text()
    finally:
        stopped = fleetfl("server", "stop", "--data", str(data))
    assert stopped.returncode == 0, stopped.stderr
    assert fleetfl("server", "status", "--data", str(data)).returncode == 1
    assert not (data / "server.json").exists()


SDK_SCRIPT = """
import sys
from clearml import Task
task = Task.init(project_name="fleetfl-env", task_name="plain-env", auto_connect_frameworks=False)
for i in range(20):
    task.get_logger().report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
print("subprocess reporting:", bool(task._report_subprocess_enabled))
task.close()
sys.exit(0 if not task._report_subprocess_enabled else 3)
"""


@pytest.mark.slow  # a CLI process and an SDK script: ~9 s idle, 20 s on a loaded machine
def test_plain_server_env_makes_the_sdk_exit_promptly(clearml_server, tmp_path: Path) -> None:
    """``eval "$(fleetfl server env)"`` without ``--write-conf``: the exports include the data dir's
    clearml.conf, which turns off the SDK's event-reporting subprocess (which could hang ~300 s at
    exit); a real SDK script reports scalars and exits 0 within the timeout."""
    env = fleetfl("server", "env", "--data", str(clearml_server.data_dir))
    assert env.returncode == 0, env.stderr
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in env.stdout.splitlines()
    )
    conf = Path(exports["CLEARML_CONFIG_FILE"])
    assert conf == clearml_server.data_dir / "clearml.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert exports["CLEARML_API_SECRET_KEY"] not in conf.read_text()  # keys stay in the environment
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    script = tmp_path / "report.py"
    script.write_text(SDK_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script)],
        env={**clean, **exports, "HOME": str(tmp_path)},  # no ~/clearml.conf to fall back on
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "subprocess reporting: False" in run.stdout
