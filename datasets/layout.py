"""Where things are in a prepared data folder (the output of ``fleetfl data prepare``).

The federated code uses these helpers instead of building paths itself::

    DATA/partition.json   DATA/validation.json   DATA/eval/data.yaml   DATA/client_<i>/data.yaml
"""

from __future__ import annotations

from pathlib import Path

from datasets.errors import DataError
from datasets.files import read_json

REPORT_FILE = "partition.json"
VALIDATION_FILE = "validation.json"
EVAL_DIR = "eval"


def client_dir(i: int) -> str:
    """Folder name of client ``i`` (0-based)."""
    return f"client_{i}"


def read_partition(data_dir: Path) -> dict:
    """The partition report of a prepared data folder.

    Raises:
        DataError: the folder is not a prepared data folder (message says how to make one).
    """
    path = Path(data_dir) / REPORT_FILE
    if not path.is_file():
        raise DataError(f"{data_dir}: no {REPORT_FILE}; make it with `fleetfl data prepare --out {data_dir}`")
    return read_json(path, REPORT_FILE)


def num_clients(data_dir: Path) -> int:
    """Number of client shards in a prepared data folder."""
    return int(read_partition(data_dir)["clients"])


def client_yaml(data_dir: Path, i: int) -> Path:
    """``data.yaml`` of client ``i``.

    Raises:
        DataError: no such client in this folder.
    """
    path = Path(data_dir) / client_dir(i) / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no data for client {i} (partition-id out of range or data not prepared)")
    return path


def eval_yaml(data_dir: Path) -> Path:
    """``data.yaml`` of the held-out evaluation split."""
    path = Path(data_dir) / EVAL_DIR / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no evaluation split; make it with `fleetfl data prepare`")
    return path
