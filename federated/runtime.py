"""Process-wide run-time settings: no network, no telemetry, project-local config dirs.

Call :func:`configure_offline` before importing ultralytics, flwr or ray (the CLI and every task
entry point do). It is idempotent and only sets what the user has not set already.

Why each setting exists (measured on these machines, see ``shared/notes/flower-ultralytics.md``):

* ultralytics checks connectivity, downloads ``Arial.ttf`` on every dataset check and runs an AMP
  check that downloads weights; ``YOLO_OFFLINE`` / ``YOLO_AUTOINSTALL`` and a config dir that
  already holds the fonts stop all of that.
* ultralytics' ``raytune`` integration is on by default and hooks ray into every trainer once
  ``flwr[simulation]`` installs ray; every integration is switched off in its settings.
* Flower and ray send usage telemetry unless told not to.
* ``ULTRALYTICS_SAFE_LOAD``: ultralytics' own restricted mode (no ``eval`` of a yaml's activation,
  only layer classes as module names) as a second line behind ``federated/model_yaml.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Default folder for FleetFL's own state (ultralytics config, Flower home, TLS material).
DEFAULT_STATE_DIR = PROJECT_ROOT / ".fleetfl"

_ENV_DEFAULTS = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "YOLO_VERBOSE": "False",
    "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "1",
    "MPLBACKEND": "Agg",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    # defence in depth behind federated/model_yaml.py: ultralytics builds models without eval()
    # and loads its own checkpoints with weights_only (FleetFL itself never asks it to load one)
    "ULTRALYTICS_SAFE_LOAD": "1",
}

_INTEGRATIONS_OFF = {
    "sync": False,
    "hub": False,
    "raytune": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "neptune": False,
    "tensorboard": False,
    "wandb": False,
}

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def _install_fonts(config_dir: Path) -> None:
    """Put the fonts ultralytics wants into ``config_dir`` (copies of matplotlib's DejaVuSans)."""
    missing = [name for name in _FONT_NAMES if not (config_dir / name).exists()]
    if not missing:
        return
    import matplotlib  # local import: only needed the first time

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in missing:
        tmp = config_dir / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, config_dir / name)


def configure_offline(state_dir: Path | None = None, with_ultralytics: bool = True) -> Path:
    """Set the environment for a network-free, telemetry-free run and return the state dir.

    Args:
        state_dir: where ultralytics' config (``ultralytics/``) and Flower's home (``flwr/``) live.
            Defaults to ``$FLEETFL_HOME`` or ``<repo>/.fleetfl``.
        with_ultralytics: also switch off ultralytics' integrations in its settings (imports
            ultralytics; commands that never train, such as the ClearML server, pass False).

    Returns:
        The state directory that was configured.
    """
    state = Path(state_dir or os.environ.get("FLEETFL_HOME") or DEFAULT_STATE_DIR).resolve()
    os.environ.setdefault("FLEETFL_HOME", str(state))
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    yolo_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(state / "ultralytics")))
    flwr_home = Path(os.environ.setdefault("FLWR_HOME", str(state / "flwr")))
    yolo_dir.mkdir(parents=True, exist_ok=True)
    flwr_home.mkdir(parents=True, exist_ok=True)
    _install_fonts(yolo_dir)
    if with_ultralytics:
        _write_ultralytics_settings(yolo_dir)
    return state


def _write_ultralytics_settings(yolo_dir: Path) -> None:
    """Switch off ultralytics' hub sync and every integration in its persistent settings.

    ultralytics keeps ``settings.json`` in ``YOLO_CONFIG_DIR`` and rewrites it whole when keys are
    missing, so the update goes through its own settings manager (imported lazily: ~1 s).
    """
    from ultralytics.utils import SETTINGS

    if any(SETTINGS.get(key) != value for key, value in _INTEGRATIONS_OFF.items()):
        SETTINGS.update({key: value for key, value in _INTEGRATIONS_OFF.items() if key in SETTINGS})
