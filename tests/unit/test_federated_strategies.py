"""Strategies: Flower's own aggregation on real ArrayRecords, behind FleetFL's update guard."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

from federated.config import STRATEGIES, FederatedConfig
from federated.strategies import (
    METRIC_EXAMPLES,
    METRIC_HANDLER_SECONDS,
    METRIC_LOSS,
    METRIC_PARTITION,
    METRIC_RESUMED_STEPS,
    METRIC_SECONDS,
    TRAIN_METRICS,
    GuardedStrategy,
    RoundFailedError,
    aggregate_train_metrics,
    build_strategy,
    check_update,
    payload_bytes,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity")


class StaticGrid(Grid):
    """Only node sampling: the strategies call ``get_node_ids``; nothing is sent in these tests."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def set_run(self, run):  # pragma: no cover - unused
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - unused
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover - unused
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover - unused
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - unused
        raise NotImplementedError


def _global() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32), np.array(7)]


def _reply(node_id: int, arrays: list[np.ndarray], examples: float, partition: int) -> Message:
    """A train reply laid out as FleetFL's ClientApp sends it."""
    instruction = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=node_id, message_type=MessageType.TRAIN
    )
    metrics = MetricRecord(
        {
            METRIC_EXAMPLES: examples,
            METRIC_LOSS: 0.5,
            METRIC_SECONDS: 1.0,
            METRIC_HANDLER_SECONDS: 1.5,
            METRIC_PARTITION: partition,
            METRIC_RESUMED_STEPS: 0,
        }
    )
    assert set(metrics) == set(TRAIN_METRICS)
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=instruction)


def _failure(node_id: int, reason: str) -> Message:
    instruction = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=node_id, message_type=MessageType.TRAIN
    )
    return Message(Error(code=1, reason=reason), reply_to=instruction)


def _updates() -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [
        [np.asarray(a + rng.normal(scale=0.1, size=a.shape)).astype(a.dtype) for a in _global()]
        for _ in range(3)
    ]


def _start_round(strategy: GuardedStrategy, nodes: list[int]) -> None:
    messages = list(strategy.configure_train(1, ArrayRecord(_global()), ConfigRecord(), StaticGrid(nodes)))
    assert len(messages) == len(nodes)


def test_fedavg_is_the_example_weighted_mean() -> None:
    strategy = GuardedStrategy(build_strategy(FederatedConfig(min_clients=3)), min_clients=3)
    _start_round(strategy, [11, 12, 13])
    updates, examples = _updates(), [10, 30, 60]
    replies = [
        _reply(n, u, e, p) for p, (n, u, e) in enumerate(zip([11, 12, 13], updates, examples, strict=True))
    ]
    arrays, metrics = strategy.aggregate_train(1, reversed(replies))  # arrival order must not matter
    assert arrays is not None and metrics is not None
    total = sum(examples)
    for index, result in enumerate(arrays.to_numpy_ndarrays()):
        expected = sum(
            np.float64(e) / total * u[index].astype(np.float64)
            for u, e in zip(updates, examples, strict=True)
        )
        np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    assert metrics[METRIC_LOSS] == pytest.approx(0.5)  # Flower's weighted mean of the train metrics
    assert METRIC_PARTITION not in metrics  # per-client facts are not averaged (no "partition-id 1.5")
    record = strategy.current
    assert record is not None and [c.partition_id for c in record.clients] == [0, 1, 2]
    serialized = payload_bytes(ArrayRecord(_global()))  # numpy .npy bytes: data plus a small header
    assert serialized > sum(a.nbytes for a in _global())
    assert record.bytes_sent == record.bytes_received == 3 * serialized


def test_nan_update_is_rejected_and_the_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    strategy = GuardedStrategy(build_strategy(FederatedConfig(min_clients=2)), min_clients=2)
    _start_round(strategy, [1, 2, 3])
    good_a, good_b, bad = _updates()
    bad[0][1, 2] = np.nan
    replies = [_reply(1, good_a, 10, 0), _reply(2, bad, 10, 1), _reply(3, good_b, 30, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    expected = (10 * good_a[0].astype(np.float64) + 30 * good_b[0]) / 40
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, rtol=1e-6)
    statuses = {c.node_id: (c.status, c.reason) for c in strategy.current.clients}
    assert statuses[2][0] == "rejected" and "NaN" in statuses[2][1]
    assert "rejected the update of client node 2" in caplog.text


def _renamed_arrays(content: RecordDict) -> None:
    content["weights"] = content.pop("arrays")


def _extra_metric_record(content: RecordDict) -> None:
    content["more"] = MetricRecord({"x": 1.0})


def _missing_examples(content: RecordDict) -> None:
    del content["metrics"][METRIC_EXAMPLES]


def _extra_metric(content: RecordDict) -> None:
    content["metrics"]["debug"] = 1.0


def _list_metric(content: RecordDict) -> None:
    content["metrics"][METRIC_LOSS] = [0.5, 0.4]


def _renamed_array(content: RecordDict) -> None:
    arrays = content["arrays"]
    arrays["other"] = arrays.pop(next(iter(arrays.keys())))


@pytest.mark.parametrize(
    ("damage", "examples", "reason"),
    [
        (_renamed_arrays, 10, "expected one named 'arrays'"),
        (_renamed_array, 10, "array names differ"),
        (_extra_metric_record, 10, "expected one named 'metrics'"),
        (_missing_examples, 10, "missing ['num-examples']"),
        (_extra_metric, 10, "unexpected ['debug']"),
        (_list_metric, 10, "'train-loss' is a list"),
        (None, 0, "'num-examples' is 0"),
        (None, -20, "'num-examples' is -20"),
        (None, 2.5, "'num-examples' is 2.5"),
        (None, float("nan"), "'num-examples' is nan"),
    ],
)
def test_a_malformed_reply_is_rejected_and_the_round_goes_on(damage, examples, reason) -> None:
    """Flower raises for the whole round when one reply's records differ; the guard drops that one."""
    good_a, bad, good_b = _updates()
    replies = [_reply(1, good_a, 10, 0), _reply(2, bad, examples, 1), _reply(3, good_b, 30, 2)]
    if damage is not None:
        damage(replies[1].content)
    # Flower's own strategy fails the round (it checks only the weighting key for lists)
    if damage is not None and damage is not _list_metric:
        plain = build_strategy(FederatedConfig(min_clients=2))
        with pytest.raises(InconsistentMessageReplies):
            plain.aggregate_train(1, replies)

    strategy = GuardedStrategy(build_strategy(FederatedConfig(min_clients=2)), min_clients=2)
    _start_round(strategy, [1, 2, 3])
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    expected = (10 * good_a[0].astype(np.float64) + 30 * good_b[0]) / 40
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, rtol=1e-6)
    rejected = [c for c in strategy.current.clients if c.status == "rejected"]
    assert [c.node_id for c in rejected] == [2]
    assert reason in rejected[0].reason


def test_norm_bound_rejects_large_updates() -> None:
    reference = _global()
    small, _ = check_update(
        [a + np.float32(0.01) if a.dtype.kind == "f" else a for a in reference], reference, 1.0
    )
    assert small is not None and small < 1.0
    norm, reason = check_update([a * 100 if a.dtype.kind == "f" else a for a in reference], reference, 1.0)
    assert norm > 1.0 and "max_update_norm" in reason
    assert check_update(reference[:2], reference, 0.0)[1] is not None  # wrong count
    assert check_update([reference[0].T, *reference[1:]], reference, 0.0)[1] is not None  # wrong shape


def test_failed_client_is_tolerated_down_to_min_clients() -> None:
    strategy = GuardedStrategy(build_strategy(FederatedConfig(min_clients=1)), min_clients=1)
    _start_round(strategy, [1, 2])
    update = _updates()[0]
    arrays, _ = strategy.aggregate_train(
        1, [_reply(1, update, 8, 0), _failure(2, "Traceback...\nOSError: died")]
    )
    assert arrays is not None
    np.testing.assert_array_equal(arrays.to_numpy_ndarrays()[0], update[0])
    failed = [c for c in strategy.current.clients if c.status == "failed"]
    assert failed and failed[0].reason == "OSError: died"


def test_too_few_usable_updates_stop_the_run() -> None:
    strategy = GuardedStrategy(build_strategy(FederatedConfig(min_clients=2)), min_clients=2, round_offset=4)
    _start_round(strategy, [1, 2])
    with pytest.raises(RoundFailedError, match=r"round 5: 1 usable client update\(s\), min_clients is 2"):
        strategy.aggregate_train(1, [_reply(1, _updates()[0], 8, 0), _failure(2, "killed")])


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedavgm", FedAvgM),
        ("fedprox", FedProx),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("fedmedian", FedMedian),
        ("fedtrimmedavg", FedTrimmedAvg),
        ("krum", Krum),
    ],
)
def test_every_strategy_is_flowers_own_class(name: str, cls: type) -> None:
    assert name in STRATEGIES
    strategy = build_strategy(FederatedConfig(strategy=name, min_clients=3))
    assert type(strategy) is cls
    assert strategy.min_train_nodes == 3 and strategy.fraction_evaluate == 0.0
    assert strategy.train_metrics_aggr_fn is aggregate_train_metrics


def test_fedprox_sends_mu_and_fedavgm_state_survives_export() -> None:
    config = FederatedConfig(strategy="fedprox", proximal_mu=0.25)
    strategy = GuardedStrategy(build_strategy(config), min_clients=2)
    messages = list(strategy.configure_train(1, ArrayRecord(_global()), ConfigRecord(), StaticGrid([1, 2])))
    assert messages[0].content["config"]["proximal-mu"] == 0.25

    momentum = GuardedStrategy(build_strategy(FederatedConfig(strategy="fedavgm")), min_clients=2)
    _start_round(momentum, [1, 2])
    momentum.aggregate_train(1, [_reply(1, _updates()[0], 5, 0), _reply(2, _updates()[1], 5, 1)])
    state = momentum.state_arrays()
    assert state and all(key.startswith("momentum_vector/") for key in state)
    restored = GuardedStrategy(build_strategy(FederatedConfig(strategy="fedavgm")), min_clients=2)
    restored.load_state_arrays(state)
    for a, b in zip(restored.inner.momentum_vector, momentum.inner.momentum_vector, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_server_optimizers_average_batchnorm_statistics_instead_of_stepping_them(name: str) -> None:
    """Flower's server optimizers step every array; a running variance must stay a (positive) mean."""
    config = FederatedConfig(strategy=name, min_clients=2, server_lr=3.0, server_momentum=0.9, fedopt_eta=0.5)
    start = _global()  # [weights (parameter), running variance (buffer), counter (buffer)]
    start[1] = np.abs(start[1]) + 1.0
    buffers = [False, True, True]
    guarded = GuardedStrategy(build_strategy(config), min_clients=2, buffers=buffers)
    plain = build_strategy(config)  # Flower's strategy alone, for the parameters' expected values
    grid = StaticGrid([1, 2])
    list(guarded.configure_train(1, ArrayRecord(start), ConfigRecord(), grid))
    list(plain.configure_train(1, ArrayRecord(start), ConfigRecord(), grid))
    updates = [[start[0] + 0.1, start[1] * 0.5, np.array(9)], [start[0] - 0.3, start[1] * 0.2, np.array(12)]]
    replies = [_reply(1, updates[0], 10, 0), _reply(2, updates[1], 30, 1)]

    result = guarded.aggregate_train(1, replies)[0].to_numpy_ndarrays()
    flower = plain.aggregate_train(1, replies)[0].to_numpy_ndarrays()
    np.testing.assert_allclose(result[0], flower[0], rtol=1e-6)  # parameters: the strategy's own step
    expected_var = 0.25 * updates[0][1].astype(np.float64) + 0.75 * updates[1][1]
    np.testing.assert_allclose(result[1], expected_var, rtol=1e-6)
    assert (result[1] > 0).all()
    assert int(result[2]) == round(0.25 * 9 + 0.75 * 12) and result[2].dtype == start[2].dtype
    if name == "fedavgm":  # Flower's step pushes the variance below zero: what this guards against
        assert (flower[1] < 0).any()
        np.testing.assert_allclose(
            guarded.inner.current_arrays.to_numpy_ndarrays()[1], expected_var, rtol=1e-6
        )


def test_fedavg_keeps_its_buffers_untouched_by_the_buffer_rule() -> None:
    updates, examples = _updates(), [10, 30, 60]
    results = []
    for buffers in (None, [False, True, True]):
        strategy = GuardedStrategy(
            build_strategy(FederatedConfig(min_clients=3)), min_clients=3, buffers=buffers
        )
        _start_round(strategy, [11, 12, 13])
        replies = [
            _reply(n, u, e, p)
            for p, (n, u, e) in enumerate(zip([11, 12, 13], updates, examples, strict=True))
        ]
        results.append(strategy.aggregate_train(1, replies)[0].to_numpy_ndarrays())
    assert all(a.tobytes() == b.tobytes() for a, b in zip(*results, strict=True))
