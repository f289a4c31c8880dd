"""Benchmark: is the synthetic driving data learnable? Prints one JSON object.

Trains YOLOv9t from scratch (no pretrained weights) with ultralytics' normal trainer on synthetic
scenes and evaluates it with ultralytics' validator on separately generated scenes (another seed):
mAP50, mAP50-95 (target: well above 0.3 within 15 epochs at 160 px), per-class mAP50-95, seconds.

    python benchmarks/synthetic_learnability.py                 # 300 train + 100 val, 15 epochs
    python benchmarks/synthetic_learnability.py --train 64 --val 32 --epochs 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federated.runtime import configure_offline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300, help="training scenes")
    parser.add_argument("--val", type=int, default=100, help="validation scenes (another seed)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--imgsz", type=int, default=160, help="training/validation image size")
    parser.add_argument("--scene-size", type=int, default=320, help="rendered scene size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--optimizer", default="AdamW", help="ultralytics optimizer ('auto': its own)")
    parser.add_argument("--lr0", type=float, default=0.002, help="initial learning rate")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument(
        "--nbs", type=int, default=16,
        help="ultralytics' nominal batch size: gradients are accumulated over nbs/batch batches "
        "(its default, 64, leaves only ~70 optimizer steps for 300 images x 15 epochs)",
    )  # fmt: skip
    parser.add_argument("--model", default="yolov9t.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-synthetic-learnability"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Generate, train, validate; print and return the result."""
    args = parse_args(argv)
    configure_offline()
    import shutil

    import yaml

    from datasets.classes import DEFAULT_CLASSES
    from datasets.synthetic import generate_scenes

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    generate_scenes(out / "train", args.train, seed=args.seed, imgsz=args.scene_size)
    generate_scenes(out / "val", args.val, seed=args.seed + 1000, imgsz=args.scene_size)
    data_yaml = out / "data.yaml"
    names = dict(enumerate(DEFAULT_CLASSES))
    data_yaml.write_text(yaml.safe_dump({"path": str(out), "train": "train/images", "val": "val/images",
                                         "nc": len(names), "names": names}))  # fmt: skip
    generated = time.perf_counter()

    from ultralytics import YOLO

    from federated.model_yaml import load_checked

    load_checked(args.model)  # the same gate as every FleetFL path before ultralytics reads the yaml
    model = YOLO(args.model)
    model.train(
        data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, pretrained=False,
        amp=False, workers=0, plots=False, seed=args.seed, project=str(out / "runs"), name="train",
        exist_ok=True, verbose=False, nbs=args.nbs, optimizer=args.optimizer, lr0=args.lr0,
        warmup_epochs=args.warmup_epochs,
    )  # fmt: skip
    trained = time.perf_counter()
    metrics = model.val(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, plots=False, verbose=False,
                        project=str(out / "runs"), name="val", exist_ok=True)  # fmt: skip
    done = time.perf_counter()
    present = [int(c) for c in metrics.box.ap_class_index]
    per_class = {names[c]: round(float(metrics.box.maps[c]), 4) for c in present}
    result = {
        "benchmark": "synthetic_learnability",
        "model": args.model,
        "imgsz": args.imgsz,
        "scene_size": args.scene_size,
        "train_images": args.train,
        "val_images": args.val,
        "epochs": args.epochs,
        "batch": args.batch,
        "nbs": args.nbs,
        "optimizer": args.optimizer,
        "lr0": args.lr0,
        "warmup_epochs": args.warmup_epochs,
        "map50": round(float(metrics.box.map50), 4),
        "map50_95": round(float(metrics.box.map), 4),
        "map50_95_per_class": per_class,
        "seconds": {
            "generate": round(generated - start, 1),
            "train": round(trained - generated, 1),
            "validate": round(done - trained, 1),
            "total": round(done - start, 1),
        },
        "device": str(next(model.model.parameters()).device),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
