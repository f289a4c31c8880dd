"""The ClientApp's train/evaluate handlers, called through Flower's own ClientApp dispatch (no engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fl_ultralytics", "flower_task_identity")]


def test_train_and_evaluate_messages(fl_data_dir: Path, fl_config) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from federated import yolo_task
    from federated.client_app import app
    from federated.strategies import (
        METRIC_EXAMPLES,
        METRIC_HANDLER_SECONDS,
        METRIC_LOSS,
        METRIC_PARTITION,
        METRIC_SECONDS,
    )
    from federated.transport import pack, unpack

    names = yolo_task.read_dataset(fl_data_dir / "eval" / "data.yaml").names
    weights = yolo_task.get_weights(yolo_task.build_model(fl_config.model, names, seed=0))
    config = ConfigRecord(
        {**fl_config.to_flat(), "data-dir": str(fl_data_dir), "server-round": 3, "proximal-mu": 0.5}
    )
    context = Context(
        run_id=1,
        node_id=42,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )

    def message(kind: str) -> Message:
        content = RecordDict({"arrays": ArrayRecord(pack(weights)), "config": config})
        return Message(content, dst_node_id=42, message_type=kind)

    reply = app(message(MessageType.TRAIN), context)
    metrics = next(iter(reply.content.metric_records.values()))
    assert metrics[METRIC_PARTITION] == 1
    assert metrics[METRIC_EXAMPLES] == yolo_task.count_images(fl_data_dir / "client_1" / "data.yaml", "train")
    assert np.isfinite(metrics[METRIC_LOSS]) and metrics[METRIC_SECONDS] > 0
    wire = next(iter(reply.content.array_records.values())).to_numpy_ndarrays()
    assert len(wire) == 1, "weights travel packed into one vector"
    trained = unpack(wire, weights)
    assert [(a.shape, a.dtype) for a in trained] == [(w.shape, w.dtype) for w in weights]
    data_yaml = fl_data_dir / "client_1" / "data.yaml"
    expected = yolo_task.train_local(
        weights, data_yaml, fl_config, seed=yolo_task.round_seed(0, 3, 1), server_round=3, proximal_mu=0.5
    )
    assert all(a.tobytes() == b.tobytes() for a, b in zip(trained, expected.weights, strict=True)), (
        "the client seeds its round from (seed, server-round, partition-id), takes the round's place on "
        "the learning-rate schedule and applies FedProx's proximal-mu"
    )
    assert metrics[METRIC_HANDLER_SECONDS] >= metrics[METRIC_SECONDS]

    evaluation = app(message(MessageType.EVALUATE), context)
    result = next(iter(evaluation.content.metric_records.values()))
    assert 0.0 <= result["map50_95"] <= result["map50"] <= 1.0
    assert result[METRIC_EXAMPLES] == yolo_task.count_images(fl_data_dir / "client_1" / "data.yaml", "val")


def test_kept_optimizer_state_stays_in_the_context(fl_data_dir: Path, fl_config) -> None:
    """``optimizer_state=keep``: the AdamW state goes into ``Context.state`` (never into the reply)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from federated import yolo_task
    from federated.client_app import OPTIMIZER_STATE_KEY, app
    from federated.strategies import METRIC_RESUMED_STEPS
    from federated.transport import pack

    names = yolo_task.read_dataset(fl_data_dir / "eval" / "data.yaml").names
    weights = yolo_task.get_weights(yolo_task.build_model(fl_config.model, names, seed=0))
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})

    def train(server_round: int, optimizer_state: str) -> Message:
        config = {**fl_config.to_flat(), "optimizer_state": optimizer_state}
        content = RecordDict(
            {
                "arrays": ArrayRecord(pack(weights)),
                "config": ConfigRecord(
                    {**config, "data-dir": str(fl_data_dir), "server-round": server_round}
                ),
            }
        )
        return app(Message(content, dst_node_id=7, message_type=MessageType.TRAIN), context)

    first = train(1, "keep")
    assert next(iter(first.content.metric_records.values()))[METRIC_RESUMED_STEPS] == 0
    assert list(first.content.array_records) == ["arrays"], "the optimizer state is not sent"
    saved = context.state.array_records[OPTIMIZER_STATE_KEY]
    steps = int(saved["0/step"].numpy())
    assert steps > 0 and {"0/exp_avg", "0/exp_avg_sq"} <= set(saved)
    second = train(2, "keep")
    assert next(iter(second.content.metric_records.values()))[METRIC_RESUMED_STEPS] == steps
    assert int(context.state.array_records[OPTIMIZER_STATE_KEY]["0/step"].numpy()) == 2 * steps
    fresh = train(3, "reset")  # stateless: the kept state is not used
    assert next(iter(fresh.content.metric_records.values()))[METRIC_RESUMED_STEPS] == 0
