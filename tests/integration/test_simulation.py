"""Flower's Simulation Engine end to end: 2 clients x 2 rounds, resume, and a client that fails.

One shared run (``fl_simulation_run``, started through ``fleetfl federate``) feeds the artifact and
resume tests; each further test starts one more short simulation.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from federated import run_dir as rd

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fl_ultralytics")]


def test_two_clients_two_rounds_write_every_artifact(fl_simulation_run: Path) -> None:
    from ultralytics import YOLO

    from federated import yolo_task

    rows = rd.read_metrics(fl_simulation_run)
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert {"map50", "map50_95", "per_class", "round_seconds", "bytes_sent", "bytes_received"} <= set(row)
        assert 0.0 <= row["map50_95"] <= row["map50"] <= 1.0
        assert row["bytes_sent"] > 2 * 8e6 and row["bytes_received"] > 2 * 8e6  # two v9t models each way
        clients = row["clients"]
        assert [c["partition_id"] for c in clients] == [0, 1]
        assert all(c["status"] == "ok" and c["examples"] > 0 and c["train_seconds"] > 0 for c in clients)
        assert all(np.isfinite(c["train_loss"]) for c in clients)
    assert rd.list_checkpoints(fl_simulation_run) == [1, 2]
    assert (fl_simulation_run / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = rd.load_checkpoint(fl_simulation_run)
    assert final.round == 2
    model = YOLO(str(fl_simulation_run / "final.pt"))
    assert model.task == "detect"
    exported = yolo_task.get_weights(model.model)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(final.weight_list(), exported, strict=True))
    info = json.loads((fl_simulation_run / "run.json").read_text())
    assert info["engine"] == "simulation" and info["clients"] == 2


def test_resume_from_round_one_repeats_round_two_exactly(fl_simulation_run: Path, tmp_path: Path) -> None:
    from tests.fixtures.federated import run_federate_command

    copy = tmp_path / "resumed"
    shutil.copytree(fl_simulation_run, copy)
    assert run_federate_command(["federate", "--resume", str(copy), "--resume-round", "1"]) == 0
    original, resumed = rd.load_checkpoint(fl_simulation_run, 2), rd.load_checkpoint(copy, 2)
    differing = [k for k in original.weights if original.weights[k].tobytes() != resumed.weights[k].tobytes()]
    assert differing == [], "resumed round 2 must equal the uninterrupted round 2 bitwise (seeded, CPU)"
    rows = rd.read_metrics(copy)
    assert [row["round"] for row in rows] == [1, 2]
    assert rows[1]["map50_95"] == rd.read_metrics(fl_simulation_run)[1]["map50_95"]


def test_kept_optimizer_state_reaches_the_next_round(fl_data_dir: Path, tmp_path: Path) -> None:
    """``optimizer_state=keep``: Flower's simulation keeps each client's Context.state between rounds."""
    from tests.fixtures.federated import run_federate_command

    run = tmp_path / "run"
    settings = ["rounds=2", "imgsz=64", "batch=4", "nbs=4", "device=cpu", "optimizer_state=keep"]
    argv = ["federate", "--data", str(fl_data_dir), "--out", str(run)]
    for item in settings:
        argv += ["--set", item]
    assert run_federate_command(argv) == 0
    first, second = (row["clients"] for row in rd.read_metrics(run))
    assert [c["resumed_optimizer_steps"] for c in first] == [0, 0]
    steps = [c["resumed_optimizer_steps"] for c in second]
    images = [c["examples"] for c in first]
    assert steps == [-(-n // 4) for n in images], "one AdamW step per batch of 4 in round 1, carried into 2"


def test_failed_client_below_min_clients_stops_with_last_checkpoint_intact(
    fl_simulation_run: Path, fl_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures.federated import run_federate_command

    broken = tmp_path / "data"
    shutil.copytree(fl_data_dir, broken)
    shutil.rmtree(broken / "client_1" / "images")  # client 1's training fails in every round
    run = tmp_path / "run"
    shutil.copytree(fl_simulation_run, run)
    before = rd.checkpoint_paths(run, 1)[0].read_bytes()
    code = run_federate_command(
        ["federate", "--resume", str(run), "--resume-round", "1", "--data", str(broken)]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert "round 2: 1 usable client update(s), min_clients is 2" in error
    assert "last checkpoint is round 1" in error
    assert rd.list_checkpoints(run) == [1]
    assert rd.checkpoint_paths(run, 1)[0].read_bytes() == before
    assert [row["round"] for row in rd.read_metrics(run)] == [1]


def test_fp16_updates_halve_the_bytes_and_keep_counters_exact(
    fl_simulation_run: Path, fl_data_dir: Path, tmp_path: Path
) -> None:
    """``update_dtype=fp16``: the same run as ``fl_simulation_run`` (fp32) moves about half the bytes."""
    from tests.fixtures.federated import run_federate_command

    run = tmp_path / "run"
    settings = ["rounds=2", "imgsz=64", "batch=4", "nbs=4", "workers=0", "device=cpu", "min_clients=2"]
    argv = ["federate", "--data", str(fl_data_dir), "--out", str(run)]
    for item in [*settings, "update_dtype=fp16"]:
        argv += ["--set", item]
    assert run_federate_command(argv) == 0
    half, full = rd.read_metrics(run), rd.read_metrics(fl_simulation_run)
    assert [row["round"] for row in half] == [1, 2]
    for fp16_row, fp32_row in zip(half, full, strict=True):
        assert all(c["status"] == "ok" for c in fp16_row["clients"])
        for key in ("bytes_sent", "bytes_received"):
            assert 0.45 < fp16_row[key] / fp32_row[key] < 0.55, (key, fp16_row[key], fp32_row[key])
        assert 0.0 <= fp16_row["map50_95"] <= 1.0
    fp16_final, fp32_final = rd.load_checkpoint(run), rd.load_checkpoint(fl_simulation_run)
    counters = [k for k in fp32_final.weights if k.endswith("num_batches_tracked")]
    assert counters and all(fp16_final.weights[k].dtype == fp32_final.weights[k].dtype for k in counters)
    assert all(np.array_equal(fp16_final.weights[k], fp32_final.weights[k]) for k in counters)
    assert all(v.dtype != np.float16 for v in fp16_final.weights.values())  # the server keeps fp32


@pytest.mark.parametrize("dp", ["central-adaptive", "local"])
def test_differential_privacy_reports_epsilon_every_round(fl_data_dir: Path, tmp_path: Path, dp: str) -> None:
    """Flower's DP wrapper (central) or the client's clip-and-noise (local); epsilon from dp-accounting."""
    from federated import privacy
    from federated.config import FederatedConfig
    from tests.fixtures.federated import run_federate_command

    run = tmp_path / "run"
    privacy_settings = [f"dp={dp}", "noise_multiplier=0.05", "clipping_norm=20", "target_delta=1e-4"]
    settings = ["rounds=2", "imgsz=64", "batch=4", "nbs=4", "workers=0", "device=cpu", *privacy_settings]
    argv = ["federate", "--data", str(fl_data_dir), "--out", str(run)]
    for item in settings:
        argv += ["--set", item]
    assert run_federate_command(argv) == 0
    rows = rd.read_metrics(run)
    config = FederatedConfig.load(run / rd.CONFIG_FILE)
    assert [row["dp"] for row in rows] == [dp, dp]
    assert [row["epsilon"] for row in rows] == [privacy.epsilon_spent(config, r) for r in (1, 2)]
    assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"] and rows[1]["target_delta"] == 1e-4
    assert all(c["status"] == "ok" for row in rows for c in row["clients"])
    if dp == "central-adaptive":
        # no update reached norm 20: the norm shrinks toward the median update norm, exp(-0.2 x 0.5)
        assert rows[0]["clipping_norm"] == pytest.approx(20 * math.exp(-0.1), rel=0.03)
    final = rd.load_checkpoint(run)
    assert all(np.isfinite(v).all() for v in final.weights.values())
    assert all((v >= 0).all() for k, v in final.weights.items() if k.endswith("running_var"))
