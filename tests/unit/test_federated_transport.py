"""Weights packed into one wire vector: exact, and aggregation-neutral behind the update guard."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from federated.config import FederatedConfig
from federated.strategies import GuardedStrategy, build_strategy, check_update
from federated.transport import PackError, pack, unpack, widen
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
    with pytest.raises(PackError, match="fp16 vector holds 3 values, the model needs 4"):
        unpack([np.zeros(3, dtype=np.float16), np.zeros(0, dtype=np.float32)], [np.zeros(4)])


def _model_like() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        rng.normal(scale=0.05, size=(32, 8, 3, 3)).astype(np.float32),  # conv weights
        np.abs(rng.normal(scale=400.0, size=16)).astype(np.float32),  # a BatchNorm running_var
        np.array(3_000_001, dtype=np.int64),  # num_batches_tracked: no float16 holds it
        np.array([1e-9, -2e-6, 0.0], dtype=np.float32),  # tiny values (float16 subnormals and below)
    ]


def test_fp16_round_trip_error_is_bounded_and_integer_buffers_stay_exact() -> None:
    arrays = _model_like()
    half, exact = pack(arrays, "fp16")
    assert half.dtype == np.float16 and half.size == sum(a.size for a in arrays if a.dtype.kind == "f")
    assert exact.size == 1
    back = unpack([half, exact], arrays)
    assert [(b.dtype, b.shape) for b in back] == [(a.dtype, a.shape) for a in arrays]
    assert int(back[2]) == 3_000_001  # exact, although float16 steps by 2048 there
    for original, restored in zip(arrays[:2], back[:2], strict=True):
        # round to nearest: relative error <= 2**-11 for normal float16 values, absolute error <= 2**-25
        # below 2**-14 (subnormals step by 2**-24)
        np.testing.assert_allclose(restored, original, rtol=2**-11, atol=2**-25)
    np.testing.assert_allclose(back[3], arrays[3], rtol=0, atol=2**-25)  # half the smallest subnormal step
    fp32 = pack(arrays)
    assert sum(v.nbytes for v in pack(arrays, "fp16")) <= fp32[0].nbytes / 2 + 8


def test_widen_gives_the_exact_fp32_form_of_what_fp16_carried() -> None:
    arrays = _model_like()
    (wide,) = widen(pack(arrays, "fp16"), arrays)
    assert wide.dtype == np.float32 and wide.size == pack(arrays)[0].size
    assert [a.tobytes() for a in unpack([wide], arrays)] == [
        a.tobytes() for a in unpack(pack(arrays, "fp16"), arrays)
    ]
    assert widen(pack(arrays), arrays)[0].tobytes() == pack(arrays)[0].tobytes()


def test_fp16_refuses_a_weight_beyond_its_range_naming_the_key() -> None:
    with pytest.raises(PackError, match=r"update_dtype: fp16 cannot hold a weight of magnitude 7e\+04"):
        pack([np.array([1.0, 70000.0], dtype=np.float32)], "fp16")
    nan = pack([np.array([np.nan], dtype=np.float32)], "fp16")[0]  # travels: the server's guard rejects it
    assert np.isnan(nan).all()
    with pytest.raises(PackError, match="update_dtype: 'int8'"):
        pack([np.zeros(2)], "int8")


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


def test_fp16_broadcast_and_replies_halve_the_bytes_and_aggregate_in_fp32() -> None:
    """The server sends fp16, clients answer fp16, Flower's FedAvg averages float32 vectors."""
    model = _model_like()
    rng = np.random.default_rng(5)
    updates = [[a + rng.normal(scale=0.01, size=a.shape).astype(a.dtype) for a in model] for _ in range(3)]
    examples = [10, 30, 60]
    results = {}
    for dtype in ("fp32", "fp16"):
        config = FederatedConfig(min_clients=3)
        strategy = GuardedStrategy(build_strategy(config), 3, templates=model, update_dtype=dtype)
        grid = StaticGrid([1, 2, 3])
        messages = list(strategy.configure_train(1, ArrayRecord(pack(model)), ConfigRecord(), grid))
        sent = messages[0].content.array_records["arrays"].to_numpy_ndarrays()
        assert [v.dtype for v in sent] == ([np.float32] if dtype == "fp32" else [np.float16, np.float32])
        replies = [
            _reply(n, pack(u, dtype), e, n) for n, u, e in zip([1, 2, 3], updates, examples, strict=True)
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        (vector,) = arrays.to_numpy_ndarrays()
        assert vector.dtype in (np.float32, np.float64)  # aggregated in float32 or wider, never float16
        results[dtype] = (unpack([vector], model), strategy.current)
    (exact, record32), (half, record16) = results["fp32"], results["fp16"]
    assert record16.bytes_sent < 0.6 * record32.bytes_sent
    assert record16.bytes_received < 0.6 * record32.bytes_received
    shares = np.array(examples) / sum(examples)
    for index, (a, b) in enumerate(zip(half, exact, strict=True)):
        # each client's values are rounded once (the bound of the round-trip test), then averaged
        bound = sum(w * np.abs(u[index].astype(np.float64)) for w, u in zip(shares, updates, strict=True))
        assert np.all(np.abs(a.astype(np.float64) - b) <= bound * 2**-11 + 2**-25 + 1e-7 * np.abs(b))
    assert int(half[2]) == int(exact[2])
    assert all(c.status == "ok" for c in record16.clients)


def test_a_plain_fp32_reply_to_an_fp16_round_is_rejected_not_fatal() -> None:
    strategy = GuardedStrategy(
        build_strategy(FederatedConfig(min_clients=1)),
        min_clients=1,
        templates=_global(),
        update_dtype="fp16",
    )
    list(strategy.configure_train(1, ArrayRecord(pack(_global())), ConfigRecord(), StaticGrid([1, 2])))
    good, other, _ = _updates()
    arrays, _ = strategy.aggregate_train(
        1, [_reply(1, pack(good, "fp16"), 10, 0), _reply(2, pack(other), 10, 1)]
    )
    assert arrays is not None
    clients = {c.node_id: c for c in strategy.current.clients}
    assert clients[1].status == "ok"
    assert clients[2].status == "rejected" and "array names differ" in clients[2].reason
