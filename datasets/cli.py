"""``fleetfl data ...`` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

#: Validation problems printed by ``data prepare`` (all of them are in ``validation.json``).
MAX_PRINTED_ISSUES = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetfl data prepare`` (and future data commands)."""
    data = subparsers.add_parser("data", help="prepare datasets: read, validate, partition")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    prep = commands.add_parser(
        "prepare",
        help="read a dataset, validate it and write eval + per-client YOLO datasets",
        description="Read KITTI, BDD100K or YOLO data (or generate synthetic scenes), validate it, "
        "hold out an evaluation split and partition the rest over K clients.",
    )
    prep.add_argument(
        "--source",
        required=True,
        metavar="FORMAT:PATH",
        help="FORMAT:PATH (kitti, bdd100k, yolo) or synthetic:N",
    )
    prep.add_argument("--clients", required=True, type=int, metavar="K", help="number of client shards K")
    prep.add_argument("--split", default="iid", help="iid, dirichlet:ALPHA or attribute:NAME (default iid)")
    prep.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of hold-out, partition and synthetic scenes"
    )
    prep.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    prep.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="MAP.yaml",
        help="class map YAML (source name: canonical)",
    )
    prep.add_argument(
        "--policy", choices=("strict", "skip"), default="strict", help="on bad data: fail or skip"
    )
    prep.add_argument(
        "--eval-fraction", type=float, default=0.2, metavar="F", help="held-out share, 0<F<1 (default 0.2)"
    )
    prep.add_argument(
        "--imgsz", type=int, default=320, metavar="N", help="synthetic image size (default 320)"
    )
    prep.add_argument(
        "--bdd-split",
        default=None,
        metavar="SPLIT",
        help="train or val: which labels of a BDD100K dataset root to read (labels/det_20/det_<split>.json)",
    )
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``fleetfl data prepare`` and print the validation problems and the partition table."""
    from datasets.prepare import prepare
    from datasets.report import format_table

    report = prepare(
        source=args.source,
        clients=args.clients,
        split=args.split,
        seed=args.seed,
        out=args.out,
        classes=args.classes,
        policy=args.policy,
        eval_fraction=args.eval_fraction,
        imgsz=args.imgsz,
        bdd_split=args.bdd_split,
    )
    validation = report["validation"]
    if validation["count"]:
        print(f"skipped {validation['count']} item(s) under --policy skip:")
        for issue in validation["issues"][:MAX_PRINTED_ISSUES]:
            suffix = f" (skipped {issue['skipped']})" if issue["skipped"] else ""
            print(f"  {issue['where']}: {issue['message']}{suffix}")
        if validation["count"] > MAX_PRINTED_ISSUES:
            print(f"  ... {validation['count'] - MAX_PRINTED_ISSUES} more in {args.out}/validation.json")
    print(format_table(report))
    print(f"wrote {args.out}/partition.json, validation.json, eval/ and client_0..{args.clients - 1}/")
    return 0
