"""Round overhead of both engines, the ClientApp start cost, and the weight-transport cost; prints JSON.

* ``overhead`` per round = round seconds / slowest client's training seconds - 1 (target <= 0.10),
  from ``metrics.jsonl`` of real FleetFL runs with the simulation and the deployment engine (the
  deployment engine once per ClientApp isolation: ``warm`` fork server and Flower's ``subprocess``).
* ``clientapp_start``: what the Deployment Engine pays per message before the ClientApp runs: a new
  process importing Flower's ClientApp runtime and FleetFL's ClientApp (torch, ultralytics), versus a
  child forked from a process that preloaded them (``federated.clientapp_forkserver``).
* ``transport`` (``--transport``): a probe Flower app on the Deployment Engine sends the YOLO
  model's weights to 2 SuperNodes and back for 2 rounds, once as its ``state_dict`` arrays (one
  Flower object, hence one HTTP request per hop, per array) and once packed into a single array.

    .venv/bin/python benchmarks/round_overhead.py --out runs/bench-overhead [--transport]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


#: Imports a fresh ``flwr-clientapp`` process needs before it can run FleetFL's ClientApp.
CLIENTAPP_IMPORTS = "import flwr.supernode.runtime.run_clientapp, federated.client_app"

_FORK_PROBE = """
import json, os, sys, time
from federated.clientapp_forkserver import DEFAULT_PRELOAD, _forget_project_modules, preload
preload(DEFAULT_PRELOAD)
times = []
for _ in range({repeats}):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _forget_project_modules()
        import federated.client_app  # noqa: F401
        os._exit(0)
    os.waitpid(pid, 0)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-overhead"), help="work folder")
    parser.add_argument("--data", type=Path, help="prepared data (default: synthetic scenes made here)")
    parser.add_argument("--images", type=int, default=120, help="synthetic scenes (eval split included)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="yolov9t.yaml")
    parser.add_argument("--engines", default="simulation,deployment", help="comma-separated engines")
    parser.add_argument(
        "--clientapp-modes", default="warm,subprocess", help="deployment: ClientApp isolations to run"
    )
    parser.add_argument(
        "--poll-intervals",
        default="",
        help="deployment: also run with these poll_interval values (e.g. 3 = Flower's own), side by side",
    )
    parser.add_argument("--repeats", type=int, default=3, help="ClientApp start measurements")
    parser.add_argument("--transport", action="store_true", help="also run the weight-transport probe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- ClientApp start cost
def clientapp_start_cost(repeats: int) -> dict[str, Any]:
    """Seconds until FleetFL's ClientApp is importable: a new process vs a fork of a warm one."""
    cold = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CLIENTAPP_IMPORTS], cwd=ROOT, check=True)
        cold.append(time.perf_counter() - start)
    probe = subprocess.run(
        [sys.executable, "-c", _FORK_PROBE.format(repeats=repeats)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    warm = json.loads(probe.stdout.strip().splitlines()[-1])
    return {
        "new_process_s": _summary(cold),
        "forked_warm_s": _summary(warm),
        "saved_per_message_s": round(statistics.median(cold) - statistics.median(warm), 3),
    }


# ---------------------------------------------------------------------- engines
def engine_overhead(config: Any, data: Path, out: Path, engine: str, **opts: Any) -> dict[str, Any]:
    """Run FleetFL once and compute each round's overhead from ``metrics.jsonl``."""
    from federated.engine import run_federated

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = run_federated(config, data, out, engine=engine, **opts)
    total = time.perf_counter() - start
    rounds = []
    for row in result.rows:
        slowest = max(c.get("train_seconds", 0.0) for c in row["clients"] if c.get("status") == "ok")
        rounds.append(
            {
                "round": row["round"],
                "round_s": round(row["round_seconds"], 2),
                "slowest_train_s": round(slowest, 2),
                "overhead": round(row["round_seconds"] / slowest - 1.0, 3) if slowest else None,
                "eval_s": round(row.get("eval_seconds", 0.0), 2),  # the server's central evaluation
                # messages out -> last reply in, and the slowest ClientApp's whole train message
                "wait_s": round(row.get("wait_seconds", 0.0), 2),
                "slowest_clientapp_s": round(
                    max(
                        (c.get("clientapp_seconds") or 0.0) for c in row["clients"] if c.get("status") == "ok"
                    ),
                    2,
                ),
            }
        )
    later = [r["overhead"] for r in rounds[1:] if r["overhead"] is not None]
    return {
        "rounds": rounds,
        "overhead_mean_after_round_1": round(statistics.mean(later), 3) if later else None,
        "overhead_all_rounds": round(
            sum(r["round_s"] for r in rounds) / sum(r["slowest_train_s"] for r in rounds) - 1.0, 3
        ),
        "wall_s": round(total, 1),
        "meets_target": bool(later) and statistics.mean(later) <= 0.10,
    }


# ---------------------------------------------------------------------- transport probe
PROBE_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "transportprobe"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "fleetfl-bench"

[tool.flwr.app.components]
serverapp = "transportprobe.server:app"
clientapp = "transportprobe.client:app"

[tool.flwr.app.config]
weights = ""
packed = false
"""

PROBE_CLIENT = """\
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = ArrayRecord(msg.content["arrays"].to_numpy_ndarrays())
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
"""

PROBE_SERVER = """\
import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    with np.load(context.run_config["weights"]) as data:
        arrays = [data[key] for key in data.files]
    if context.run_config["packed"]:
        arrays = [np.concatenate([a.astype(np.float32).ravel() for a in arrays])]
    strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2)
    start = time.perf_counter()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(arrays), num_rounds=2)
    seconds = time.perf_counter() - start
    print("PROBE " + json.dumps({"arrays": len(arrays), "seconds": seconds}), flush=True)
"""


def transport_probe(config: Any, data: Path, out: Path) -> dict[str, Any]:
    """2 rounds x 2 SuperNodes of the model's weights: as state_dict arrays vs one packed array."""
    import numpy as np

    from federated import yolo_task
    from federated.deployment import run_deployment

    names = yolo_task.read_dataset(data / "eval" / "data.yaml").names
    weights = yolo_task.get_weights(yolo_task.build_model(config.model, names, seed=config.seed))
    results: dict[str, Any] = {
        "arrays": len(weights),
        "megabytes": round(sum(w.nbytes for w in weights) / 1e6, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "app"
        (app / "transportprobe").mkdir(parents=True)
        (app / "pyproject.toml").write_text(PROBE_PYPROJECT)
        (app / "transportprobe" / "__init__.py").write_text("")
        (app / "transportprobe" / "client.py").write_text(textwrap.dedent(PROBE_CLIENT))
        (app / "transportprobe" / "server.py").write_text(textwrap.dedent(PROBE_SERVER))
        npz = Path(tmp) / "weights.npz"
        np.savez(npz, *weights)
        for packed in (False, True):
            run_dir = out / f"transport-{'packed' if packed else 'arrays'}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_deployment({"weights": str(npz), "packed": packed}, 2, data, run_dir, app_dir=app, echo=False)
            log = (run_dir / "logs" / "serverapp.log").read_text(errors="replace")
            line = next(x for x in log.splitlines() if x.startswith("PROBE "))
            probe = json.loads(line[len("PROBE ") :])
            results["packed" if packed else "state_dict_arrays"] = {
                "objects": probe["arrays"],
                "seconds_per_round": round(probe["seconds"] / 2, 2),
            }
    return results


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one JSON document."""
    args = parse_args(argv)
    from federated.runtime import configure_offline

    configure_offline()
    from federated.config import FederatedConfig

    out = args.out.resolve()
    data = args.data
    if data is None:
        from datasets.prepare import prepare

        data = out / "data"
        prepare(
            f"synthetic:{args.images}", clients=args.clients, split="iid", seed=0, out=data, imgsz=args.imgsz
        )
    config = FederatedConfig().with_overrides(
        [
            f"model={args.model}",
            f"rounds={args.rounds}",
            f"local_epochs={args.local_epochs}",
            f"imgsz={args.imgsz}",
            f"batch={args.batch}",
            f"min_clients={args.clients}",
            *args.set,
        ]
    )
    report: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "clientapp_start": clientapp_start_cost(args.repeats),
        "engines": {},
    }
    print(json.dumps({"clientapp_start": report["clientapp_start"]}), file=sys.stderr, flush=True)
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if engine == "deployment":
            intervals = [float(v) for v in args.poll_intervals.split(",") if v.strip()] or [
                config.poll_interval
            ]
            for mode in [m.strip() for m in args.clientapp_modes.split(",") if m.strip()]:
                for interval in intervals:
                    key = f"deployment-{mode}" + (f"-poll{interval:g}" if len(intervals) > 1 else "")
                    report["engines"][key] = engine_overhead(
                        config.replace(poll_interval=interval),
                        data,
                        out / key,
                        "deployment",
                        clientapp_mode=mode,
                        echo=False,
                    )
                    print(json.dumps({key: report["engines"][key]}), file=sys.stderr, flush=True)
        else:
            report["engines"][engine] = engine_overhead(config, data, out / engine, engine)
            print(json.dumps({engine: report["engines"][engine]}), file=sys.stderr, flush=True)
    if args.transport:
        report["transport"] = transport_probe(config, data, out)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
