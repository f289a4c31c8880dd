"""A federated run's folder: checkpoints, ``metrics.jsonl`` and run information.

Layout of ``RUN_DIR``::

    run.json                    how the run was started (config, data dir, engine)
    config.yaml                 the effective configuration
    metrics.jsonl               one JSON line per finished round
    checkpoints/round_0003.safetensors   global weights (named state_dict entries) + strategy state
    checkpoints/round_0003.json          metadata; written last, so it marks the checkpoint complete
    final.pt                    the final model as an ultralytics checkpoint
    map.png                     mAP per round and the clients' train loss

Everything is written through a temp file and ``os.replace``: a crash never leaves a half-written
file, and a checkpoint without its ``.json`` is ignored. Nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federated.config import atomic_write_bytes, atomic_write_text

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run.json"
CONFIG_FILE = "config.yaml"
FINAL_MODEL = "final.pt"
PLOT_FILE = "map.png"

_WEIGHT_PREFIX = "model/"
_STRATEGY_PREFIX = "strategy/"
_NAME = re.compile(r"^round_(\d{4,})\.json$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not match its metadata."""


@dataclass
class Checkpoint:
    """The global model after one round, plus the server-side strategy state."""

    round: int
    weights: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray]
    metadata: dict[str, Any]

    def weight_list(self) -> list[np.ndarray]:
        """Weights in ``state_dict`` order (the order they were saved in)."""
        return list(self.weights.values())


def checkpoint_paths(run_dir: Path, server_round: int) -> tuple[Path, Path]:
    """``(weights.safetensors, metadata.json)`` of one round."""
    stem = Path(run_dir) / CHECKPOINT_DIR / f"round_{server_round:04d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    weights: Mapping[str, np.ndarray],
    strategy_state: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write one round's checkpoint atomically (safetensors, then the JSON that completes it)."""
    from safetensors.numpy import save

    tensors = {f"{_WEIGHT_PREFIX}{key}": np.ascontiguousarray(value) for key, value in weights.items()}
    tensors.update(
        {f"{_STRATEGY_PREFIX}{k}": np.ascontiguousarray(v) for k, v in (strategy_state or {}).items()}
    )
    order = list(weights.keys())
    payload = save(tensors, metadata={"format": "fleetfl-checkpoint", "round": str(server_round)})
    weights_path, meta_path = checkpoint_paths(run_dir, server_round)
    atomic_write_bytes(weights_path, payload)
    meta = {
        **dict(metadata or {}),
        "round": server_round,
        "weights_file": weights_path.name,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "keys": order,
        "shapes": {key: list(np.shape(value)) for key, value in weights.items()},
    }
    atomic_write_text(meta_path, json.dumps(meta, sort_keys=True))
    return weights_path


def list_checkpoints(run_dir: Path) -> list[int]:
    """Rounds with a complete checkpoint, ascending."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    rounds = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.with_suffix(".safetensors").is_file():
            rounds.append(int(match.group(1)))
    return sorted(rounds)


def load_checkpoint(run_dir: Path, server_round: int | None = None) -> Checkpoint:
    """Load the checkpoint of ``server_round`` (default: the last complete one), checking its hash."""
    from safetensors.numpy import load

    available = list_checkpoints(run_dir)
    if not available:
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINT_DIR}: no complete checkpoint to resume from")
    if server_round is None:
        server_round = available[-1]
    if server_round not in available:
        raise CheckpointError(
            f"{run_dir}: no checkpoint for round {server_round} (available: {', '.join(map(str, available))})"
        )
    weights_path, meta_path = checkpoint_paths(run_dir, server_round)
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    payload = weights_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != metadata.get("sha256"):
        raise CheckpointError(f"{weights_path}: content does not match the sha256 in {meta_path.name}")
    tensors = load(payload)
    # safetensors stores 0-d arrays (num_batches_tracked) as shape (1,): restore the recorded shapes
    shapes = metadata.get("shapes", {})
    weights = {
        key: tensors[f"{_WEIGHT_PREFIX}{key}"].reshape(
            shapes.get(key, tensors[f"{_WEIGHT_PREFIX}{key}"].shape)
        )
        for key in metadata["keys"]
    }
    state = {k[len(_STRATEGY_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_STRATEGY_PREFIX)}
    return Checkpoint(round=server_round, weights=weights, strategy_state=state, metadata=metadata)


def drop_checkpoints_after(run_dir: Path, server_round: int) -> list[int]:
    """Delete the checkpoints of rounds after ``server_round`` (a run resumed from an earlier round
    replaces them; keeping them would mix two histories). Returns the rounds removed."""
    removed = [number for number in list_checkpoints(run_dir) if number > server_round]
    for number in removed:
        weights_path, meta_path = checkpoint_paths(run_dir, number)
        meta_path.unlink(missing_ok=True)  # first: without it the checkpoint no longer counts
        weights_path.unlink(missing_ok=True)
    return removed


# ---------------------------------------------------------------------- metrics.jsonl
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All round lines of ``metrics.jsonl`` (an absent file gives an empty list)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
    return rows


def append_metrics(run_dir: Path, row: Mapping[str, Any]) -> None:
    """Add one round's line to ``metrics.jsonl`` (rewritten atomically: the file stays small)."""
    rows = [r for r in read_metrics(run_dir) if r.get("round") != row.get("round")]
    _write_metrics(run_dir, [*rows, dict(row)])


def truncate_metrics(run_dir: Path, last_round: int) -> None:
    """Keep only rounds ``<= last_round`` (a run resumed from that round rewrites the rest)."""
    rows = read_metrics(run_dir)
    kept = [r for r in rows if int(r.get("round", 0)) <= last_round]
    if len(kept) != len(rows):
        _write_metrics(run_dir, kept)


def _write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
    atomic_write_text(Path(run_dir) / METRICS_FILE, text)


# ---------------------------------------------------------------------- run info
def write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Write ``run.json`` (how the run was started; ``--resume`` reads it)."""
    atomic_write_text(Path(run_dir) / RUN_INFO_FILE, json.dumps(dict(info), indent=1, sort_keys=True))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """Read ``run.json``."""
    path = Path(run_dir) / RUN_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a FleetFL run folder (no {RUN_INFO_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))
