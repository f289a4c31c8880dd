"""Root test configuration.

Fixtures live in ``tests/fixtures/<topic>.py`` (one owner per file) and are loaded here as plugins.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.federated",
    "tests.fixtures.clearml",
    "tests.fixtures.aws",
    "tests.fixtures.browser",
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
    never copied into the repository (CC BY-NC-SA, see its README). Missing frames fail the test,
    except on GitHub Actions with the variable unset, where there is no ``../shared``: skipped.
    """
    configured = os.environ.get("FLEETFL_KITTI_TINY")
    path = Path(configured or REPO_ROOT.parent / "shared" / "data" / "kitti_tiny")
    if not (path / "training").is_dir():
        if not configured and os.environ.get("GITHUB_ACTIONS") == "true":
            pytest.skip(
                f"KITTI tiny frames are not on GitHub's runners ({path} is missing and "
                "FLEETFL_KITTI_TINY is unset; they are never copied into the repository)"
            )
        pytest.fail(f"KITTI tiny frames not found at {path}: set FLEETFL_KITTI_TINY")
    return path


_SESSION_ENV = dict(os.environ)


@pytest.fixture(autouse=True)
def _no_task_identity_leaks():
    """``Task.init`` in this process (in a test or a module fixture) leaves the SDK's task-identity
    variables in ``os.environ``; subprocesses started later (agents, CLI runs) would inherit them and
    get stub tasks. After each test they are reset to what the session started with."""
    from queues.agents import INHERITED_TASK_VARS

    yield
    for key in INHERITED_TASK_VARS:
        if key in _SESSION_ENV:
            os.environ[key] = _SESSION_ENV[key]
        else:
            os.environ.pop(key, None)


@pytest.fixture(autouse=True)
def _no_closed_log_streams():
    """Libraries that configure logging inside a test (ClearML's SDK does, lazily) bind their
    handlers to that test's captured ``sys.stdout``/``sys.stderr``, which pytest closes afterwards;
    the next log line from a later test would fail with "I/O operation on closed file"."""
    yield
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                handler.stream = sys.__stderr__  # not setStream(): it flushes the closed one
