"""Run the FleetFL Flower app on an engine: ``simulation`` (here) or ``deployment``.

:func:`run_federated` is the one entry point the command line, the pipeline and the benchmarks use.
Both engines run the same ServerApp and ClientApp code with the same flat run config
(:meth:`FederatedConfig.to_flat` plus the run keys of :data:`federated.server_app.RUN_KEYS`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federated import run_dir as rd
from federated.config import FederatedConfig
from federated.runtime import configure_offline

LOG = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("simulation", "deployment")


class EngineError(ValueError):
    """Bad engine choice or engine options, or data that does not fit the run."""


@dataclass
class RunResult:
    """Where a finished run's outputs are, and its metrics rows."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_model(self) -> Path:
        """``RUN_DIR/final.pt``."""
        return self.run_dir / rd.FINAL_MODEL

    @property
    def metrics_file(self) -> Path:
        """``RUN_DIR/metrics.jsonl``."""
        return self.run_dir / rd.METRICS_FILE


def client_count(data_dir: Path) -> int:
    """Number of client shards (``client_0 .. client_{K-1}``, each with a ``data.yaml``) in ``data_dir``.

    Raises:
        EngineError: no evaluation split, no shard, or a gap in the numbering.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "eval" / "data.yaml").is_file():
        raise EngineError(f"{data_dir}: no eval/data.yaml (prepare data with `fleetfl data prepare`)")
    count = 0
    while (data_dir / f"client_{count}" / "data.yaml").is_file():
        count += 1
    if count == 0:
        raise EngineError(f"{data_dir}: no client_0/data.yaml (prepare data with `fleetfl data prepare`)")
    return count


def run_config(config: FederatedConfig, data_dir: Path, run_dir: Path, resume_round: int) -> dict[str, Any]:
    """The flat Flower run config of a run (config keys plus ``data-dir``, ``run-dir``, ``resume-round``)."""
    return {
        **config.to_flat(),
        "data-dir": str(Path(data_dir).resolve()),
        "run-dir": str(Path(run_dir).resolve()),
        "resume-round": resume_round,
    }


def run_federated(
    config: FederatedConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    engine: str = "simulation",
    resume: str | Path | None = None,
    resume_round: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **engine_opts: Any,
) -> RunResult:
    """Train ``config`` on the shards in ``data_dir`` and write the run to ``out_dir``.

    Args:
        config: the run's configuration.
        data_dir: prepared data (``client_<i>/data.yaml`` and ``eval/data.yaml``).
        out_dir: RUN_DIR (ignored when ``resume`` is given: the resumed folder is the RUN_DIR).
        engine: ``simulation`` or ``deployment``.
        resume: a RUN_DIR to continue (from its last checkpoint, or ``resume_round``).
        resume_round: the round to resume from (default: the last complete checkpoint).
        progress: called with each ``metrics.jsonl`` row as soon as its round is written.
        **engine_opts: engine-specific options. Simulation: ``client_cpus`` (default 1),
            ``client_gpus`` (default 0 or, with a CUDA device, 1/K), ``verbose`` (client logs).
            Deployment: passed on to :func:`federated.deployment.run_deployment`.

    Returns:
        The run folder and its metrics rows.
    """
    if engine not in ENGINES:
        raise EngineError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    data_dir = Path(data_dir).resolve()
    run_dir = Path(resume if resume is not None else out_dir).resolve()
    num_clients = client_count(data_dir)
    if config.min_clients > num_clients:
        raise EngineError(
            f"min_clients: {config.min_clients} is more than the {num_clients} client shards in {data_dir}"
        )
    done = 0
    if resume is not None:
        done = rd.load_checkpoint(run_dir, resume_round).round  # fail early, with a clear message
        # The ServerApp truncates too; doing it here first keeps stale rows from the progress thread.
        rd.truncate_metrics(run_dir, done)
        resume_key = resume_round or 0
    else:
        if rd.list_checkpoints(run_dir):
            raise EngineError(
                f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out"
            )
        resume_key = -1
    run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_run_info(
        run_dir,
        {
            "config": config.to_flat(),
            "data_dir": str(data_dir),
            "engine": engine,
            "clients": num_clients,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "resumed_from": resume_key if resume is not None else None,
        },
    )
    settings = run_config(config, data_dir, run_dir, resume_key)
    with _MetricsFollower(run_dir, progress, skip_through=done):
        if engine == "simulation":
            _run_simulation(settings, num_clients, config, **engine_opts)
        else:
            _run_deployment(settings, data_dir, run_dir, num_clients, **engine_opts)
    return RunResult(run_dir=run_dir, rows=rd.read_metrics(run_dir))


def _run_simulation(
    settings: dict[str, Any],
    num_clients: int,
    config: FederatedConfig,
    client_cpus: float = 1,
    client_gpus: float | None = None,
    verbose: bool = False,
) -> None:
    """Flower's Simulation Engine (ray) with one virtual SuperNode per client shard."""
    configure_offline()
    # Ray's own future default: it leaves CUDA_VISIBLE_DEVICES alone for actors without GPUs (the
    # clients pass their torch device explicitly); setting it also silences ray's FutureWarning.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from federated.client_app import app as client_app
    from federated.server_app import build_server_app

    if client_gpus is None:
        client_gpus = _default_client_gpus(config.device, num_clients)
    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {
            "num_cpus": max(os.cpu_count() or 1, int(client_cpus)),
            "log_to_driver": verbose,
            "logging_level": "INFO" if verbose else "ERROR",
        },
    }
    run_simulation(
        server_app=build_server_app(settings),
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config=backend_config,
        verbose_logging=verbose,
    )


def _default_client_gpus(device: str, num_clients: int) -> float:
    if device == "cpu":
        return 0.0
    try:
        import torch

        if torch.cuda.is_available():
            return 1.0 / max(1, num_clients)
    except ImportError:  # pragma: no cover - torch is a hard requirement
        pass
    return 0.0


def _run_deployment(
    settings: dict[str, Any], data_dir: Path, run_dir: Path, num_clients: int, **opts: Any
) -> None:
    try:
        from federated.deployment import run_deployment
    except ModuleNotFoundError as exc:
        if exc.name == "federated.deployment":
            raise EngineError("engine 'deployment' is not available in this installation") from None
        raise
    run_deployment(run_config=settings, data_dir=data_dir, run_dir=run_dir, num_clients=num_clients, **opts)


class _MetricsFollower:
    """Call ``progress(row)`` for each new ``metrics.jsonl`` row while a run is going (a thread).

    It reads the file the ServerApp writes, so it works the same for both engines (the deployment
    engine's ServerApp runs in another process).
    """

    def __init__(
        self,
        run_dir: Path,
        progress: Callable[[dict[str, Any]], None] | None,
        skip_through: int = 0,
        interval: float = 0.5,
    ) -> None:
        self.run_dir = run_dir
        self.progress = progress
        self.interval = interval
        self._seen: set[int] = set(range(skip_through + 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleetfl-progress", daemon=True)

    def __enter__(self) -> _MetricsFollower:
        if self.progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _poll(self) -> None:
        try:
            rows = rd.read_metrics(self.run_dir)
        except (OSError, ValueError):
            return
        for row in rows:
            number = int(row.get("round", 0))
            if number not in self._seen:
                self._seen.add(number)
                assert self.progress is not None
                self.progress(row)
