"""The Flower ClientApp: one FleetFL client trains YOLO on its own shard (thin glue over ``yolo_task``).

Where a client's data is (first match wins):

1. node config ``data-yaml``: an explicit ``data.yaml`` (the ClearML client task sets this);
2. node config ``data-dir``: ``<data-dir>/client_<partition-id>/data.yaml``;
3. the ``data-dir`` the server sends in its train config (simulation: all clients share one disk).

Weights travel packed into one vector (``federated.transport``: exact, and far fewer objects for
Flower to move), or with ``update_dtype=fp16`` as a float16 vector plus an exact one for the integer
buffers. Everything else (model, epochs, image size, learning rate...) comes from the server
in each train message's ConfigRecord: the flat :class:`~federated.config.FederatedConfig` plus Flower's
``server-round`` and, for FedProx, ``proximal-mu``.
"""

from __future__ import annotations

from federated.runtime import configure_offline

configure_offline()

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from federated import privacy, yolo_task  # noqa: E402
from federated.config import FederatedConfig  # noqa: E402
from federated.strategies import (  # noqa: E402
    METRIC_EXAMPLES,
    METRIC_HANDLER_SECONDS,
    METRIC_LOSS,
    METRIC_PARTITION,
    METRIC_RESUMED_STEPS,
    METRIC_SECONDS,
    REPLY_ARRAYS,
    REPLY_METRICS,
)
from federated.transport import pack, unpack  # noqa: E402

app = ClientApp()

#: Key of the local optimizer's state in the client's Flower ``Context.state`` (``optimizer_state=keep``).
OPTIMIZER_STATE_KEY = "fleetfl.optimizer-state"


class ClientDataError(ValueError):
    """The client cannot tell where its data is."""


def _config_record(message: Message) -> ConfigRecord:
    records = list(message.content.config_records.values())
    return records[0] if records else ConfigRecord()


def resolve_data_yaml(node_config: dict[str, Any], message_config: dict[str, Any]) -> Path:
    """Find this client's ``data.yaml`` (see the module docstring for the order)."""
    if node_config.get("data-yaml"):
        return Path(str(node_config["data-yaml"]))
    data_dir = node_config.get("data-dir") or message_config.get("data-dir")
    if "partition-id" not in node_config or not data_dir:
        raise ClientDataError(
            "no data for this client: set node config 'data-yaml', or 'partition-id' with a 'data-dir' "
            "(node config or the server's run)"
        )
    return Path(str(data_dir)) / f"client_{int(node_config['partition-id'])}" / "data.yaml"


def _run_config(settings: dict[str, Any], source: str) -> FederatedConfig:
    """The FederatedConfig the server sent (the message also carries Flower's own keys)."""
    names = set(FederatedConfig.field_names())
    return FederatedConfig.from_flat({k: v for k, v in settings.items() if k in names}, source=source)


def _global_weights(message: Message, config: FederatedConfig, data_yaml: Path) -> list:
    """The global weights in ``message``, unpacked from the wire vector (``federated.transport``)."""
    arrays = next(iter(message.content.array_records.values()))
    names = yolo_task.read_dataset(data_yaml).names
    like = yolo_task.get_weights(yolo_task.build_model(config.model, names, seed=config.seed))
    return unpack(arrays.to_numpy_ndarrays(), like)


def _partition_id(context: Context) -> int:
    value = context.node_config.get("partition-id")
    return int(value) if value is not None else int(context.node_id) % (2**31 - 1)


def _saved_optimizer_state(context: Context) -> dict | None:
    """This client's optimizer state from its previous round, if it kept one (never sent anywhere)."""
    record = context.state.array_records.get(OPTIMIZER_STATE_KEY)
    return {name: array.numpy() for name, array in record.items()} if record else None


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train locally from the global weights and reply with all weights and the true example count."""
    started = time.perf_counter()
    settings = dict(_config_record(message))
    config = _run_config(settings, "train message")
    data_yaml = resolve_data_yaml(dict(context.node_config), settings)
    server_round = int(settings.get("server-round", 0))
    partition_id = _partition_id(context)
    global_weights = _global_weights(message, config, data_yaml)
    result = yolo_task.train_local(
        global_weights,
        data_yaml,
        config,
        seed=yolo_task.round_seed(config.seed, server_round, partition_id),
        server_round=server_round,
        proximal_mu=float(settings.get("proximal-mu", 0.0)),
        optimizer_state=_saved_optimizer_state(context),
    )
    if result.optimizer_state is not None:
        state = {name: Array(array) for name, array in result.optimizer_state.items()}
        context.state[OPTIMIZER_STATE_KEY] = ArrayRecord(array_dict=state)
    weights = result.weights
    if config.dp == "local":  # clip and noise before anything leaves the client
        weights = privacy.privatize_update(weights, global_weights, config)
    packed = pack(weights, config.update_dtype)
    metrics = MetricRecord(
        {
            METRIC_EXAMPLES: result.num_examples,
            METRIC_LOSS: result.train_loss,
            METRIC_SECONDS: result.seconds,
            METRIC_HANDLER_SECONDS: time.perf_counter() - started,
            METRIC_PARTITION: partition_id,
            METRIC_RESUMED_STEPS: result.resumed_steps,
        }
    )
    content = RecordDict({REPLY_ARRAYS: ArrayRecord(packed), REPLY_METRICS: metrics})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the global weights on this client's own ``val`` split (federated evaluation)."""
    settings = dict(_config_record(message))
    config = _run_config(settings, "evaluate message")
    data_yaml = resolve_data_yaml(dict(context.node_config), settings)
    result = yolo_task.evaluate(_global_weights(message, config, data_yaml), data_yaml, config)
    examples = yolo_task.count_images(data_yaml, split="val")
    metrics = MetricRecord({"map50": result.map50, "map50_95": result.map50_95, METRIC_EXAMPLES: examples})
    return Message(content=RecordDict({REPLY_METRICS: metrics}), reply_to=message)
