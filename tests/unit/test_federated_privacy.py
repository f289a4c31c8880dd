"""Differential privacy: Flower's DP wrappers behind FleetFL's guard, dp-accounting's epsilon, local DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from federated import privacy
from federated.config import ConfigError, FederatedConfig
from federated.strategies import GuardedStrategy, build_strategy
from federated.transport import pack, unpack
from tests.unit.test_federated_strategies import StaticGrid, _reply

pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["dp=central"], "dp"),
        (["dp=central-fixed", "strategy=krum", "min_clients=3"], "dp: central-fixed"),
        (["dp=central-adaptive", "strategy=fedadam"], "dp: central-adaptive"),
        (["noise_multiplier=0"], "noise_multiplier"),
        (["dp=central-adaptive", "noise_multiplier=0.5", "min_clients=3"], "noise_multiplier: .* < min"),
        (["clipping_norm=-1"], "clipping_norm"),
        (["target_delta=0"], "target_delta"),
        (["target_delta=0.9"], "target_delta"),
    ],
)
def test_invalid_privacy_settings_name_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        FederatedConfig.load(None, overrides)


def test_local_dp_combines_with_any_strategy() -> None:
    assert FederatedConfig.load(None, ["dp=local", "strategy=fedmedian"]).dp == "local"


def test_epsilon_grows_with_rounds_shrinks_with_noise_and_beats_the_plain_rdp_bound() -> None:
    config = FederatedConfig(dp="central-fixed", noise_multiplier=1.0, target_delta=1e-5)
    assert privacy.epsilon_spent(FederatedConfig(), 5) is None
    spent = [privacy.epsilon_spent(config, rounds) for rounds in (1, 2, 10, 50)]
    assert spent == sorted(spent) and spent[0] > 0
    assert privacy.epsilon_spent(config.replace(noise_multiplier=2.0), 10) < spent[2]
    # Gaussian mechanism: RDP of order a after T rounds is T a / (2 z^2); the classic conversion
    # eps = min_a T a / (2 z^2) + log(1/delta) / (a - 1) is an upper bound the accountant must meet.
    plain = min(10 * a / 2 + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 200, 20000))
    assert spent[2] <= plain + 1e-6
    assert spent[2] > 0.5 * plain  # and it is the same order: a real accountant, not a constant


def _model() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=(50, 40)).astype(np.float32), np.array(12, dtype=np.int64)]


def _round(dp: str, updates: list[list[np.ndarray]], examples: list[int], **settings: float):
    config = FederatedConfig(dp=dp, min_clients=len(updates), **settings)
    model = _model()
    strategy = GuardedStrategy(
        privacy.wrap_strategy(build_strategy(config), config),
        config.min_clients,
        templates=model,
        uniform_weights=privacy.is_central(config),
    )
    nodes = list(range(1, len(updates) + 1))
    list(strategy.configure_train(1, ArrayRecord(pack(model)), ConfigRecord(), StaticGrid(nodes)))
    replies = [_reply(n, pack(u), e, n) for n, u, e in zip(nodes, updates, examples, strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return strategy, unpack(arrays.to_numpy_ndarrays(), model)


def test_central_fixed_clips_each_update_and_averages_them_unweighted() -> None:
    model = _model()
    directions = [np.ones_like(model[0]), -0.5 * np.ones_like(model[0])]
    updates = [[model[0] + d * scale, model[1]] for d, scale in zip(directions, (1.0, 0.01), strict=True)]
    norms = [float(np.linalg.norm(u[0] - model[0])) for u in updates]
    assert norms[0] > 2.0 > norms[1]  # client 1 is clipped to 2.0, client 2 is not
    strategy, (weights, counter) = _round(
        "central-fixed", updates, [90, 10], clipping_norm=2.0, noise_multiplier=1e-9
    )
    clipped = [(u[0] - model[0]) * min(1.0, 2.0 / n) for u, n in zip(updates, norms, strict=True)]
    expected = model[0] + (clipped[0] + clipped[1]) / 2  # equal weights although 90 vs 10 examples
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    assert int(counter) == 12
    assert [c.examples for c in strategy.current.clients] == [90, 10]  # the record keeps the true counts


def test_central_adaptive_noise_is_scaled_by_the_norm_the_round_clipped_to() -> None:
    """Flower 1.42 scales the noise by the next round's norm and moves the norm the wrong way."""
    np.random.seed(3)  # Flower's DP noise uses numpy's global generator
    model = _model()
    big = [[np.zeros((50, 40), dtype=np.float32) + 10.0 + model[0], model[1]] for _ in range(2)]
    strategy, (weights, _) = _round("central-adaptive", big, [5, 5], clipping_norm=1.0, noise_multiplier=0.15)
    next_norm = privacy.clipping_norm_now(strategy.inner)
    # both updates were clipped (more than the target half): the norm grows, by about exp(0.2 x 0.5)
    assert next_norm == pytest.approx(math.exp(0.1), rel=0.02)
    clipped_mean = model[0] + 10.0 * (1.0 / float(np.linalg.norm(np.full((50, 40), 10.0))))
    noise = (weights - clipped_mean).ravel()
    z_update = strategy.inner.noise_multiplier  # Flower lowers it to pay for the noisy clipped count
    expected = z_update * 1.0 / 2
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)
    assert abs(float(noise.std()) - z_update * next_norm / 2) > 0.05 * expected


def test_local_dp_clips_the_update_and_adds_noise_of_the_configured_scale() -> None:
    np.random.seed(0)
    model = [np.zeros(200_000, dtype=np.float32), np.array(4, dtype=np.int64)]
    trained = [np.full(200_000, 0.01, dtype=np.float32), np.array(6, dtype=np.int64)]
    config = FederatedConfig(dp="local", clipping_norm=1.0, noise_multiplier=0.001)
    weights, counter = privacy.privatize_update(trained, model, config)
    assert weights.dtype == np.float32 and counter.dtype == np.int64
    norm = math.sqrt(200_000 * 0.01**2 + 2**2)
    scale = 1.0 / norm  # the whole packed update (counter included) is clipped to norm 1
    noise = weights - 0.01 * scale
    assert float(noise.std()) == pytest.approx(0.001, rel=0.02)
    assert abs(float(noise.mean())) < 1e-4


def test_noise_never_leaves_a_negative_running_variance() -> None:
    np.random.seed(1)
    config = FederatedConfig(dp="central-fixed", min_clients=2, noise_multiplier=1.0, clipping_norm=1.0)
    variance = np.full(1000, 0.01, dtype=np.float32)  # small variances: noise of std 0.5 crosses 0
    model = [variance, np.zeros(1000, dtype=np.float32)]
    strategy = GuardedStrategy(
        privacy.wrap_strategy(build_strategy(config), config),
        2,
        templates=model,
        uniform_weights=True,
        nonnegative=[True, False],
    )
    list(strategy.configure_train(1, ArrayRecord(pack(model)), ConfigRecord(), StaticGrid([1, 2])))
    trained = [variance + 1e-3, model[1]]  # not exactly 0: Flower 1.42's clipping divides by the norm
    arrays, _ = strategy.aggregate_train(1, [_reply(n, pack(trained), 5, n) for n in (1, 2)])
    assert arrays is not None
    var, other = unpack(arrays.to_numpy_ndarrays(), model)
    assert (var >= 0).all() and (var == 0).any()  # clamped where the noise crossed 0
    assert (other < 0).any()  # unmarked arrays keep their noise


def test_final_table_shows_epsilon_only_for_private_runs() -> None:
    from federated.report import final_table

    row = {"round": 1, "map50_95": 0.1, "map50": 0.2, "train_loss": 1.0, "round_seconds": 3.0}
    assert "epsilon" not in final_table([row])
    table = final_table([{**row, "epsilon": 4.7321}, {**row, "round": 2, "epsilon": 6.5}]).splitlines()
    assert table[0].split()[-1] == "epsilon"
    assert [line.split()[-1] for line in table[2:]] == ["4.732", "6.500"]
