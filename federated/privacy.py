"""Differential privacy for a federated run (config key ``dp``): Flower's mechanisms, dp-accounting's ledger.

* ``central-fixed`` / ``central-adaptive``: Flower's ``DifferentialPrivacyServerSideFixedClipping`` /
  ``...AdaptiveClipping`` wrap the strategy. Every round they clip each client's update (its packed
  weight vector minus the global one, ``federated.transport``) to ``clipping_norm`` (adaptive: a norm
  that follows the median update norm, starting at ``clipping_norm``), let the strategy average, and
  add Gaussian noise of standard deviation ``noise_multiplier x clipping_norm / min_clients`` to the
  average. The noise is calibrated for the *unweighted* mean of clipped updates, so
  :class:`~federated.strategies.GuardedStrategy` weighs every client equally in these modes
  (``uniform_weights``), and only FedAvg and FedProx are allowed (config validation). Protects the
  released global model (and everyone who receives it: clients, the registry) against revealing one
  client's data; the server itself still sees each exact update.
* ``local``: each client clips its own update to ``clipping_norm`` and adds Gaussian noise of standard
  deviation ``noise_multiplier x clipping_norm`` before sending it (:func:`privatize_update`, with
  Flower's clipping and noise functions). Protects each update against the server too, at the price
  of far more noise in the average.

The privacy spent is ``epsilon`` at ``target_delta`` after ``r`` rounds, from dp-accounting's RDP
accountant composing ``r`` Gaussian mechanisms of ``noise_multiplier`` (client-level, add-or-remove
one client, no credit taken for sampling). Flower's adaptive wrapper spends part of the budget on the
noisy clipped-fraction count and lowers the update noise so that the total equals one Gaussian
mechanism of ``noise_multiplier`` (Andrew et al. 2021), so the same figure holds for both central modes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update

from federated.config import FederatedConfig
from federated.transport import pack, unpack


def wrap_strategy(inner: Strategy, config: FederatedConfig) -> Strategy:
    """``inner`` wrapped in Flower's server-side DP wrapper that ``config.dp`` names (else ``inner``)."""
    if config.dp == "central-fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            inner, config.noise_multiplier, config.clipping_norm, config.min_clients
        )
    if config.dp == "central-adaptive":
        return AdaptiveClipping(
            inner, config.noise_multiplier, config.min_clients, initial_clipping_norm=config.clipping_norm
        )
    return inner


class AdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with two Flower 1.42 bugs fixed.

    1. ``aggregate_train`` moves ``clipping_norm`` to the next round's value (the geometric update)
       *before* ``_add_noise_to_aggregated_arrays`` reads it, so the round's noise is scaled by the
       next norm: too little noise for the round's sensitivity whenever the norm shrinks. Here the
       noise uses the norm the round's updates were clipped to.
    2. ``_geometric_update`` multiplies the norm by ``exp(-lr (clipped fraction - target))``: when more
       updates than ``target_clipped_quantile`` are clipped it *shrinks* the norm (clipping even more),
       and when none are it grows without end. Here the sign is the one of Andrew et al. 2021 (the
       norm tracks the quantile): ``exp(+lr (clipped fraction - target))``.
    """

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        """Flower's aggregation; remembers the norm the updates of this round are clipped to."""
        self._round_clipping_norm = self.clipping_norm
        return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, aggregated):  # type: ignore[no-untyped-def]
        next_norm, self.clipping_norm = self.clipping_norm, self._round_clipping_norm
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)
        finally:
            self.clipping_norm = next_norm

    def _geometric_update(self, clipped_fraction: float) -> None:
        self.clipping_norm *= math.exp(self.clip_norm_lr * (clipped_fraction - self.target_clipped_quantile))


def is_central(config: FederatedConfig) -> bool:
    """Whether the server adds the noise (and the mean must be unweighted)."""
    return config.dp.startswith("central")


def clipping_norm_now(strategy: Strategy) -> float | None:
    """The clipping norm a DP wrapper uses now (the adaptive one changes it every round)."""
    value = getattr(strategy, "clipping_norm", None)
    return float(value) if value is not None else None


def epsilon_spent(config: FederatedConfig, rounds: int) -> float | None:
    """Epsilon at ``config.target_delta`` after ``rounds`` DP rounds; ``None`` when ``dp`` is ``none``."""
    if config.dp == "none":
        return None
    return _rdp_epsilon(config.noise_multiplier, rounds, config.target_delta)


@lru_cache(maxsize=256)
def _rdp_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    import dp_accounting  # only DP runs need it
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    if rounds > 0:
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
        )
    return float(accountant.get_epsilon(delta))


def privatize_update(
    weights: Sequence[np.ndarray], global_weights: Sequence[np.ndarray], config: FederatedConfig
) -> list[np.ndarray]:
    """Local DP: ``weights`` with their update clipped to ``clipping_norm`` and Gaussian noise added.

    Works on the packed vector (as the server-side wrappers do), so BatchNorm statistics and counters
    are clipped and noised like every other value; counters are rounded back by :func:`unpack`.
    """
    (vector,) = pack(weights)
    (reference,) = pack(global_weights)
    noisy = [vector.astype(np.float64)]
    compute_clip_model_update(noisy, [reference.astype(np.float64)], config.clipping_norm)
    add_gaussian_noise_inplace(noisy, config.noise_multiplier * config.clipping_norm)
    return unpack(noisy, weights)
