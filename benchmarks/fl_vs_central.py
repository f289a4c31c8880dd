"""Federated vs centralized YOLO on the same data and the same total epochs; prints JSON.

For each split (IID and Dirichlet(0.5) by default) the same synthetic scenes are prepared for K
clients with the same held-out evaluation split (``datasets.prepare`` holds out before it
partitions, so a seed fixes the evaluation images). Then:

* **central**: ultralytics training on the union of the client shards for ``rounds x local_epochs``
  epochs, from the same initial weights the federated server starts from, with the same trainer,
  learning rate and schedule (``federated.yolo_task.train_local``), at two batch sizes (see
  :func:`central_baselines`); all splits share the same union, so it is trained once;
* **federated**: ``run_federated`` with each strategy (FedAvg on IID; FedAvg, FedAvgM and FedProx on
  the non-IID split by default), ``rounds`` rounds of ``local_epochs`` epochs per client, once per
  ``--optimizer-states`` entry (``keep`` runs are reported as ``STRATEGY+keep``) and once per
  ``--update-dtypes`` entry (``fp16`` runs are reported as ``STRATEGY+fp16``; each run reports the
  megabytes each client received and sent per round, and with several dtypes the split's
  ``update_dtypes`` entry compares them with the first: bytes ratio and relative mAP50-95 change).

Both are evaluated on the held-out split with ultralytics' validator. The ratios
``federated mAP50-95 / central mAP50-95`` are compared with the targets (>= 0.95 IID, >= 0.90
non-IID). Sizes are flags; the defaults (400 scenes, 24 rounds, batch 8, AdamW lr0 0.002, lrf 0.01)
take about 40 minutes on 2 idle CPU cores; much shorter runs stay at mAP 0 (nothing learned yet).

    .venv/bin/python benchmarks/fl_vs_central.py --out runs/bench-fl-vs-central
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federated.runtime import configure_offline

TARGETS = {"iid": 0.95, "non-iid": 0.90}
#: Below this mAP50-95 a relative change between two runs says nothing (nothing learned yet).
MIN_COMPARABLE_MAP = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (sizes, splits, strategies)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fl-vs-central"), help="work folder")
    parser.add_argument("--images", type=int, default=400, help="synthetic scenes in total (eval included)")
    parser.add_argument("--scene-size", type=int, default=160, help="pixel size of the generated scenes")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=24, help="federated rounds")
    parser.add_argument("--local-epochs", type=int, default=1, help="epochs per client per round")
    parser.add_argument("--imgsz", type=int, default=160, help="train/eval image size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default="yolov9t.yaml")
    # Learning settings of benchmarks/synthetic_learnability.py: with ultralytics' nbs=64 and SGD a
    # client with ~100 images makes about one optimizer step per round and nothing is learned.
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--lr0", type=float, default=0.002)
    parser.add_argument("--nbs", type=int, default=8, help="ultralytics' nominal batch size")
    parser.add_argument(
        "--central",
        default="same_batch,data_parallel",
        help="centralized baselines: same_batch (the clients' batch) and/or data_parallel (clients x batch); "
        "'none' skips central training (no ratios)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("simulation", "deployment"), default="simulation")
    parser.add_argument(
        "--splits", default="iid,dirichlet:0.5", help="comma-separated splits (iid, dirichlet:ALPHA)"
    )
    parser.add_argument("--iid-strategies", default="fedavg", help="strategies run on the IID split")
    parser.add_argument(
        "--non-iid-strategies", default="fedavg,fedavgm,fedprox", help="strategies run on non-IID splits"
    )
    parser.add_argument(
        "--optimizer-states",
        default="reset",
        help="each strategy runs once per optimizer_state (reset: stateless clients; keep: each client keeps "
        "its optimizer state across rounds, reported as STRATEGY+keep)",
    )
    parser.add_argument(
        "--update-dtypes",
        default="fp32",
        help="each strategy runs once per update_dtype (fp32, fp16: reported as STRATEGY+fp16), same seeds",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra FederatedConfig overrides"
    )
    return parser.parse_args(argv)


def comma_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated flag value."""
    return [item.strip() for item in text.split(",") if item.strip()]


def union_data_yaml(data_dir: Path, clients: int, out: Path) -> Path:
    """A ``data.yaml`` whose train split is every client shard and whose val split is ``eval``."""
    import yaml

    names = yaml.safe_load((data_dir / "eval" / "data.yaml").read_text(encoding="utf-8"))["names"]
    content = {
        "path": str(data_dir),
        "train": [f"client_{i}/images" for i in range(clients)],
        "val": "eval/images",
        "names": names,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return out


def central_run(config: Any, data_dir: Path, clients: int, epochs: int, work: Path) -> dict[str, Any]:
    """Train centrally for ``epochs`` on all shards from the federated initial weights; evaluate."""
    from federated import yolo_task

    eval_yaml = data_dir / "eval" / "data.yaml"
    names = yolo_task.read_dataset(eval_yaml).names
    initial = yolo_task.get_weights(yolo_task.build_model(config.model, names, seed=config.seed))
    union = union_data_yaml(data_dir, clients, work / "union.yaml")
    start = time.perf_counter()
    trained = yolo_task.train_local(
        initial,
        union,
        config.replace(local_epochs=epochs, rounds=1),  # one training: the same lr0 -> lr0 x lrf schedule
        seed=config.seed,
        work_dir=work / "ultralytics",
    )
    result = yolo_task.evaluate(trained.weights, eval_yaml, config)
    return {
        "map50": result.map50,
        "map50_95": result.map50_95,
        "train_images": trained.num_examples,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
    }


def training_images(data_dir: Path, clients: int) -> tuple[str, ...]:
    """The names of every client's training images (the union central training uses), sorted."""
    return tuple(
        sorted(
            path.name
            for i in range(clients)
            for path in (data_dir / f"client_{i}" / "images").rglob("*")
            if path.is_file()
        )
    )


def central_baselines(config: Any, clients: int, which: str) -> dict[str, dict[str, int]]:
    """The centralized trainings to compare with, as config changes.

    * ``same_batch``: the clients' batch (and nbs): the same optimizer step size in images, hence
      ``clients`` times as many sequential steps as each client makes in the same epochs;
    * ``data_parallel``: ``clients x batch`` (and nbs): what the same K workers would run as
      synchronous data-parallel training: as many sequential steps per epoch as one client makes
      (FedAvg with one local step is exactly this), so the comparison isolates the federation
      itself (local steps, model averaging, non-IID shards) from the parallelism.
    """
    options = {
        "same_batch": {"batch": config.batch, "nbs": config.nbs},
        "data_parallel": {"batch": config.batch * clients, "nbs": config.nbs * clients},
    }
    names = [name for name in comma_list(which) if name != "none"]
    unknown = sorted(set(names) - set(options))
    if unknown:
        raise SystemExit(f"--central: unknown baseline {unknown[0]!r} (choose from {', '.join(options)})")
    return {name: options[name] for name in names}


def federated_run(config: Any, data_dir: Path, out: Path, engine: str) -> dict[str, Any]:
    """``run_federated`` and its last round's figures."""
    from federated.engine import run_federated

    start = time.perf_counter()
    result = run_federated(config, data_dir, out, engine=engine)
    last = result.rows[-1]
    return {
        "map50": last["map50"],
        "map50_95": last["map50_95"],
        "rounds": len(result.rows),
        "mb_per_client_round": megabytes_per_client_round(result.rows),
        "seconds": round(time.perf_counter() - start, 1),
        "map50_95_per_round": [round(row["map50_95"], 4) for row in result.rows],
    }


def megabytes_per_client_round(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean payload megabytes (1e6 bytes) one client received (the broadcast) and sent per round."""
    received = [row["bytes_sent"] / len(row["clients"]) for row in rows if row["clients"]]
    sent = [
        row["bytes_received"] / sum(1 for c in row["clients"] if c["status"] != "failed")
        for row in rows
        if any(c["status"] != "failed" for c in row["clients"])
    ]
    return {
        "received": round(sum(received) / len(received) / 1e6, 3) if received else 0.0,
        "sent": round(sum(sent) / len(sent) / 1e6, 3) if sent else 0.0,
    }


def compare_update_dtypes(federated: dict[str, dict[str, Any]], dtypes: list[str]) -> dict[str, Any]:
    """Each ``STRATEGY+DTYPE`` run against the same strategy with the first dtype (bytes, mAP50-95)."""
    comparison: dict[str, Any] = {}
    base_dtype = dtypes[0]
    for name, run in federated.items():
        base_name, _, dtype = name.rpartition("+")
        if dtype not in dtypes[1:] or base_name not in federated:
            continue
        base = federated[base_name]
        base_map = base["map50_95"]
        comparison[name] = {
            "against": f"{base_name} ({base_dtype})",
            "mb_sent_per_client_round": run["mb_per_client_round"]["sent"],
            "bytes_ratio": round(run["mb_per_client_round"]["sent"] / base["mb_per_client_round"]["sent"], 4),
            "map50_95": run["map50_95"],
            "map50_95_relative_change": (
                round(run["map50_95"] / base_map - 1, 4) if base_map >= MIN_COMPARABLE_MAP else None
            ),
        }
    return comparison


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one JSON document."""
    args = parse_args(argv)
    configure_offline()
    from datasets.prepare import prepare
    from federated.config import FederatedConfig

    config = FederatedConfig().with_overrides(
        [
            f"model={args.model}",
            f"rounds={args.rounds}",
            f"local_epochs={args.local_epochs}",
            f"imgsz={args.imgsz}",
            f"batch={args.batch}",
            f"optimizer={args.optimizer}",
            f"lr0={args.lr0}",
            f"nbs={args.nbs}",
            f"seed={args.seed}",
            f"min_clients={args.clients}",
            *args.set,
        ]
    )
    out = args.out.resolve()
    report: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": config.to_flat(),
        "splits": {},
    }
    centrals: dict[tuple[str, ...], dict[str, Any]] = {}
    central_split: dict[tuple[str, ...], str] = {}
    for split in comma_list(args.splits):
        kind = "iid" if split == "iid" else "non-iid"
        data_dir = out / f"data-{split.replace(':', '-')}"
        partition = prepare(
            f"synthetic:{args.images}",
            clients=args.clients,
            split=split,
            seed=args.seed,
            out=data_dir,
            imgsz=args.scene_size,
        )
        epochs = args.rounds * args.local_epochs
        # Every split holds out the same evaluation images and shares the rest among the clients, so
        # the union (what central training sees) is usually the same set: train it once.
        union_key = training_images(data_dir, args.clients)
        if union_key not in centrals:
            centrals[union_key] = {
                name: central_run(
                    config.replace(**changes), data_dir, args.clients, epochs, out / f"central-{split}-{name}"
                )
                for name, changes in central_baselines(config, args.clients, args.central).items()
            }
            central_split[union_key] = split
        entry: dict[str, Any] = {
            "skew_mean_tv_distance": partition["skew"]["mean_tv_distance"],
            "central": centrals[union_key],
            "central_trained_on_split": central_split[union_key],
            "federated": {},
            "target_ratio": TARGETS[kind],
        }
        strategies = args.iid_strategies if kind == "iid" else args.non_iid_strategies
        dtypes = comma_list(args.update_dtypes)
        runs = [
            (strategy, state, dtype)
            for strategy in comma_list(strategies)
            for state in comma_list(args.optimizer_states)
            for dtype in dtypes
        ]
        for strategy, state, dtype in runs:
            name = strategy if state == "reset" else f"{strategy}+{state}"
            name = name if dtype == dtypes[0] else f"{name}+{dtype}"
            run_dir = out / f"fed-{split.replace(':', '-')}-{name.replace('+', '-')}"
            shutil.rmtree(run_dir, ignore_errors=True)  # this benchmark's own previous output
            run_config = config.replace(strategy=strategy, optimizer_state=state, update_dtype=dtype)
            fed = federated_run(run_config, data_dir, run_dir, args.engine)
            fed["ratio"] = {
                name: round(fed["map50_95"] / central["map50_95"], 4) if central["map50_95"] > 0 else None
                for name, central in entry["central"].items()
            }
            fed["meets_target"] = {
                name: ratio is not None and ratio >= TARGETS[kind] for name, ratio in fed["ratio"].items()
            }
            entry["federated"][name] = fed
            print(json.dumps({"progress": split, "strategy": name, **fed}), file=sys.stderr, flush=True)
        if len(dtypes) > 1:
            entry["update_dtypes"] = compare_update_dtypes(entry["federated"], dtypes)
        report["splits"][split] = entry
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
