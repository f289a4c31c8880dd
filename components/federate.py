"""Federated training as ClearML tasks: one server task, one client task per shard.

Roles (one module, the task's ``General/role`` parameter picks which one an agent runs):

* **server** (queue ``fl-server``): fetches the evaluation split by Dataset id, starts a SuperLink
  (TLS with the local CA unless ``insecure``), publishes its address (user property
  ``superlink_address``) and the CA *certificate* (artifact ``superlink-ca``, public part only, its
  sha256 in ``superlink_ca_sha256``), enqueues one client task per shard (queue ``fl-clients``, or
  one queue per site), waits for the clients' SuperNodes (a timeout is a clear failure and the
  client tasks are stopped), submits the FleetFL Flower app and follows ``RUN_DIR/metrics.jsonl``:
  every round is reported with the round as the iteration (global mAP50 / mAP50-95, per class,
  per client loss, examples and seconds, round seconds, bytes, rollbacks), its checkpoint is
  uploaded as an artifact, and the final model is registered (``OutputModel``).
* **client** (queue ``fl-clients``): fetches its shard by Dataset id, downloads the CA certificate
  the server published (checked against the published sha256), starts a SuperNode pointing at the
  published address and runs until the server task ends.

:func:`federate` is the pipeline step: it creates the server task, enqueues it on ``server_queue``
and waits for its output (``server_queue=None`` runs the server part in this process instead).
The server task is an ordinary component task: clone it, edit ``federated/rounds`` (or any other
parameter) and enqueue it to run the edited federation.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common import (
    DEFAULT_PROJECT,
    PARAMS_SECTION,
    ComponentError,
    connect_config,
    create_component_task,
    init_component_task,
    prepare_process,
    publish_output,
    read_output,
    running_remotely,
)
from federated.config import DEFAULT_POLL_INTERVAL

if TYPE_CHECKING:
    from clearml import Task

    from federated.config import FederatedConfig
    from federated.processes import ProcessSet

LOG = logging.getLogger(__name__)

COMPONENT = "federate"
#: User properties the server task publishes for its clients.
PROP_ADDRESS = "superlink_address"
PROP_CA_SHA256 = "superlink_ca_sha256"
PROP_STATE = "federation_state"  # starting -> running -> finished | failed
#: Artifact holding the SuperLink's CA certificate (PEM, public).
CA_ARTIFACT = "superlink-ca"
#: Task statuses after which a task will not run (again) by itself.
ENDED = ("completed", "failed", "stopped", "closed", "published")

#: Server task parameters (section ``General``) with their defaults.
SERVER_DEFAULTS: dict[str, Any] = {
    "role": "server",
    "datasets": {},  # version_data's output: {"eval": id, "clients": [ids], ...}
    "project": DEFAULT_PROJECT,
    "client_queue": "fl-clients",
    "client_queues": [],  # one queue per shard (per site) instead of client_queue
    "min_clients": 0,  # 0: the config's min_clients
    "rollback_threshold": 0.10,
    "client_wait_s": 300.0,
    "run_timeout_s": 0.0,  # 0: no limit
    "superlink_host": "127.0.0.1",
    "advertise_host": "",  # the address clients use ('' = superlink_host)
    "insecure": False,
    "model_name": "fleetfl-federated",
}
#: Client task parameters (section ``General``).
CLIENT_DEFAULTS: dict[str, Any] = {
    "role": "client",
    "server_task_id": "",
    "dataset_id": "",
    "partition_id": 0,
    "num_partitions": 1,
    "server_wait_s": 300.0,
    "poll_interval": DEFAULT_POLL_INTERVAL,  # the run's poll_interval, set by the server task
}


class FederateError(ValueError):
    """The federation could not start or did not finish; the message says why."""


# ====================================================================== the pipeline step
def federate(
    datasets: Mapping[str, Any],
    config: Mapping[str, Any] | FederatedConfig | None = None,
    project: str = DEFAULT_PROJECT,
    server_queue: str | None = "fl-server",
    client_queue: str = "fl-clients",
    min_clients: int | None = None,
    rollback_threshold: float = 0.10,
    *,
    client_queues: Sequence[str] = (),
    client_wait_s: float = 300.0,
    run_timeout_s: float = 0.0,
    insecure: bool = False,
    model_name: str = "fleetfl-federated",
    wait_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run a federated training over the shards of ``datasets`` on ClearML agents.

    Args:
        datasets: ``version_data`` output (``eval`` Dataset id and ``clients`` Dataset ids).
        config: flat federated config (:class:`~federated.config.FederatedConfig` keys).
        project: ClearML project of the tasks and the model.
        server_queue: queue of the server task; ``None`` or ``""`` runs the server in this process
            (reporting to the current task, or to a new one).
        client_queue: queue of the client tasks.
        min_clients: SuperNodes needed to start and client updates needed per round (default: the
            config's ``min_clients``); at most the number of shards.
        rollback_threshold: a round whose global mAP50-95 is more than this fraction below the best
            so far is rolled back to the best checkpoint (0 turns it off).
        client_queues: one queue per shard (per site), overriding ``client_queue``.
        client_wait_s: how long the server waits for the clients' SuperNodes.
        run_timeout_s: stop the run after this many seconds (0: no limit).
        insecure: plain HTTP between SuperNodes and SuperLink (explicit opt-out of TLS).
        model_name: name of the registered final model.
        wait_timeout_s: how long this call waits for the server task (``None``: as long as it runs).

    Returns:
        ``{"server_task_id", "client_task_ids", "rounds": [{"round", "map50", "map50_95", ...}],
        "final_weights", "model_id", "rolled_back": [...]}``.

    Raises:
        ComponentError: bad arguments, found before any task is enqueued.
        FederateError: the server task failed or was stopped.
    """
    params = server_params(
        datasets,
        project=project,
        client_queue=client_queue,
        client_queues=client_queues,
        min_clients=min_clients,
        rollback_threshold=rollback_threshold,
        client_wait_s=client_wait_s,
        run_timeout_s=run_timeout_s,
        insecure=insecure,
        model_name=model_name,
    )
    cfg = resolve_config(config, params)
    check_queues([*([server_queue] if server_queue else []), *client_queue_names(params)])
    if not server_queue:
        prepare_process()
        from clearml import Task

        task = Task.current_task() or init_component_task("federate-server", params, project=project)[0]
        return serve_federation(task, params, cfg)
    task = create_server_task(
        datasets, cfg, **{k: v for k, v in params.items() if k not in ("role", "datasets")}
    )
    from clearml import Task

    Task.enqueue(task, queue_name=server_queue)
    LOG.info("federate: server task %s enqueued on %s", task.id, server_queue)
    wait_for_task(task.id, timeout_s=wait_timeout_s)
    return read_output(task.id)


def server_params(
    datasets: Mapping[str, Any],
    *,
    project: str = DEFAULT_PROJECT,
    client_queue: str = "fl-clients",
    client_queues: Sequence[str] = (),
    min_clients: int | None = None,
    rollback_threshold: float = 0.10,
    client_wait_s: float = 300.0,
    run_timeout_s: float = 0.0,
    superlink_host: str = "127.0.0.1",
    advertise_host: str = "",
    insecure: bool = False,
    model_name: str = "fleetfl-federated",
) -> dict[str, Any]:
    """The server task's parameters (section ``General``), checked.

    Raises:
        ComponentError: a missing Dataset id, bad queue list, or an out-of-range setting.
    """
    params = {
        **SERVER_DEFAULTS,
        # only the ids: the partition report stays with the Dataset versions
        "datasets": {k: v for k, v in dict(datasets or {}).items() if k in ("source", "eval", "clients")},
        "project": project,
        "client_queue": client_queue,
        "client_queues": list(client_queues or []),
        "min_clients": int(min_clients or 0),
        "rollback_threshold": float(rollback_threshold),
        "client_wait_s": float(client_wait_s),
        "run_timeout_s": float(run_timeout_s or 0.0),
        "superlink_host": superlink_host,
        "advertise_host": advertise_host,
        "insecure": bool(insecure),
        "model_name": model_name,
    }
    check_server_params(params)
    return params


def check_server_params(params: Mapping[str, Any]) -> None:
    """Validate server parameters (also after a UI edit); raise :class:`ComponentError`."""
    datasets = params.get("datasets") or {}
    if not isinstance(datasets, Mapping):
        raise ComponentError(f"datasets: expected version_data's output (a dict), got {datasets!r}")
    clients = datasets.get("clients")
    if not datasets.get("eval") or not isinstance(datasets.get("eval"), str):
        raise ComponentError("datasets: no 'eval' Dataset id (pass version_data's output)")
    if (
        not isinstance(clients, list | tuple)
        or not clients
        or not all(isinstance(c, str) and c for c in clients)
    ):
        raise ComponentError("datasets: 'clients' must be a non-empty list of Dataset ids")
    queues = list(params.get("client_queues") or [])
    if queues and len(queues) != len(clients):
        raise ComponentError(
            f"client_queues: {len(queues)} queue(s) for {len(clients)} shard(s); give one queue per shard"
        )
    if not queues and not str(params.get("client_queue") or "").strip():
        raise ComponentError("client_queue: a queue name is required")
    min_clients = int(params.get("min_clients") or 0)
    if min_clients < 0 or min_clients > len(clients):
        raise ComponentError(f"min_clients: {min_clients} is not between 1 and the {len(clients)} shards")
    threshold = float(params.get("rollback_threshold", 0.0))
    if not math.isfinite(threshold) or not 0.0 <= threshold < 1.0:
        raise ComponentError(f"rollback_threshold: must be in [0, 1), got {threshold!r}")
    if float(params.get("client_wait_s", 0.0)) <= 0:
        raise ComponentError("client_wait_s: must be > 0")
    if float(params.get("run_timeout_s", 0.0)) < 0:
        raise ComponentError("run_timeout_s: must be >= 0")


def client_queue_names(params: Mapping[str, Any]) -> list[str]:
    """The queue of each shard's client task (``client_queues``, else ``client_queue`` for all)."""
    shards = len((params.get("datasets") or {}).get("clients") or [])
    return list(params.get("client_queues") or []) or [str(params["client_queue"])] * shards


def check_queues(names: Sequence[str]) -> None:
    """Raise :class:`ComponentError` naming the first queue that does not exist on the server."""
    from queues.definitions import find_queue_id

    for name in dict.fromkeys(names):
        if not find_queue_id(name):
            raise ComponentError(f"queue {name!r} does not exist (create it: fleetfl queues create)")


def resolve_config(
    config: Mapping[str, Any] | FederatedConfig | None, params: Mapping[str, Any]
) -> FederatedConfig:
    """The run's :class:`FederatedConfig`: ``config`` with the server parameters that override it.

    ``min_clients`` (when set) and ``rollback_threshold`` (when the config has that key) come from
    the server parameters.

    Raises:
        ConfigError: a bad key or value (names the key), or more ``min_clients`` than shards.
    """
    from federated.config import ConfigError, FederatedConfig

    if config is None:
        cfg = FederatedConfig()
    elif isinstance(config, FederatedConfig):
        cfg = config
    else:
        cfg = FederatedConfig.from_flat(dict(config), source="config")
    changes: dict[str, Any] = {}
    if int(params.get("min_clients") or 0):
        changes["min_clients"] = int(params["min_clients"])
    if "rollback_threshold" in FederatedConfig.field_names():
        changes["rollback_threshold"] = float(params.get("rollback_threshold", 0.0))
    if changes:
        cfg = cfg.replace(**changes)
    shards = len((params.get("datasets") or {}).get("clients") or [])
    if shards and cfg.min_clients > shards:
        raise ConfigError(f"min_clients: {cfg.min_clients} is more than the {shards} client shards")
    return cfg


def create_server_task(
    datasets: Mapping[str, Any],
    config: Mapping[str, Any] | FederatedConfig | None = None,
    *,
    task_name: str = "federate-server",
    tags: tuple[str, ...] = (),
    **options: Any,
) -> Task:
    """A draft server task (enqueue it, clone it, or use it as the HPO base task).

    ``options`` are :func:`server_params` keywords (``project``, ``client_queue``, ``min_clients``...).
    """
    params = server_params(datasets, **options)
    cfg = resolve_config(config, params)
    return create_component_task(
        COMPONENT,
        params,
        project=params["project"],
        task_name=task_name,
        task_type="training",
        config=cfg,
        tags=tags,
    )


def wait_for_task(task_id: str, timeout_s: float | None = None, poll_s: float = 2.0) -> str:
    """Wait until task ``task_id`` has ended; return ``completed`` or raise :class:`FederateError`."""
    from clearml import Task

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        task = Task.get_task(task_id=task_id)
        status = str(task.get_status())
        if status in ("completed", "published", "closed"):
            return status
        if status in ("failed", "stopped"):
            message = task.data.status_message or task.data.status_reason or ""
            raise FederateError(
                f"task {task_id} ({task.name}) ended {status}: {message}; last log lines:\n{log_tail(task)}"
            )
        if deadline is not None and time.monotonic() > deadline:
            raise FederateError(f"task {task_id} ({task.name}) did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)


# ====================================================================== the server role
@dataclass
class _Federation:
    """State of one server task while it runs."""

    task: Task
    params: dict[str, Any]
    config: FederatedConfig
    run_dir: Path
    client_task_ids: list[str] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: list[dict[str, Any]] = field(default_factory=list)
    cloudwatch_metrics: Any = None  # autoscaler.cloudwatch.RunMetrics, made at the first round


def publish_round_to_cloudwatch(fed: _Federation, row: Mapping[str, Any]) -> None:
    """The round's per-run CloudWatch metrics (``autoscaler/cloudwatch.py``); a no-op unless
    ``FLEETFL_CLOUDWATCH_REGION`` is set; a failed publish is logged, never raised."""
    from autoscaler.cloudwatch import RunMetrics

    if fed.cloudwatch_metrics is None:
        fed.cloudwatch_metrics = RunMetrics(fed.task.id)
    fed.cloudwatch_metrics.publish_round(row)


def serve_federation(
    task: Task, params: Mapping[str, Any], config: FederatedConfig, work_dir: Path | None = None
) -> dict[str, Any]:
    """The server role: run the whole federation and report it to ``task`` (see the module docstring).

    Returns:
        The component output (also uploaded as the task's ``output`` artifact).
    """
    prepare_process()
    from federated.deployment import FlwrCLI, check_app, flower_env, start_superlink, write_flower_config
    from federated.engine import run_config
    from federated.processes import ProcessSet
    from federated.runtime import PROJECT_ROOT, configure_offline
    from federated.tls import DEFAULT_HOSTS, ensure_tls

    check_server_params(params)
    params = dict(params)
    datasets = params["datasets"]
    base = Path(work_dir or tempfile.mkdtemp(prefix=f"fleetfl-federate-{task.id[:8]}-"))
    run_dir, data_dir = base / "run", base / "data"
    fed = _Federation(task=task, params=params, config=config, run_dir=run_dir)
    _set_state(task, "starting")
    try:
        with _terminate_as_exit():
            _link_dataset(datasets["eval"], data_dir / "eval")
            state = configure_offline(with_ultralytics=False)
            bind = str(params["superlink_host"])
            advertise = str(params.get("advertise_host") or bind)
            tls = None
            if not params["insecure"]:
                hosts = DEFAULT_HOSTS if advertise in DEFAULT_HOSTS else (*DEFAULT_HOSTS, advertise)
                tls = ensure_tls(state, hosts=hosts)
            settings = run_config(config, data_dir, run_dir, -1)
            check_app(PROJECT_ROOT, settings)
            run_dir.mkdir(parents=True, exist_ok=True)
            flwr_home = run_dir / "flwr"
            env = flower_env(flwr_home)
            with ProcessSet(run_dir / "logs", env) as procs:
                superlink = start_superlink(procs, tls=tls, host=bind, cwd=run_dir)
                write_flower_config(flwr_home, superlink.address, tls.ca_cert if tls else None)
                address = f"{advertise}:{superlink.port}"
                _publish_superlink(task, address, tls.ca_cert if tls else None)
                _enqueue_clients(task, params, fed.client_task_ids, config.poll_interval)
                cli = FlwrCLI(env, cwd=run_dir)
                _wait_for_clients(fed, cli, procs, superlink)
                config_file = _write_toml(run_dir / "run_config.toml", settings)
                run_id = cli.submit(PROJECT_ROOT, config_file)
                _set_state(task, "running")
                LOG.info("federate: run %d submitted to %s", run_id, superlink.address)
                info = _follow_run(fed, cli, procs, superlink, run_id)
            status = str(info.get("status", ""))
            if status != "finished:completed":
                raise FederateError(
                    f"federated run ended with status {status!r} ({info.get('status-details', '')}); "
                    f"ServerApp log:\n{_tail(run_dir / 'logs' / 'serverapp.log')}"
                )
            _report_new_rounds(fed)
            output = _finish(fed)
    except BaseException as exc:
        _set_state(task, "failed")
        _stop_clients(fed.client_task_ids, reason=f"server task {task.id} failed: {exc}"[:250])
        _upload_logs(task, run_dir)
        raise
    _set_state(task, "finished")
    _wait_clients_done(fed.client_task_ids)
    if work_dir is None and running_remotely():  # everything is uploaded: free the agent's disk
        shutil.rmtree(base, ignore_errors=True)
    return output


def _finish(fed: _Federation) -> dict[str, Any]:
    """Register the final model, upload the run's files and publish the output."""
    from clearml import OutputModel

    from federated import run_dir as rd

    task, run_dir = fed.task, fed.run_dir
    final = run_dir / rd.FINAL_MODEL
    if not final.is_file():
        raise FederateError(f"the run finished without {final}")
    last = fed.rounds[-1] if fed.rounds else {}
    if not task.output_uri:  # an agent-run task may have none: upload to the default file server
        task.output_uri = True
    model = OutputModel(
        task=task,
        name=str(fed.params.get("model_name") or "fleetfl-federated"),
        framework="PyTorch",
        tags=["federated"],
        comment=f"FleetFL federated {fed.config.strategy}, {len(fed.rounds)} round(s), "
        f"mAP50-95 {last.get('map50_95', float('nan')):.4f}",
    )
    model.update_weights(weights_filename=str(final), auto_delete_file=False, async_enable=False)
    with contextlib.suppress(Exception):
        model.set_metadata("map50_95", str(last.get("map50_95")), "float")
        model.set_metadata("map50", str(last.get("map50")), "float")
    for name in (rd.METRICS_FILE, rd.PLOT_FILE, rd.CONFIG_FILE):
        path = run_dir / name
        if path.is_file():
            task.upload_artifact(name, artifact_object=path, wait_on_upload=True)
    output = {
        "server_task_id": task.id,
        "client_task_ids": list(fed.client_task_ids),
        "rounds": fed.rounds,
        "final_weights": model.url or str(final),
        "model_id": model.id,
        "rolled_back": fed.rolled_back,
        "strategy": fed.config.strategy,
        "run_dir": str(run_dir),
    }
    publish_output(task, output)
    return output


def _publish_superlink(task: Task, address: str, ca_cert: Path | None) -> None:
    """Publish the SuperLink address and the CA certificate (public part only) for the clients."""
    properties: dict[str, str] = {PROP_ADDRESS: address, PROP_CA_SHA256: ""}
    if ca_cert is not None:
        pem = Path(ca_cert).read_bytes()
        if b"PRIVATE KEY" in pem:  # never publish key material
            raise FederateError(f"{ca_cert} holds a private key; refusing to publish it")
        task.upload_artifact(CA_ARTIFACT, artifact_object=Path(ca_cert), wait_on_upload=True)
        properties[PROP_CA_SHA256] = hashlib.sha256(pem).hexdigest()
    task.set_user_properties(**properties)


def _enqueue_clients(
    server: Task, params: Mapping[str, Any], ids: list[str], poll_interval: float
) -> list[str]:
    """Create and enqueue one client task per shard, adding each id to ``ids`` as it is created."""
    from clearml import Task

    clients = list(params["datasets"]["clients"])
    queues = client_queue_names(params)
    check_queues(queues)
    for index, dataset_id in enumerate(clients):
        client = create_component_task(
            COMPONENT,
            {
                **CLIENT_DEFAULTS,
                "server_task_id": server.id,
                "dataset_id": dataset_id,
                "partition_id": index,
                "num_partitions": len(clients),
                "poll_interval": poll_interval,
            },
            project=str(params["project"]),
            task_name=f"federate-client-{index}",
            task_type="training",
            tags=("federated-client",),
        )
        ids.append(client.id)  # known before it is enqueued: cleaned up if anything fails
        client.set_parent(server.id)
        Task.enqueue(client, queue_name=queues[index])
        LOG.info(
            "federate: client %d (dataset %s) -> task %s on %s", index, dataset_id, client.id, queues[index]
        )
    return ids


def _wait_for_clients(fed: _Federation, cli: Any, procs: ProcessSet, superlink: Any) -> None:
    """Wait until every shard's SuperNode is online (or ``min_clients`` of them at the timeout)."""
    from clearml import Task

    wanted = len(fed.client_task_ids)
    needed = fed.config.min_clients
    deadline = time.monotonic() + float(fed.params["client_wait_s"])
    online = 0
    while True:
        procs.track()
        if not superlink.process.alive():
            raise FederateError(f"the SuperLink exited: {superlink.process.log_tail()}")
        online = cli.online_nodes()
        if online >= wanted:
            return
        ended = [tid for tid in fed.client_task_ids if str(Task.get_task(task_id=tid).get_status()) in ENDED]
        if wanted - len(ended) < needed:
            raise FederateError(
                f"{len(ended)} of {wanted} client task(s) ended before the run started ({', '.join(ended)}); "
                f"min_clients is {needed}"
            )
        if time.monotonic() > deadline:
            if online >= needed and online > 0:
                LOG.warning(
                    "federate: starting with %d of %d clients (min_clients %d)", online, wanted, needed
                )
                return
            raise FederateError(
                f"only {online} of {wanted} client SuperNode(s) connected within "
                f"{fed.params['client_wait_s']:.0f} s "
                f"(min_clients {needed}); are agents serving the client queue(s) "
                f"{sorted(set(fed.params.get('client_queues') or [fed.params['client_queue']]))}?"
            )
        time.sleep(1.0)


def _follow_run(fed: _Federation, cli: Any, procs: ProcessSet, superlink: Any, run_id: int) -> dict[str, Any]:
    """Report rounds as ``metrics.jsonl`` grows until the Flower run has finished."""
    timeout = float(fed.params.get("run_timeout_s") or 0.0)
    start = time.monotonic()
    streamer = procs.start("serverapp", ["flwr", "log", str(run_id), cli.connection, "--stream"])
    last_check = 0.0
    while True:
        procs.track()
        _report_new_rounds(fed)
        if not superlink.process.alive():
            raise FederateError(f"the SuperLink exited: {superlink.process.log_tail()}")
        if timeout and time.monotonic() - start > timeout:
            cli.stop(run_id)
            raise FederateError(f"the federated run did not finish within {timeout:.0f} s; it was stopped")
        if not streamer.alive() or time.monotonic() - last_check > 10.0:
            last_check = time.monotonic()
            info = cli.run_info(run_id)
            if str(info.get("status", "")).startswith("finished"):
                with contextlib.suppress(Exception):
                    streamer.popen.wait(timeout=5.0)
                return info
            if not streamer.alive():
                streamer = procs.start("serverapp", ["flwr", "log", str(run_id), cli.connection, "--stream"])
        time.sleep(1.0)


def _report_new_rounds(fed: _Federation) -> None:
    """Report every round of ``metrics.jsonl`` not reported yet (scalars, checkpoint artifact)."""
    from federated import run_dir as rd

    try:
        rows = rd.read_metrics(fed.run_dir)
    except (OSError, ValueError):
        return
    for row in rows:
        number = int(row.get("round", 0))
        if number in fed.reported:
            continue
        fed.reported.add(number)
        report_round(fed.task, row)
        publish_round_to_cloudwatch(fed, row)
        summary = {
            key: row.get(key)
            for key in (
                "round",
                "map50",
                "map50_95",
                "train_loss",
                "round_seconds",
                "bytes_sent",
                "bytes_received",
                "epsilon",
            )
        }
        rollback = rollback_of(row)
        if rollback:
            summary["rolled_back_to"] = rollback["restored_round"]
            fed.rolled_back.append(rollback)
        fed.rounds.append(summary)
        weights, meta = rd.checkpoint_paths(fed.run_dir, number)
        if weights.is_file():
            fed.task.upload_artifact(
                f"checkpoint-round-{number:04d}", artifact_object=weights, wait_on_upload=False
            )
            fed.task.upload_artifact(
                f"checkpoint-round-{number:04d}-meta", artifact_object=meta, wait_on_upload=False
            )


def rollback_of(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The rollback a ``metrics.jsonl`` row records (``rolled_back_to`` set by the ServerApp), if any."""
    restored = row.get("rolled_back_to")
    if restored is None:
        return None
    return {
        "round": int(row.get("round", 0)),
        "map50_95": row.get("collapsed_map50_95", row.get("map50_95")),
        "restored_round": int(restored),
        "best_map50_95": row.get("best_map50_95"),
    }


def report_round(task: Task, row: Mapping[str, Any]) -> None:
    """Report one round's metrics to ``task`` with the round as the iteration."""
    logger = task.get_logger()
    it = int(row.get("round", 0))

    def scalar(title: str, series: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            logger.report_scalar(title=title, series=series, value=float(value), iteration=it)

    scalar("global", "map50", row.get("map50"))
    scalar("global", "map50_95", row.get("map50_95"))
    scalar("global", "train_loss", row.get("train_loss"))
    for name, values in (row.get("per_class") or {}).items():
        if isinstance(values, Mapping):
            scalar("per_class_map50_95", str(name), values.get("map50_95"))
            scalar("per_class_map50", str(name), values.get("map50"))
    for client in row.get("clients") or []:
        label = f"client_{client.get('partition_id', client.get('node_id'))}"
        scalar("client_loss", label, client.get("train_loss"))
        scalar("client_examples", label, client.get("examples"))
        scalar("client_seconds", label, client.get("train_seconds"))
    scalar("round", "round_seconds", row.get("round_seconds"))
    scalar("round", "eval_seconds", row.get("eval_seconds"))
    scalar("bytes", "sent", row.get("bytes_sent"))
    scalar("bytes", "received", row.get("bytes_received"))
    scalar("privacy", "epsilon", row.get("epsilon"))  # dp != none: epsilon at target_delta so far
    scalar("privacy", "clipping_norm", row.get("clipping_norm"))
    rollback = rollback_of(row)
    scalar("rollback", "rolled_back", 1.0 if rollback else 0.0)
    if rollback:
        message = (
            f"round {rollback['round']}: global mAP50-95 {rollback['map50_95']} fell more than the threshold "
            f"below the best {rollback['best_map50_95']}; rolled back to round {rollback['restored_round']}"
        )
        logger.report_text(message, level=logging.WARNING)
        LOG.warning("federate: %s", message)


def _set_state(task: Task, state: str) -> None:
    with contextlib.suppress(Exception):
        task.set_user_properties(**{PROP_STATE: state})


def _stop_clients(task_ids: Sequence[str], reason: str) -> None:
    """Stop client tasks that are still queued or running (used when the server fails)."""
    from clearml import Task

    for task_id in task_ids:
        with contextlib.suppress(Exception):
            client = Task.get_task(task_id=task_id)
            status = str(client.get_status())
            if status == "queued":
                Task.dequeue(client)
            if status in ("queued", "in_progress", "created"):
                client.mark_stopped(force=True, status_message=reason)


def _wait_clients_done(task_ids: Sequence[str], timeout_s: float = 30.0) -> None:
    """Give the clients time to end on their own after a finished run, then stop what is left."""
    from clearml import Task

    deadline = time.monotonic() + timeout_s
    pending = list(task_ids)
    while pending and time.monotonic() < deadline:
        pending = [t for t in pending if str(Task.get_task(task_id=t).get_status()) not in ENDED]
        if pending:
            time.sleep(1.0)
    if pending:
        _stop_clients(pending, reason="the federated run has finished")


def _upload_logs(task: Task, run_dir: Path) -> None:
    """Attach the Flower logs of a failed run to the task (best effort)."""
    for path in sorted((run_dir / "logs").glob("*.log")):
        with contextlib.suppress(Exception):
            task.upload_artifact(f"log-{path.stem}", artifact_object=path, wait_on_upload=True)


# ====================================================================== the client role
def run_client(task: Task, params: Mapping[str, Any], work_dir: Path | None = None) -> dict[str, Any]:
    """The client role: start a SuperNode for one shard and run until the server task ends."""
    prepare_process()
    from clearml import Task

    from federated.deployment import flower_env, start_supernode
    from federated.processes import ProcessSet

    server_id = str(params.get("server_task_id") or "")
    if not server_id or not params.get("dataset_id"):
        raise ComponentError("client task: 'server_task_id' and 'dataset_id' are required")
    base = Path(work_dir or tempfile.mkdtemp(prefix=f"fleetfl-client-{task.id[:8]}-"))
    data_yaml = _find_data_yaml(_dataset_copy(str(params["dataset_id"])))
    address, ca_path = _superlink_of(server_id, base, float(params.get("server_wait_s", 300.0)))
    node_config = {
        "partition-id": int(params["partition_id"]),
        "num-partitions": int(params["num_partitions"]),
        "data-yaml": str(data_yaml),
    }
    started = time.monotonic()
    with _terminate_as_exit(), ProcessSet(base / "logs", flower_env(base / "flwr")) as procs:
        node = start_supernode(
            procs,
            address,
            node_config,
            name=f"supernode-{params['partition_id']}",
            root_certificates=ca_path,
            poll_interval=float(params.get("poll_interval", CLIENT_DEFAULTS["poll_interval"])),
        )
        LOG.info("federate client %s: SuperNode connected to %s", params["partition_id"], address)
        while True:
            procs.track()
            for proc in node.processes:
                if not proc.alive():
                    raise FederateError(
                        f"{proc.name} exited with code {proc.popen.returncode}: {proc.log_tail()}"
                    )
            server = Task.get_task(task_id=server_id)
            state = server.get_user_properties(value_only=True).get(PROP_STATE)
            if str(server.get_status()) in ENDED or state in ("finished", "failed"):
                break
            time.sleep(2.0)
    for path in sorted((base / "logs").glob("*.log")):
        with contextlib.suppress(Exception):
            task.upload_artifact(f"log-{path.stem}", artifact_object=path, wait_on_upload=True)
    output = {
        "server_task_id": server_id,
        "partition_id": int(params["partition_id"]),
        "seconds": time.monotonic() - started,
    }
    publish_output(task, output)
    if work_dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return output


def _superlink_of(server_id: str, folder: Path, wait_s: float) -> tuple[str, Path | None]:
    """Wait for the server task to publish its SuperLink; return (address, CA certificate path)."""
    from clearml import Task

    deadline = time.monotonic() + wait_s
    while True:
        server = Task.get_task(task_id=server_id)
        props = server.get_user_properties(value_only=True)
        if props.get(PROP_ADDRESS):
            break
        if str(server.get_status()) in ENDED:
            raise FederateError(f"server task {server_id} ended before publishing its SuperLink")
        if time.monotonic() > deadline:
            raise FederateError(
                f"server task {server_id} published no SuperLink address within {wait_s:.0f} s"
            )
        time.sleep(1.0)
    digest = str(props.get(PROP_CA_SHA256) or "")
    if not digest:
        return str(props[PROP_ADDRESS]), None
    if CA_ARTIFACT not in server.artifacts:
        raise FederateError(f"server task {server_id} published a CA digest but no {CA_ARTIFACT!r} artifact")
    pem = Path(server.artifacts[CA_ARTIFACT].get_local_copy()).read_bytes()
    if hashlib.sha256(pem).hexdigest() != digest:
        raise FederateError(
            f"the CA certificate of server task {server_id} does not match its published sha256"
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "superlink-ca.crt"
    path.write_bytes(pem)
    return str(props[PROP_ADDRESS]), path


# ====================================================================== helpers
def _dataset_copy(dataset_id: str) -> Path:
    """A local copy of a ClearML Dataset version."""
    from clearml import Dataset

    try:
        dataset = Dataset.get(dataset_id=dataset_id)
    except Exception as exc:  # the SDK raises ValueError or its own errors for unknown ids
        raise ComponentError(f"Dataset {dataset_id!r}: cannot be fetched ({exc})") from None
    return Path(dataset.get_local_copy())


def _find_data_yaml(folder: Path) -> Path:
    """The ``data.yaml`` of a dataset copy (at its root, or the only one below it)."""
    if (folder / "data.yaml").is_file():
        return folder / "data.yaml"
    found = sorted(folder.rglob("data.yaml"))
    if len(found) != 1:
        raise ComponentError(f"{folder}: expected one data.yaml in the dataset, found {len(found)}")
    return found[0]


def _link_dataset(dataset_id: str, target: Path) -> None:
    """Make ``target`` (e.g. DATA/eval) point to the folder of the Dataset's ``data.yaml``."""
    source = _find_data_yaml(_dataset_copy(dataset_id)).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source, target_is_directory=True)


def _write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(dict(values)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def log_tail(task: Task, lines: int = 15) -> str:
    """The last console lines a task reported (where a remote failure explains itself)."""
    try:
        text = "".join(task.get_reported_console_output(number_of_reports=3) or [])
    except Exception:  # best effort: the message is still useful without the log
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM (an agent stopping the task) into SystemExit so that started processes stop."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _task_role() -> str:
    """``client`` or ``server``: the ``General/role`` of the task an agent runs (server locally)."""
    task_id = os.environ.get("CLEARML_TASK_ID")
    if not task_id:
        return "server"
    prepare_process()
    from clearml import Task

    role = Task.get_task(task_id=task_id).get_parameter(f"{PARAMS_SECTION}/role", default="server")
    return str(role or "server")


def main() -> int:
    """Task entry point (``python -m components.federate``): the server or a client, per ``role``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _task_role() == "client":
        task, params = init_component_task("federate-client", CLIENT_DEFAULTS, task_type="training")
        run_client(task, params)
        return 0
    task, params = init_component_task("federate-server", SERVER_DEFAULTS, task_type="training")
    check_server_params(params)
    config = resolve_config(connect_config(task), params)
    serve_federation(task, params, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
