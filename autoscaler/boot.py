"""What an instance runs at boot: FleetFL's part of the user data script.

ClearML's driver writes the user data (``clearml.automation.cloud_driver.bash_script_template``):
install Python tooling, create a virtualenv with clearml-agent, write ``~/clearml.conf``, export the
ClearML server address, keys and ``CLEARML_WORKER_ID=<prefix>:<resource>:<type>:<instance id>``, run
*our* script (this module's output), then ``clearml-agent daemon --queue <queue> [--docker IMAGE]``
and ``shutdown`` when the agent exits (instances are launched to terminate on shutdown).

Our script pins clearml-agent to the tested release, starts the spot interruption watcher
(:mod:`autoscaler.spot_watch`) in the background and, depending on ``boot.mode``:

* ``agent``: installs FleetFL's requirements once into ``/opt/fleetfl/venv`` and points the agent
  at it (``CLEARML_AGENT_SKIP_PIP_VENV_INSTALL``), so tasks start without a per-task pip install.
  The environment is made with uv, which brings the configured Python (FleetFL needs >= 3.11, the
  Ubuntu 22.04 AMIs that ClearML's script supports ship 3.10) and installs several times faster
  than pip;
* ``image``: nothing more; each task runs in the worker image (``autoscaler/Dockerfile``), which
  has the requirements and the same variables baked in.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from autoscaler.config import BootConfig

#: Virtual environment with FleetFL's requirements on ``agent``-mode instances.
WORKER_VENV = "/opt/fleetfl/venv"

#: uv release used to build that environment.
UV_VERSION = "0.13.8"

#: Heredoc delimiter for the requirements file (quoted: nothing in it is expanded by bash).
_REQUIREMENTS_EOF = "FLEETFL_REQUIREMENTS"

#: The spot interruption watcher (standard library only), copied onto every instance.
SPOT_WATCH_SOURCE = Path(__file__).with_name("spot_watch.py")
_SPOT_WATCH_EOF = "FLEETFL_SPOT_WATCH"


def boot_script(boot: BootConfig, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """The bash lines run on every new instance before clearml-agent starts (ClearML's
    ``extra_vm_bash_script``); ``secrets``: the lines that fetch the ClearML credentials
    (:func:`autoscaler.secrets.boot_lines`), run first."""
    agent = shlex.quote(f"clearml-agent=={boot.agent_version}")
    lines = [
        "# --- FleetFL boot script (autoscaler/boot.py)",
        *secrets,
        "# pin clearml-agent to the release FleetFL is tested with (ClearML installs the newest)",
        f"python -m pip install --quiet {agent}",
    ]
    if boot.mode == "agent":
        python = f"{WORKER_VENV}/bin/python"
        lines += [
            "# FleetFL's requirements, installed once; every task reuses this environment",
            f"python -m pip install --quiet uv=={UV_VERSION}",
            "mkdir -p /opt/fleetfl",
            f"cat > /opt/fleetfl/requirements.txt <<'{_REQUIREMENTS_EOF}'",
            *boot.requirements,
            _REQUIREMENTS_EOF,
            f"python -m uv venv --python {shlex.quote(boot.python_version)} {WORKER_VENV}",
            f"python -m uv pip install --python {python} -r /opt/fleetfl/requirements.txt",
            f"export CLEARML_AGENT_SKIP_PIP_VENV_INSTALL={python}",
            "export CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1",
        ]
    lines += [
        "# on a spot interruption notice the task is stopped and re-enqueued (autoscaler/spot_watch.py)",
        "mkdir -p /opt/fleetfl",
        f"cat > /opt/fleetfl/spot_watch.py <<'{_SPOT_WATCH_EOF}'",
        SPOT_WATCH_SOURCE.read_text(encoding="utf-8").rstrip("\n"),
        _SPOT_WATCH_EOF,
        "nohup python3 /opt/fleetfl/spot_watch.py >>/var/log/fleetfl-spot-watch.log 2>&1 &",
    ]
    if boot.extra_script.strip():
        lines += ["# boot.extra_script from the autoscaler config", boot.extra_script.rstrip()]
    lines.append("# --- end of FleetFL boot script")
    return "\n".join(lines)
