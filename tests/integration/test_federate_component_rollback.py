"""A collapsing round is rolled back to the best checkpoint (the ServerApp's rollback hook).

The collapse is scripted at the one place it is measured: the central evaluation returns mAP50-95
0.30, then 0.10 (a 67% fall, above the 10% threshold), then 0.31. Training, aggregation, checkpoints
and the Flower run are real (simulation engine, 2 clients, 3 rounds, 64 px images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.federate import rollback_of

SCRIPT = {1: 0.30, 2: 0.10, 3: 0.31}


def _hook_present() -> bool:
    from federated.config import FederatedConfig

    return "rollback_threshold" in FederatedConfig.field_names()


pytestmark = pytest.mark.skipif(
    not _hook_present(), reason="the ServerApp rollback hook (config key rollback_threshold) is not applied"
)


def test_rollback_target_decision() -> None:
    from federated.server_app import rollback_target

    rows = [{"round": 1, "map50_95": 0.30}, {"round": 2, "map50_95": 0.28}]
    assert rollback_target(rows, 0.10, 0.26) == (1, 0.30)  # 13% below the best round
    assert rollback_target(rows, 0.10, 0.28) is None  # 7% below: within the threshold
    assert rollback_target(rows, 0.10, 0.27) is None  # exactly at the threshold: kept (no false alarm)
    assert rollback_target(rows, 0.0, 0.0) is None  # off
    assert rollback_target([{"round": 1, "map50_95": 0.0}], 0.10, 0.0) is None  # nothing scored yet
    assert rollback_target([], 0.10, 0.5) is None


def test_guarded_strategy_starts_the_next_round_from_restored_weights() -> None:
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvgM

    from federated.strategies import GuardedStrategy

    inner = FedAvgM(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    strategy = GuardedStrategy(inner, min_clients=1)
    collapsed = ArrayRecord([np.full(3, 9.0, dtype=np.float32)])
    inner.current_arrays = collapsed
    best = ArrayRecord([np.zeros(3, dtype=np.float32)])
    strategy.restore = best

    class OneNodeGrid:
        def get_node_ids(self) -> list[int]:
            return [1]

    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # as in a ServerApp
    try:
        messages = list(strategy.configure_train(2, collapsed, ConfigRecord(), OneNodeGrid()))
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert np.array_equal(
        next(iter(messages[0].content.array_records.values())).to_numpy_ndarrays()[0], np.zeros(3)
    )
    assert strategy.restore is None
    assert np.array_equal(
        strategy._reference[0], np.zeros(3)
    )  # the update guard compares to the restored weights
    assert inner.current_arrays is best  # FedAvgM's own copy follows


@pytest.mark.slow
def test_collapsing_round_is_reverted_to_the_best_checkpoint(
    fl_ultralytics, fl_data_dir: Path, fl_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from federated import run_dir as rd
    from federated import yolo_task
    from federated.engine import run_federated

    real_evaluate = yolo_task.evaluate
    calls: list[int] = []

    def scripted(weights, data_yaml, config):
        result = real_evaluate(weights, data_yaml, config)
        calls.append(len(calls) + 1)
        result.map50_95 = SCRIPT[len(calls)]
        return result

    monkeypatch.setattr(yolo_task, "evaluate", scripted)
    config = fl_config.replace(rounds=3, rollback_threshold=0.10)
    result = run_federated(config, fl_data_dir, tmp_path / "run", engine="simulation")
    rows = result.rows
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert "rolled_back_to" not in rows[0] and "rolled_back_to" not in rows[2]
    assert rows[1]["rolled_back_to"] == 1 and rows[1]["best_map50_95"] == pytest.approx(0.30)
    assert rollback_of(rows[1])["restored_round"] == 1
    first, second, third = (rd.load_checkpoint(result.run_dir, n) for n in (1, 2, 3))
    # round 2's checkpoint holds round 1's weights (the best), and says so
    assert all(np.array_equal(first.weights[k], second.weights[k]) for k in first.weights)
    assert second.metadata["rolled_back_to"] == 1 and second.metadata["map50_95"] == pytest.approx(0.30)
    # round 3 trained on from the restored weights, so it moved away from them again
    assert any(not np.array_equal(first.weights[k], third.weights[k]) for k in first.weights)
