"""Flower strategies chosen by the config, and one wrapper that guards and records every round.

The strategies are Flower's own classes (``flwr.serverapp.strategy``), built by
:func:`build_strategy`. :class:`GuardedStrategy` wraps whichever one was chosen and adds what a
long-running federated job needs around it, without touching the aggregation maths:

* **update guard**: a reply whose arrays hold NaN/Inf, have the wrong shapes, or whose update
  (reply minus the round's global weights) has an L2 norm above ``max_update_norm`` is rejected and
  logged, as is one whose records or metrics differ from what a FleetFL client sends
  (:func:`check_reply_layout`; ``num-examples`` must be a whole number >= 1); the round goes on
  with the others;
* **minimum clients**: fewer than ``min_clients`` usable replies (failed, timed out or rejected)
  stop the run with :class:`RoundFailedError` before anything of that round is written;
* **deterministic order**: replies are sorted by the client's partition id before aggregation, so
  a floating-point sum never depends on which client answered first;
* **round offset**: ``Strategy.start`` always counts rounds from 1; a resumed run passes the offset
  so that every round keeps its true number (FedAdam's bias correction uses it);
* **strategy state**: server-side optimizer state (FedAvgM momentum, FedAdam/FedYogi moments) can
  be exported and restored, so a resumed run continues exactly;
* **round record**: per client examples, train loss and seconds, and payload bytes sent and received;
* **wire dtype**: with ``update_dtype="fp16"`` the weights broadcast to the clients are encoded as
  float16 (``federated.transport.pack``) after the inner strategy built its messages, and each reply
  is widened back to the exact float32 vector before the inner strategy aggregates it: every
  strategy, and its server-side state, works in float32;
* **statistics are averaged, not optimized**: Flower's server optimizers (FedAvgM, FedAdam, FedYogi)
  step every array of the model, BatchNorm's running mean and variance included: server momentum or
  a server learning rate above 1 overshoots a running variance (it can turn negative) and ruins
  BatchNorm. For those strategies the arrays marked as ``buffers`` get the examples-weighted mean of
  the clients' values (what FedAvg gives them); trainable parameters keep the strategy's result.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from federated.config import FederatedConfig
from federated.transport import PackError, pack, unpack, widen

LOG = logging.getLogger(__name__)

#: MetricRecord keys a FleetFL client reports (``num-examples`` is Flower's weighting key).
METRIC_EXAMPLES = "num-examples"
METRIC_LOSS = "train-loss"
METRIC_SECONDS = "train-seconds"
METRIC_HANDLER_SECONDS = "clientapp-seconds"  # the whole train message in the ClientApp (set-up included)
METRIC_PARTITION = "partition-id"
METRIC_RESUMED_STEPS = "resumed-optimizer-steps"  # steps the client's kept optimizer state carried in
#: Per-client facts that have no meaningful mean across clients (``metrics.jsonl`` keeps each value).
PER_CLIENT_METRICS = (METRIC_PARTITION, METRIC_RESUMED_STEPS)
#: Every key of a train reply's MetricRecord (what :mod:`federated.client_app` sends).
TRAIN_METRICS = (
    METRIC_EXAMPLES,
    METRIC_LOSS,
    METRIC_SECONDS,
    METRIC_HANDLER_SECONDS,
    METRIC_PARTITION,
    METRIC_RESUMED_STEPS,
)
#: Record names in a train reply: one ArrayRecord (the weights) and one MetricRecord.
REPLY_ARRAYS = "arrays"
REPLY_METRICS = "metrics"


def aggregate_train_metrics(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Flower's examples-weighted mean of the clients' train metrics, without :data:`PER_CLIENT_METRICS`.

    Flower's strategies log this record every round; its default averages every key, which printed
    means of partition ids. Passed to every strategy as ``train_metrics_aggr_fn``.
    """
    metrics = aggregate_metricrecords(records, weighting_metric_name)
    for key in PER_CLIENT_METRICS:
        metrics.pop(key, None)
    return metrics


#: Flower strategies that apply a server-side optimizer to the averaged update (pseudo-gradient).
SERVER_OPTIMIZERS: tuple[type[Strategy], ...] = (FedAvgM, FedAdam, FedYogi)


class RoundFailedError(RuntimeError):
    """A round ended with fewer usable client updates than ``min_clients``."""


def build_strategy(config: FederatedConfig) -> Strategy:
    """Flower's strategy named by ``config.strategy``, with the config's options.

    Federated (client-side) evaluation is off (``fraction_evaluate=0``): the server evaluates the
    global model centrally on the held-out split every round.
    """
    common: dict[str, Any] = {
        "fraction_train": config.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": config.min_clients,
        "min_evaluate_nodes": 0,
        "min_available_nodes": config.min_clients,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }
    fedopt = {
        "eta": config.fedopt_eta,
        "eta_l": config.lr0,  # informational in Flower (clients use their own lr0)
        "beta_1": config.fedopt_beta_1,
        "beta_2": config.fedopt_beta_2,
        "tau": config.fedopt_tau,
    }
    name = config.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedavgm":
        return FedAvgM(
            **common, server_learning_rate=config.server_lr, server_momentum=config.server_momentum
        )
    if name == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    if name == "fedadam":
        return FedAdam(**common, **fedopt)
    if name == "fedyogi":
        return FedYogi(**common, **fedopt)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=config.trim_beta)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=config.krum_byzantine)
    raise ValueError(f"strategy: unknown strategy {name!r}")  # config validation makes this unreachable


# ---------------------------------------------------------------------- update checks
def payload_bytes(record: ArrayRecord) -> int:
    """Serialized bytes of the arrays in ``record`` (numpy ``.npy`` data; message framing not counted)."""
    return sum(len(array.data) for array in record.values())


def check_reply_layout(content: RecordDict, array_keys: list[str]) -> str | None:
    """Why a train reply cannot be aggregated with the others, or ``None`` when it can.

    Flower 1.42's strategies check that all replies of a round have the same records and keys
    (``validate_message_reply_consistency``) and raise ``InconsistentMessageReplies`` for the whole
    round when one differs; a zero or negative ``num-examples`` would silently turn the weighted
    mean into NaN or a wrong sign. One such reply is rejected here instead, naming what is wrong.

    Args:
        content: the reply's records.
        array_keys: the keys of the ArrayRecord sent to the clients this round.
    """
    if list(content.array_records) != [REPLY_ARRAYS]:
        return f"ArrayRecords {sorted(content.array_records)}, expected one named {REPLY_ARRAYS!r}"
    if list(content.array_records[REPLY_ARRAYS].keys()) != array_keys:
        return f"the {REPLY_ARRAYS!r} record's array names differ from those sent to the client"
    if list(content.metric_records) != [REPLY_METRICS]:
        return f"MetricRecords {sorted(content.metric_records)}, expected one named {REPLY_METRICS!r}"
    metrics = content.metric_records[REPLY_METRICS]
    missing = sorted(set(TRAIN_METRICS) - set(metrics))
    unexpected = sorted(set(metrics) - set(TRAIN_METRICS))
    if missing or unexpected:
        return f"metrics: missing {missing}, unexpected {unexpected}"
    for key, value in metrics.items():
        if isinstance(value, list):
            return f"metric {key!r} is a list, expected one number"
    examples = metrics[METRIC_EXAMPLES]
    if not (math.isfinite(examples) and examples >= 1 and float(examples).is_integer()):
        return f"metric {METRIC_EXAMPLES!r} is {examples!r}, expected a whole number >= 1"
    return None


def check_update(
    update: list[np.ndarray], reference: list[np.ndarray], max_norm: float
) -> tuple[float, str | None]:
    """Check one client update against the round's global weights.

    Returns:
        ``(norm, reason)``: the L2 norm of ``update - reference`` over floating-point arrays and
        ``None`` if the update is acceptable, else a short reason for rejecting it.
    """
    if len(update) != len(reference):
        return math.nan, f"{len(update)} arrays, expected {len(reference)}"
    total = 0.0
    for index, (new, old) in enumerate(zip(update, reference, strict=True)):
        if new.shape != old.shape:
            return math.nan, f"array {index} has shape {new.shape}, expected {old.shape}"
        if new.dtype.kind not in "fiub":
            return math.nan, f"array {index} has dtype {new.dtype}"
        if new.dtype.kind == "f":
            if not np.isfinite(new).all():
                return math.nan, f"array {index} holds NaN or Inf"
            delta = new.astype(np.float64) - old.astype(np.float64)
            total += float(np.dot(delta.ravel(), delta.ravel()))
    norm = math.sqrt(total)
    if max_norm > 0 and norm > max_norm:
        return norm, f"update norm {norm:.4g} is above max_update_norm {max_norm:.4g}"
    return norm, None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(text: str | None, limit: int = 300) -> str:
    """The last meaningful line of an error report (Flower forwards whole tracebacks), shortened."""
    lines = [line.strip() for line in _ANSI.sub("", text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class ClientRound:
    """One client's part in a round (a line of ``metrics.jsonl``'s ``clients``)."""

    node_id: int
    status: str  # "ok", "rejected" or "failed"
    partition_id: int | None = None
    examples: int | None = None
    train_loss: float | None = None
    train_seconds: float | None = None
    clientapp_seconds: float | None = None
    resumed_optimizer_steps: int | None = None
    update_norm: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form without empty fields."""
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class RoundRecord:
    """What happened in one training round (filled by :class:`GuardedStrategy`)."""

    server_round: int
    started: float = field(default_factory=time.perf_counter)
    replies_at: float | None = None  # when the round's replies were all in (aggregation starts)
    bytes_sent: int = 0
    bytes_received: int = 0
    clients: list[ClientRound] = field(default_factory=list)


class GuardedStrategy(Strategy):
    """Wrap a Flower strategy with the update guard, minimum clients, ordering and round record.

    Args:
        inner: the Flower strategy doing the aggregation.
        min_clients: usable replies a round needs.
        max_update_norm: bound on an update's L2 norm (``0``: no bound).
        round_offset: rounds already done (a resumed run passes the round it resumes from).
        templates: the model's arrays when weights travel packed into one vector
            (``federated.transport``): updates are unpacked before they are checked, so the norm
            and the dtype checks see the model's own arrays. ``None``: arrays travel as they are.
        buffers: per model array, whether it is a statistic rather than a trainable parameter
            (BatchNorm running mean/variance, ``num_batches_tracked``): with a server optimizer
            (:data:`SERVER_OPTIMIZERS`) these are averaged instead of stepped. ``None``: none marked.
        update_dtype: the wire form of the weights (``federated.transport.UPDATE_DTYPES``); ``fp16``
            needs ``templates``.
        nonnegative: per model array, whether it cannot be negative (BatchNorm's running variance):
            the aggregate is clamped at 0 there. A no-op for a mean of real variances; differential
            privacy's noise (``federated.privacy``) would otherwise turn small variances negative
            (NaN activations). Clamping is post-processing: it costs no privacy.
        uniform_weights: every accepted client weighs the same in the inner strategy's mean (its
            ``num-examples`` is passed on as 1; ``metrics.jsonl`` keeps the true count): central
            differential privacy calibrates its noise for that mean (``federated.privacy``).
    """

    def __init__(
        self,
        inner: Strategy,
        min_clients: int,
        max_update_norm: float = 0.0,
        round_offset: int = 0,
        templates: list[np.ndarray] | None = None,
        buffers: list[bool] | None = None,
        update_dtype: str = "fp32",
        uniform_weights: bool = False,
        nonnegative: list[bool] | None = None,
    ):
        if update_dtype != "fp32" and templates is None:
            raise ValueError(f"update_dtype={update_dtype!r} needs the model's templates (packed weights)")
        self.inner = inner
        self.update_dtype = update_dtype
        self.uniform_weights = uniform_weights
        self.nonnegative = list(nonnegative) if nonnegative is not None and any(nonnegative) else None
        self.templates = templates
        self.buffers = list(buffers) if buffers is not None and any(buffers) else None
        self.min_clients = min_clients
        self.max_update_norm = max_update_norm
        self.round_offset = round_offset
        self.current: RoundRecord | None = None
        self._reference: list[np.ndarray] = []
        self._array_keys: list[str] = []  # names in the ArrayRecord sent this round
        #: Weights the next round starts from instead of the last aggregate (a rolled-back round).
        self.restore: ArrayRecord | None = None

    # -- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global weights, let the inner strategy sample and count bytes sent."""
        true_round = server_round + self.round_offset
        if self.restore is not None:  # the previous round was rolled back (see server_app)
            arrays, self.restore = self.restore, None
            if isinstance(getattr(self.inner, "current_arrays", None), ArrayRecord):
                self.inner.current_arrays = arrays  # FedAvgM keeps its own copy of the global weights
        self.current = RoundRecord(server_round=true_round)
        self._reference = self._model_arrays(arrays)
        self._array_keys = list(arrays.keys())
        messages = list(self.inner.configure_train(true_round, arrays, config, grid))
        if self.update_dtype != "fp32" and messages:
            self._encode_broadcast(messages)
            self._array_keys = list(next(iter(messages[0].content.array_records.values())).keys())
        self.current.bytes_sent = sum(
            payload_bytes(record) for message in messages for record in message.content.array_records.values()
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop failed and rejected replies, check ``min_clients``, aggregate the rest in order."""
        true_round = server_round + self.round_offset
        record = self.current if self.current is not None else RoundRecord(server_round=true_round)
        record.replies_at = time.perf_counter()
        accepted: list[
            tuple[int, int, Message, int, list[np.ndarray]]
        ] = []  # sort keys, reply, examples, buffers
        for message in replies:
            node_id = int(message.metadata.src_node_id)
            if message.has_error():
                reason = short_reason(message.error.reason) or f"error code {message.error.code}"
                LOG.warning("round %d: client node %d failed: %s", true_round, node_id, reason)
                record.clients.append(ClientRound(node_id=node_id, status="failed", reason=reason))
                continue
            record.bytes_received += sum(payload_bytes(r) for r in message.content.array_records.values())
            reason = check_reply_layout(message.content, self._array_keys)
            if reason is not None:
                client = ClientRound(node_id=node_id, status="rejected")
            else:
                client = self._client_from_reply(node_id, message)
                try:
                    update = self._model_arrays(message.content.array_records[REPLY_ARRAYS])
                except PackError as exc:
                    reason = str(exc)
                else:
                    norm, reason = check_update(update, self._reference, self.max_update_norm)
                    client.update_norm = None if math.isnan(norm) else norm
            if reason is not None:
                LOG.warning(
                    "round %d: rejected the update of client node %d: %s", true_round, node_id, reason
                )
                client.status, client.reason = "rejected", reason
            else:
                buffers = self._buffer_values(update) if self._averages_buffers else []
                partition = client.partition_id if client.partition_id is not None else 1 << 30
                accepted.append((partition, node_id, message, client.examples or 0, buffers))
            record.clients.append(client)
        record.clients.sort(
            key=lambda c: (c.partition_id if c.partition_id is not None else 1 << 30, c.node_id)
        )
        if len(accepted) < self.min_clients:
            summary = ", ".join(
                f"node {c.node_id}: {c.status} ({c.reason})" for c in record.clients if c.reason
            )
            raise RoundFailedError(
                f"round {true_round}: {len(accepted)} usable client update(s), "
                f"min_clients is {self.min_clients}" + (f" [{summary}]" if summary else "")
            )
        accepted.sort(key=lambda item: (item[0], item[1]))
        ordered = [item[2] for item in accepted]
        if self.update_dtype != "fp32":  # aggregate in float32, whatever travelled
            for message in ordered:
                received = message.content.array_records[REPLY_ARRAYS].to_numpy_ndarrays()
                message.content[REPLY_ARRAYS] = ArrayRecord(widen(received, self.templates))
        if self.uniform_weights:
            for message in ordered:
                reported = message.content.metric_records[REPLY_METRICS]
                message.content[REPLY_METRICS] = MetricRecord({**dict(reported), METRIC_EXAMPLES: 1})
        arrays, metrics = self.inner.aggregate_train(true_round, ordered)
        if arrays is not None and self._averages_buffers:
            arrays = self._average_buffers(arrays, [(item[3], item[4]) for item in accepted])
        if arrays is not None and self.nonnegative is not None:
            arrays = self._clamp_nonnegative(arrays)
        return arrays, metrics

    def _clamp_nonnegative(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with the arrays marked ``nonnegative`` clamped at 0 (see the constructor)."""
        assert self.nonnegative is not None
        model = self._model_arrays(arrays)
        negative = [i for i, flag in enumerate(self.nonnegative) if flag and (model[i] < 0).any()]
        if not negative:
            return arrays
        for index in negative:
            model[index] = np.maximum(model[index], 0).astype(model[index].dtype)
        result = ArrayRecord(pack(model) if self.templates is not None else model)
        if isinstance(getattr(self.inner, "current_arrays", None), ArrayRecord):
            self.inner.current_arrays = result
        return result

    def _encode_broadcast(self, messages: list[Message]) -> None:
        """Replace the weights in the inner strategy's train messages by their ``update_dtype`` form."""
        encoded: dict[int, ArrayRecord] = {}
        for message in messages:
            content = message.content
            for name, record in list(content.array_records.items()):
                if id(record) not in encoded:  # Flower's strategies share one RecordDict among messages
                    wire = ArrayRecord(pack(self._model_arrays(record), self.update_dtype))
                    encoded[id(record)] = encoded[id(wire)] = wire
                content[name] = encoded[id(record)]

    @property
    def _averages_buffers(self) -> bool:
        """Whether buffers get the plain weighted mean (a server optimizer would step them)."""
        return self.buffers is not None and isinstance(self.inner, SERVER_OPTIMIZERS)

    def _buffer_values(self, update: list[np.ndarray]) -> list[np.ndarray]:
        """The buffers of one client's update (kept for :meth:`_average_buffers`, not the whole model)."""
        assert self.buffers is not None
        return [array for array, is_buffer in zip(update, self.buffers, strict=True) if is_buffer]

    def _average_buffers(
        self, arrays: ArrayRecord, clients: list[tuple[int, list[np.ndarray]]]
    ) -> ArrayRecord:
        """``arrays`` with every buffer replaced by the examples-weighted mean of the clients' values.

        ``clients``: per accepted client, its number of examples and its buffer values
        (:meth:`_buffer_values`).
        """
        assert self.buffers is not None
        model = self._model_arrays(arrays)
        examples = np.array([count for count, _ in clients], dtype=np.float64)
        shares = examples / examples.sum() if examples.sum() > 0 else np.full(len(clients), 1 / len(clients))
        indices = [index for index, is_buffer in enumerate(self.buffers) if is_buffer]
        for position, index in enumerate(indices):
            mean = sum(
                share * values[position].astype(np.float64)
                for share, (_, values) in zip(shares, clients, strict=True)
            )
            dtype = self._reference[index].dtype  # the model's own dtype (aggregation gives float64)
            model[index] = np.asarray(mean if dtype.kind == "f" else np.rint(mean)).astype(dtype)
        result = ArrayRecord(pack(model) if self.templates is not None else model)
        if isinstance(getattr(self.inner, "current_arrays", None), ArrayRecord):
            self.inner.current_arrays = result  # FedAvgM steps from its own copy of the global weights
        return result

    def _model_arrays(self, record: ArrayRecord) -> list[np.ndarray]:
        """The model's arrays in ``record`` (unpacked when weights travel as one vector)."""
        arrays = record.to_numpy_ndarrays()
        return unpack(arrays, self.templates) if self.templates is not None else arrays

    @staticmethod
    def _client_from_reply(node_id: int, message: Message) -> ClientRound:
        """The client's facts from a reply that passed :func:`check_reply_layout` (every key is there)."""
        metrics = message.content.metric_records[REPLY_METRICS]
        return ClientRound(
            node_id=node_id,
            status="ok",
            partition_id=int(metrics[METRIC_PARTITION]),
            examples=int(metrics[METRIC_EXAMPLES]),
            train_loss=float(metrics[METRIC_LOSS]),
            train_seconds=float(metrics[METRIC_SECONDS]),
            clientapp_seconds=float(metrics[METRIC_HANDLER_SECONDS]),
            resumed_optimizer_steps=int(metrics[METRIC_RESUMED_STEPS]),
        )

    # -- evaluation and summary: delegated
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the inner strategy (FleetFL evaluates centrally instead)."""
        return self.inner.configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate to the inner strategy."""
        return self.inner.aggregate_evaluate(server_round + self.round_offset, replies)

    def summary(self) -> None:
        """Log the guard's settings and the inner strategy's summary."""
        LOG.debug(
            "GuardedStrategy(%s): min_clients=%d max_update_norm=%s round_offset=%d",
            type(self.inner).__name__,
            self.min_clients,
            self.max_update_norm or "off",
            self.round_offset,
        )
        self.inner.summary()

    # -- server-side optimizer state (for exact resume)
    _STATE_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Server-side optimizer state of the inner strategy as named arrays (empty if none)."""
        state: dict[str, np.ndarray] = {}
        for attribute in self._STATE_ATTRIBUTES:
            value = getattr(self.inner, attribute, None)
            if isinstance(value, dict):
                state.update({f"{attribute}/{key}": np.asarray(array) for key, array in value.items()})
            elif isinstance(value, list):
                state.update({f"{attribute}/{index}": np.asarray(array) for index, array in enumerate(value)})
        return state

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` exported (before the first resumed round)."""
        for attribute in self._STATE_ATTRIBUTES:
            prefix = f"{attribute}/"
            entries = {key[len(prefix) :]: array for key, array in state.items() if key.startswith(prefix)}
            if not entries or not hasattr(self.inner, attribute):
                continue
            if attribute == "momentum_vector":
                setattr(self.inner, attribute, [entries[str(i)] for i in range(len(entries))])
            else:
                setattr(self.inner, attribute, entries)
