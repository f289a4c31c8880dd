"""Weights packed into one wire vector: exact, and aggregation-neutral behind the update guard."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from federated.config import FederatedConfig
from federated.strategies import GuardedStrategy, build_strategy, check_update
from federated.transport import PackError, pack, unpack
from tests.unit.test_federated_strategies import StaticGrid, _global, _reply, _updates

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def test_pack_round_trip_is_bitwise_and_keeps_dtypes() -> None:
    arrays = [
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        np.array(123456, dtype=np.int64),  # BatchNorm's num_batches_tracked
        np.array([0.1, 0.2], dtype=np.float16),
    ]
    (vector,) = pack(arrays)
    assert vector.dtype == np.float32 and vector.shape == (15,)
    back = unpack([vector], arrays)
    assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(arrays, back, strict=True))


def test_values_float32_cannot_hold_switch_the_vector_to_float64() -> None:
    arrays = [np.array([2**40], dtype=np.int64), np.array([1e-300], dtype=np.float64)]
    (vector,) = pack(arrays)
    assert vector.dtype == np.float64
    assert [a.tobytes() for a in unpack([vector], arrays)] == [a.tobytes() for a in arrays]


def test_averaged_counters_are_rounded_not_truncated() -> None:
    like = [np.array(0, dtype=np.int64)]
    assert int(unpack([np.array([9.9999], dtype=np.float32)], like)[0]) == 10


def test_a_vector_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(PackError, match="holds 3 values, the model needs 4"):
        unpack([np.zeros(3, dtype=np.float32)], [np.zeros(4, dtype=np.float32)])
    with pytest.raises(PackError, match="one packed vector"):
        unpack([np.zeros(2), np.zeros(2)], [np.zeros(4)])


def _packed_round(strategy: GuardedStrategy, nodes: list[int]) -> None:
    grid = StaticGrid(nodes)
    messages = list(strategy.configure_train(1, ArrayRecord(pack(_global())), ConfigRecord(), grid))
    assert len(messages) == len(nodes)


def test_packed_fedavg_equals_fedavg_of_the_arrays() -> None:
    updates, examples = _updates(), [10, 30, 60]
    plain = GuardedStrategy(build_strategy(FederatedConfig(min_clients=3)), min_clients=3)
    plain.configure_train(1, ArrayRecord(_global()), ConfigRecord(), StaticGrid([1, 2, 3]))
    expected, _ = plain.aggregate_train(
        1, [_reply(n, u, e, n) for n, u, e in zip([1, 2, 3], updates, examples, strict=True)]
    )
    packed = GuardedStrategy(
        build_strategy(FederatedConfig(min_clients=3)), min_clients=3, templates=_global()
    )
    _packed_round(packed, [1, 2, 3])
    result, _ = packed.aggregate_train(
        1, [_reply(n, pack(u), e, n) for n, u, e in zip([1, 2, 3], updates, examples, strict=True)]
    )
    assert result is not None and expected is not None
    got = unpack(result.to_numpy_ndarrays(), _global())
    for a, b in zip(got[:2], expected.to_numpy_ndarrays()[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the integer counter is averaged like the arrays path does, then rounded back
    assert got[2].dtype == _global()[2].dtype and int(got[2]) == round(float(expected.to_numpy_ndarrays()[2]))


def test_packed_nan_update_is_rejected_and_norms_are_those_of_the_arrays() -> None:
    strategy = GuardedStrategy(
        build_strategy(FederatedConfig(min_clients=2)), min_clients=2, templates=_global()
    )
    _packed_round(strategy, [1, 2, 3])
    good_a, good_b, bad = _updates()
    bad[0][0, 0] = np.inf
    replies = [_reply(1, pack(good_a), 10, 0), _reply(2, pack(bad), 10, 1), _reply(3, pack(good_b), 30, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    clients = {c.node_id: c for c in strategy.current.clients}
    assert clients[2].status == "rejected" and "NaN or Inf" in clients[2].reason
    expected_norm, _ = check_update(good_a, _global(), 0.0)
    assert clients[1].update_norm == pytest.approx(expected_norm)


def test_a_malformed_packed_reply_is_rejected_not_fatal() -> None:
    strategy = GuardedStrategy(
        build_strategy(FederatedConfig(min_clients=1)), min_clients=1, templates=_global()
    )
    _packed_round(strategy, [1, 2])
    good, _, _ = _updates()
    replies = [_reply(1, pack(good), 10, 0), _reply(2, [np.zeros(3, dtype=np.float32)], 10, 1)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    clients = {c.node_id: c for c in strategy.current.clients}
    assert clients[2].status == "rejected" and "model needs" in clients[2].reason
