"""Run folder: non-pickle checkpoints written atomically, metrics.jsonl, resume bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from federated import run_dir as rd


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "model.0.conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "model.0.bn.running_var": rng.random(8).astype(np.float32),
        "model.0.bn.num_batches_tracked": np.array(12, dtype=np.int64),
    }


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    state = {"momentum_vector/0": np.ones(3, dtype=np.float32)}
    rd.save_checkpoint(tmp_path, 3, _weights(), state, {"map50_95": 0.25})
    loaded = rd.load_checkpoint(tmp_path)
    assert loaded.round == 3 and loaded.metadata["map50_95"] == 0.25
    assert list(loaded.weights) == list(_weights())
    for key, value in _weights().items():
        assert loaded.weights[key].dtype == value.dtype and loaded.weights[key].shape == value.shape
        np.testing.assert_array_equal(loaded.weights[key], value)
    np.testing.assert_array_equal(loaded.strategy_state["momentum_vector/0"], state["momentum_vector/0"])
    assert not list(tmp_path.rglob("*.tmp")), "no temp files are left behind"
    assert (tmp_path / "checkpoints" / "round_0003.safetensors").read_bytes()[
        :8
    ] != b"\x80\x04\x95"  # no pickle


def test_incomplete_and_tampered_checkpoints(tmp_path: Path) -> None:
    rd.save_checkpoint(tmp_path, 1, _weights())
    rd.save_checkpoint(tmp_path, 2, _weights())
    _, meta_2 = rd.checkpoint_paths(tmp_path, 2)
    meta_2.unlink()  # a crash between the two writes: round 2 does not count
    assert rd.list_checkpoints(tmp_path) == [1]
    assert rd.load_checkpoint(tmp_path).round == 1
    with pytest.raises(rd.CheckpointError, match="no checkpoint for round 2"):
        rd.load_checkpoint(tmp_path, 2)
    weights_1, _ = rd.checkpoint_paths(tmp_path, 1)
    weights_1.write_bytes(weights_1.read_bytes()[:-1] + b"\x00")
    with pytest.raises(rd.CheckpointError, match="sha256"):
        rd.load_checkpoint(tmp_path, 1)
    with pytest.raises(rd.CheckpointError, match="no complete checkpoint"):
        rd.load_checkpoint(tmp_path / "elsewhere")


def test_resume_bookkeeping(tmp_path: Path) -> None:
    for number in (1, 2, 3):
        rd.save_checkpoint(tmp_path, number, _weights())
        rd.append_metrics(tmp_path, {"round": number, "map50_95": number / 10})
    rd.append_metrics(tmp_path, {"round": 3, "map50_95": 0.9})  # a round written again replaces its line
    assert [row["map50_95"] for row in rd.read_metrics(tmp_path)] == [0.1, 0.2, 0.9]
    rd.truncate_metrics(tmp_path, 1)
    assert rd.drop_checkpoints_after(tmp_path, 1) == [2, 3]
    assert [row["round"] for row in rd.read_metrics(tmp_path)] == [1]
    assert rd.list_checkpoints(tmp_path) == [1]


def test_bad_metrics_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / rd.METRICS_FILE).write_text(json.dumps({"round": 1}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2"):
        rd.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run\.json"):
        rd.read_run_info(tmp_path)
