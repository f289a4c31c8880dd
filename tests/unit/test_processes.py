"""Processes a FleetFL command starts do not outlive it (federated/processes.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

STARTER = textwrap.dedent(
    """
    import sys, time
    from federated.processes import ProcessSet

    procs = ProcessSet(sys.argv[1])
    daemon = procs.start("daemon", [sys.executable, "-c", "import time; time.sleep(120)"])
    print(daemon.pid, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_started_processes_end_when_their_starter_is_killed(tmp_path: Path, repo_root: Path) -> None:
    """A SIGKILLed starter (an agent killing an aborted task) leaves no SuperLink or SuperNode behind.

    The daemon runs in its own session, so no process-group signal reaches it: only the parent-death
    signal asked for at start does.
    """
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "logs")], stdout=subprocess.PIPE, env=env, text=True
    )
    daemon = None
    try:
        daemon = psutil.Process(int(starter.stdout.readline()))
        assert daemon.ppid() == starter.pid and os.getsid(daemon.pid) != os.getsid(starter.pid)
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
        gone, _ = psutil.wait_procs([daemon], timeout=10)
        assert daemon in gone, f"daemon {daemon.pid} outlived its killed starter"
    finally:
        starter.kill()
        starter.wait(timeout=10)
        if daemon is not None and daemon.is_running():
            daemon.kill()
