"""The Flower ServerApp: Flower's strategy runs the rounds; FleetFL evaluates, checkpoints and reports.

Run settings come from Flower's run config: the flat :class:`~federated.config.FederatedConfig` keys
(``pyproject.toml``'s ``[tool.flwr.app.config]`` holds their defaults) plus the run keys in
:data:`RUN_KEYS`. The simulation engine passes them to :func:`build_server_app` directly.

Each round: Flower's strategy (wrapped once by :class:`~federated.strategies.GuardedStrategy`) trains
on the clients; then :func:`serve` evaluates the new global model on the held-out split
(``DATA_DIR/eval/data.yaml``), writes ``checkpoints/round_NNNN.*``, appends ``metrics.jsonl`` and
refreshes ``map.png``. At the end it exports ``final.pt``. A resumed run loads a checkpoint and
restores the strategy's server-side state, so it continues exactly where the run stopped.
"""

from __future__ import annotations

from federated.runtime import configure_offline

configure_offline()

import logging  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from federated import privacy, yolo_task  # noqa: E402
from federated import run_dir as rd  # noqa: E402
from federated.config import FederatedConfig  # noqa: E402
from federated.flower_polling import prompt_grid  # noqa: E402
from federated.report import plot_rounds  # noqa: E402
from federated.strategies import GuardedStrategy, RoundFailedError, build_strategy  # noqa: E402
from federated.transport import pack, unpack  # noqa: E402

LOG = logging.getLogger(__name__)

#: Run-config keys that are not part of :class:`FederatedConfig`.
RUN_KEYS: dict[str, Any] = {
    "data-dir": "",  # prepared data: client_<i>/ and eval/ (required)
    "run-dir": "",  # RUN_DIR for metrics, checkpoints and the final model (required)
    "resume-round": -1,  # -1: new run; 0: resume from the last checkpoint; N: resume from round N
}


class ServerSetupError(ValueError):
    """The server was started with missing or inconsistent run settings."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ServerApp needs, parsed from the run config."""

    config: FederatedConfig
    data_dir: Path
    run_dir: Path
    resume_round: int

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any]) -> ServerSettings:
        """Split Flower's flat run config into the FederatedConfig and the run keys."""
        unknown = set(values) - set(RUN_KEYS) - set(FederatedConfig.field_names())
        if unknown:
            raise ServerSetupError(f"run config: unknown key {sorted(unknown)[0]!r}")
        config = FederatedConfig.from_flat(
            {k: v for k, v in values.items() if k in FederatedConfig.field_names()}, source="run config"
        )
        data_dir, run_dir = str(values.get("data-dir", "")), str(values.get("run-dir", ""))
        if not data_dir or not run_dir:
            raise ServerSetupError("run config: 'data-dir' and 'run-dir' must both be set")
        return cls(
            config, Path(data_dir).resolve(), Path(run_dir).resolve(), int(values.get("resume-round", -1))
        )


def build_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with ``overrides`` (the simulation engine's)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = ServerSettings.from_run_config({**dict(context.run_config), **dict(overrides or {})})
        serve(grid, settings)

    return server_app


app = build_server_app()


def serve(grid: Grid, settings: ServerSettings) -> list[dict[str, Any]]:
    """Run (or resume) the federated training described by ``settings``; return the metrics rows."""
    config, run_dir, data_dir = settings.config, settings.run_dir, settings.data_dir
    grid = prompt_grid(grid, config.poll_interval)
    eval_yaml = data_dir / "eval" / "data.yaml"
    names = yolo_task.read_dataset(eval_yaml).names
    template = yolo_task.build_model(config.model, names, seed=config.seed)
    keys = yolo_task.state_keys(template)
    run_dir.mkdir(parents=True, exist_ok=True)

    templates = yolo_task.get_weights(template)
    strategy = GuardedStrategy(
        privacy.wrap_strategy(build_strategy(config), config),
        config.min_clients,
        config.max_update_norm,
        templates=templates,
        buffers=yolo_task.buffer_mask(template),
        update_dtype=config.update_dtype,
        uniform_weights=privacy.is_central(config),
        nonnegative=[key.endswith("running_var") for key in keys],
    )
    if settings.resume_round >= 0:
        checkpoint = rd.load_checkpoint(run_dir, settings.resume_round or None)
        if list(checkpoint.weights) != keys:
            raise rd.CheckpointError(
                f"{run_dir}: checkpoint round {checkpoint.round} does not match {config.model}"
            )
        weights = checkpoint.weight_list()
        strategy.round_offset = checkpoint.round
        strategy.load_state_arrays(checkpoint.strategy_state)
        rd.truncate_metrics(run_dir, checkpoint.round)
        rd.drop_checkpoints_after(run_dir, checkpoint.round)
        LOG.info("resuming %s from round %d", run_dir, checkpoint.round)
    else:
        if rd.list_checkpoints(run_dir):
            raise ServerSetupError(
                f"{run_dir} already holds checkpoints: resume it or choose a new run folder"
            )
        weights = yolo_task.get_weights(template)
    config.save(run_dir / rd.CONFIG_FILE)

    rows = rd.read_metrics(run_dir)
    remaining = config.rounds - strategy.round_offset
    if remaining > 0:
        train_config = ConfigRecord({**config.to_flat(), "data-dir": str(data_dir)})

        def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:  # Flower also evaluates the initial model: not needed here
                return None
            row = _finish_round(strategy, arrays, template, keys, eval_yaml, config, run_dir)
            rows.append(row)
            LOG.info("round %d: mAP50-95 %.4f, %.1f s", row["round"], row["map50_95"], row["round_seconds"])
            return MetricRecord({"map50": row["map50"], "map50_95": row["map50_95"]})

        try:
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(pack(weights)),
                num_rounds=remaining,
                timeout=config.round_timeout,
                train_config=train_config,
                evaluate_fn=evaluate_round,
            )
        except RoundFailedError as exc:
            done = rd.list_checkpoints(run_dir)
            last = f"round {done[-1]}" if done else "none"
            raise RoundFailedError(
                f"{exc}; the run stopped, its last checkpoint is {last} in {run_dir}"
            ) from None
    else:
        LOG.info("%s already has %d rounds: nothing to train", run_dir, strategy.round_offset)

    final = rd.load_checkpoint(run_dir)
    summary = {"round": final.round, **{k: final.metadata.get(k) for k in ("map50", "map50_95")}}
    yolo_task.export_ultralytics(final.weight_list(), names, config, run_dir / rd.FINAL_MODEL, summary)
    return rows


def _finish_round(
    strategy: GuardedStrategy,
    arrays: ArrayRecord,
    template: Any,
    keys: list[str],
    eval_yaml: Path,
    config: FederatedConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Evaluate, checkpoint and record the round that just ended."""
    record = strategy.current
    if record is None:
        raise RuntimeError("a round finished without being configured")
    # Canonical dtypes (averaging turns num_batches_tracked into float64).
    yolo_task.set_weights(template, unpack(arrays.to_numpy_ndarrays(), strategy.templates))
    weights = yolo_task.get_weights(template)
    evaluation = yolo_task.evaluate(weights, eval_yaml, config)
    kept, kept_metrics, rollback = weights, {"map50": evaluation.map50, "map50_95": evaluation.map50_95}, {}
    target = rollback_target(rd.read_metrics(run_dir), config.rollback_threshold, evaluation.map50_95)
    if target is not None:  # the round collapsed: keep the best checkpoint's weights instead
        best = rd.load_checkpoint(run_dir, target[0])
        kept = best.weight_list()
        kept_metrics = {key: best.metadata.get(key) for key in ("map50", "map50_95")}
        strategy.restore = ArrayRecord(pack(kept))
        rollback = {"rolled_back_to": target[0], "best_map50_95": target[1]}
        LOG.warning(
            "round %d: global mAP50-95 %.4f is more than %.0f%% below the best %.4f (round %d): "
            "rolled back to round %d",
            record.server_round,
            evaluation.map50_95,
            100 * config.rollback_threshold,
            target[1],
            target[0],
            target[0],
        )
    clients = [client.as_dict() for client in record.clients]
    ok = [c for c in clients if c["status"] == "ok" and c.get("examples")]
    examples = sum(c["examples"] for c in ok)
    train_loss = sum(c["examples"] * c.get("train_loss", 0.0) for c in ok) / examples if examples else None
    row = {
        "round": record.server_round,
        "map50": evaluation.map50,
        "map50_95": evaluation.map50_95,
        "per_class": evaluation.per_class,
        "train_loss": train_loss,
        "clients": clients,
        "round_seconds": 0.0,
        "eval_seconds": evaluation.seconds,
        # from sending the round's messages until the last reply was in (training, transfers, polling)
        "wait_seconds": (record.replies_at or record.started) - record.started,
        "bytes_sent": record.bytes_sent,
        "bytes_received": record.bytes_received,
        "strategy": config.strategy,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        **rollback,
        **_privacy_spent(strategy, config, record.server_round),
    }
    rd.save_checkpoint(
        run_dir,
        record.server_round,
        yolo_task.named_weights(keys, kept),
        strategy.state_arrays(),
        {
            **kept_metrics,
            **rollback,
            "model": config.model,
            "config": config.to_flat(),
        },
    )
    row["round_seconds"] = time.perf_counter() - record.started
    rd.append_metrics(run_dir, row)
    plot_rounds(rd.read_metrics(run_dir), run_dir / rd.PLOT_FILE)
    return row


def _privacy_spent(strategy: GuardedStrategy, config: FederatedConfig, server_round: int) -> dict[str, Any]:
    """The DP columns of a metrics row: mode, epsilon at target_delta after this round, clipping norm."""
    if config.dp == "none":
        return {}
    clipping = config.clipping_norm
    if privacy.is_central(config):  # the adaptive wrapper moves it every round
        clipping = privacy.clipping_norm_now(strategy.inner) or clipping
    return {
        "dp": config.dp,
        "epsilon": privacy.epsilon_spent(config, server_round),
        "target_delta": config.target_delta,
        "clipping_norm": clipping,
    }


def rollback_target(
    rows: list[dict[str, Any]], threshold: float, map50_95: float
) -> tuple[int, float] | None:
    """The best earlier round ``(round, mAP50-95)`` if ``map50_95`` is more than ``threshold`` below it.

    ``threshold`` is a fraction (0.1: a round more than 10% below the best so far is rolled back);
    0 turns rollback off. Rounds that scored nothing yet (mAP50-95 0) never trigger a rollback.
    """
    if threshold <= 0 or not rows:
        return None
    best = max(rows, key=lambda row: float(row.get("map50_95") or 0.0))
    best_value = float(best.get("map50_95") or 0.0)
    if best_value > 0 and map50_95 < best_value * (1.0 - threshold) - 1e-9:  # at the threshold: kept
        return int(best["round"]), best_value
    return None
