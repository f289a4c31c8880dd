"""``fleetfl federate``: federated YOLO training on prepared (or synthetic) data, with progress."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from federated.config import FederatedConfig

DEFAULT_SYNTHETIC_IMAGES = 120
DEFAULT_SYNTHETIC_CLIENTS = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``federate`` to the ``fleetfl`` command line."""
    parser = subparsers.add_parser(
        "federate",
        help="train YOLO by federated learning (Flower) and write metrics, checkpoints and final.pt",
        description=(
            "Federated YOLO training. Without --data, synthetic driving scenes are prepared in RUN_DIR/data. "
            "Writes RUN_DIR/metrics.jsonl, RUN_DIR/checkpoints/, RUN_DIR/final.pt and RUN_DIR/map.png. "
            "Config keys: " + ", ".join(FederatedConfig.field_names())
        ),
    )
    parser.add_argument("--config", type=Path, help="YAML config (default: the built-in defaults)")
    parser.add_argument("--data", type=Path, help="prepared data folder (client_<i>/, eval/)")
    parser.add_argument("--engine", choices=("simulation", "deployment"), default="simulation")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set rounds=5 --set strategy=fedprox",
    )
    parser.add_argument("--out", type=Path, help="RUN_DIR (default: runs/federate-<date>-<time>)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint"
    )
    parser.add_argument("--resume-round", type=int, metavar="N", help="with --resume: continue from round N")
    parser.add_argument(
        "--insecure", action="store_true", help="deployment engine: no TLS (explicit opt-out)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=DEFAULT_SYNTHETIC_CLIENTS,
        help="without --data: number of synthetic client shards (default %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_SYNTHETIC_IMAGES,
        help="without --data: number of synthetic images (default %(default)s)",
    )
    parser.set_defaults(func=federate_command)


def resolve_run(args: argparse.Namespace) -> tuple[FederatedConfig, Path | None, Path]:
    """The config, data folder (``None``: make synthetic data) and RUN_DIR of a ``federate`` call."""
    from federated import run_dir as rd

    if args.resume_round is not None and args.resume is None:
        raise ValueError("--resume-round needs --resume RUN_DIR")
    if args.resume is not None:
        info = rd.read_run_info(args.resume)
        if args.config is not None:
            config = FederatedConfig.load(args.config, args.overrides)
        else:
            config = FederatedConfig.from_flat(info["config"], source=str(args.resume / rd.RUN_INFO_FILE))
            config = config.with_overrides(args.overrides)
        return config, args.data or Path(info["data_dir"]), args.resume
    config = FederatedConfig.load(args.config, args.overrides)
    out = args.out or Path("runs") / f"federate-{datetime.now():%Y%m%d-%H%M%S}"
    return config, args.data, out


def federate_command(args: argparse.Namespace) -> int:
    """Run ``fleetfl federate``."""
    from federated.runtime import configure_offline

    configure_offline()
    _quiet_libraries(args.verbose)
    from federated.engine import run_federated
    from federated.report import final_table, progress_bar, round_line
    from federated.strategies import RoundFailedError

    config, data_dir, run_dir = resolve_run(args)
    if data_dir is None:
        data_dir = _synthetic_data(run_dir / "data", args.images, args.clients, config)
    print(
        f"fleetfl federate: {config.strategy}, {config.rounds} rounds, {config.model} at {config.imgsz} px, "
        f"engine {args.engine}, run folder {run_dir}",
        flush=True,
    )

    def progress(row: dict[str, Any]) -> None:
        print(f"{progress_bar(row['round'], config.rounds)}  {round_line(row, config.rounds)}", flush=True)

    engine_opts: dict[str, Any] = {}
    run_errors: tuple[type[BaseException], ...] = (RoundFailedError,)
    if args.engine == "deployment":
        engine_opts["insecure"] = args.insecure
        engine_opts["echo"] = bool(args.verbose)  # the ServerApp's own log; round lines come from progress
        from federated.deployment import DeploymentError

        run_errors = (RoundFailedError, DeploymentError)
    elif args.insecure:
        print("note: --insecure only applies to the deployment engine", file=sys.stderr)
    if args.engine == "simulation":
        engine_opts["verbose"] = bool(args.verbose)
    try:
        result = run_federated(
            config,
            data_dir,
            run_dir,
            engine=args.engine,
            resume=args.resume,
            resume_round=args.resume_round,
            progress=progress,
            **engine_opts,
        )
    except run_errors as exc:
        print(f"fleetfl federate: {exc}", file=sys.stderr)
        return 1
    print()
    print(final_table(result.rows))
    print(f"\nmetrics: {result.metrics_file}\nmodel:   {result.final_model}\nplot:    {run_dir / 'map.png'}")
    return 0


def _quiet_libraries(verbose: bool) -> None:
    """Flower logs every step at INFO through its own handler: show errors only (all with -v).

    Flower sets its logger to DEBUG when imported, so it is imported first; it does not propagate to
    the root handler (that would print each line twice). Round lines come from the progress thread.
    """
    import flwr.supercore.logger  # noqa: F401  (sets up Flower's logger)

    flower = logging.getLogger("flwr")
    flower.propagate = False
    if not verbose:  # (its only routine warning says that client-side evaluation is off, as designed)
        flower.setLevel(logging.ERROR)
        logging.getLogger("federated.server_app").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's link state sets up its database


def _synthetic_data(out: Path, images: int, clients: int, config: FederatedConfig) -> Path:
    """Prepare the embedded synthetic driving scenes (``datasets.prepare``) once per RUN_DIR."""
    from datasets.prepare import prepare

    if (out / "partition.json").is_file():
        return out
    print(f"preparing {images} synthetic images for {clients} clients in {out}", flush=True)
    prepare(
        f"synthetic:{images}", clients=clients, split="iid", seed=config.seed, out=out, imgsz=config.imgsz
    )
    return out
