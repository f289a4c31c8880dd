"""Root test configuration.

Fixtures live in ``tests/fixtures/<topic>.py`` (one owner per file) and are loaded here as plugins.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.federated",
    "tests.fixtures.clearml",
    "tests.fixtures.aws",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Offline, telemetry-free settings for every test, before anything imports ultralytics."""
    from federated.runtime import configure_offline

    state = Path(os.environ.get("FLEETFL_TEST_HOME", REPO_ROOT / ".fleetfl" / "test-home"))
    configure_offline(state, with_ultralytics=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (tasks and agents run from here)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def kitti_tiny_dir() -> Path:
    """The 75 real KITTI frames beside the repository (path from ``FLEETFL_KITTI_TINY``).

    ``.ci/run`` sets the variable; locally it defaults to ``../shared/data/kitti_tiny``. The data is
    never copied into the repository (CC BY-NC-SA, see its README).
    """
    path = Path(os.environ.get("FLEETFL_KITTI_TINY", REPO_ROOT.parent / "shared" / "data" / "kitti_tiny"))
    if not (path / "training").is_dir():
        pytest.fail(f"KITTI tiny frames not found at {path}: set FLEETFL_KITTI_TINY")
    return path


@pytest.fixture(autouse=True)
def _no_task_identity_leaks():
    """A test that calls ``Task.init`` in this process leaves the SDK's task-identity variables in
    ``os.environ``; later subprocesses (agents, CLI runs) would inherit them and get stub tasks."""
    from queues.agents import INHERITED_TASK_VARS

    before = {key: os.environ.get(key) for key in INHERITED_TASK_VARS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
