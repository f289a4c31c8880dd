"""``fleetfl data prepare``: read a source, validate it, partition it and write the canonical layout.

Output (fixed; the federated code relies on it)::

    OUT/partition.json          spec, seed, classes, skew, and per split (eval, client_<i>):
                                images, boxes, per class images/boxes, attribute counts, files
    OUT/validation.json         the validation report (policy, problems, skipped items)
    OUT/eval/images/*, OUT/eval/labels/*.txt, OUT/eval/data.yaml
    OUT/client_<i>/images, labels, data.yaml          (i = 0..K-1)

Each ``data.yaml`` is ultralytics format without a ``path`` key (``train: images``, ``val: images``,
``nc``, ``names``), so ultralytics resolves it relative to the yaml's folder. Everything is built in
a temporary folder beside OUT and moved into place at the end: a failure leaves nothing behind. An
existing OUT is replaced only when it is a previous FleetFL output (holds ``partition.json``) or
empty. Images are hard-linked when possible, else copied.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from datasets.classes import ClassMap, load_class_map
from datasets.errors import DataError, IssueLog
from datasets.layout import EVAL_DIR, REPORT_FILE, VALIDATION_FILE, client_dir
from datasets.partition import hold_out, parse_split, partition
from datasets.readers import READERS, read_bdd100k, read_yolo
from datasets.report import mean_tv_distance, split_stats
from datasets.samples import Sample
from datasets.synthetic import generate_scenes

FORMATS: tuple[str, ...] = (*READERS, "synthetic")
#: The embedded default data when the user names none (generated, so nothing is downloaded).
DEFAULT_SOURCE = "synthetic:512"


def parse_source(source: str) -> tuple[str, str]:
    """Split ``FORMAT:PATH`` (or ``synthetic:N``) and check the format.

    Raises:
        DataError: unknown format, missing path, or N not a positive integer.
    """
    fmt, sep, arg = str(source).partition(":")
    if not sep or fmt not in FORMATS or not arg:
        raise DataError(
            f"--source {source!r}: expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)} "
            "(synthetic:N for N generated images)"
        )
    if fmt == "synthetic" and (not arg.isdigit() or int(arg) < 1):
        raise DataError(f"--source {source!r}: synthetic:N needs a positive integer N")
    if fmt != "synthetic" and not Path(arg).exists():
        raise DataError(f"--source {source!r}: {arg} does not exist")
    return fmt, arg


def read_source(
    fmt: str,
    arg: str,
    class_map: ClassMap,
    log: IssueLog,
    scratch: Path,
    seed: int,
    imgsz: int,
    bdd_split: str | None = None,
) -> list[Sample]:
    """Canonical samples of a source; synthetic images are generated under ``scratch``."""
    if fmt == "synthetic":
        generated = generate_scenes(scratch / "synthetic", int(arg), seed=seed, imgsz=imgsz)
        return read_yolo(generated, class_map, log)
    if fmt == "bdd100k":
        return read_bdd100k(Path(arg), class_map, log, split=bdd_split)
    return READERS[fmt](Path(arg), class_map, log)


def check_out(out: Path) -> None:
    """Fail early, naming the path, when ``out`` cannot become the output folder.

    Raises:
        DataError: a parent of ``out`` is a file, or ``out`` is a file or a folder that is neither
            empty nor a previous FleetFL output (which :func:`_install` replaces).
    """
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            raise DataError(f"--out {out}: {parent} is a file, not a folder; choose another path")
    if out.exists() and not _replaceable(out):
        raise DataError(f"--out {out}: exists and is not a FleetFL data folder; choose another path")


def _replaceable(out: Path) -> bool:
    return out.is_dir() and (not any(out.iterdir()) or (out / REPORT_FILE).is_file())


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_split(folder: Path, samples: list[Sample], class_map: ClassMap) -> None:
    """Write one split: ``images/``, ``labels/`` and its ``data.yaml``."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for sample in samples:
        _link_or_copy(sample.image, folder / "images" / f"{sample.name}{sample.image.suffix.lower()}")
        lines = "".join(f"{b.yolo_line(sample.width, sample.height)}\n" for b in sample.boxes)
        (folder / "labels" / f"{sample.name}.txt").write_text(lines)
    data = {"train": "images", "val": "images", "nc": len(class_map.classes), "names": class_map.names}
    (folder / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _install(stage: Path, out: Path) -> None:
    """Move the finished ``stage`` folder to ``out`` (replacing a previous FleetFL output)."""
    if out.exists():
        check_out(out)  # again: it may have changed while the data was read
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "data")
        try:
            os.replace(stage, out)
        except OSError:
            os.replace(old / "data", out)  # put the previous output back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)


def prepare(
    source: str,
    clients: int,
    split: str = "iid",
    seed: int = 0,
    out: Path = Path("data/prepared"),
    classes: Path | None = None,
    policy: str = "strict",
    eval_fraction: float = 0.2,
    imgsz: int = 320,
    bdd_split: str | None = None,
) -> dict:
    """Read, validate, partition and write a dataset; return the partition report.

    Args:
        source: ``kitti:PATH``, ``bdd100k:PATH``, ``yolo:PATH`` or ``synthetic:N``.
        clients: number of client shards K (1 <= K <= training images).
        split: ``iid``, ``dirichlet:ALPHA`` or ``attribute:NAME``.
        seed: seed of the hold-out, the partition and the synthetic scenes.
        out: output folder (layout in the module docstring).
        classes: optional user class map (see :mod:`datasets.classes`).
        policy: ``strict`` (first problem raises, nothing is written) or ``skip``.
        eval_fraction: share of images held out for evaluation, 0 < F < 1.
        imgsz: image size of synthetic scenes (ignored for other sources).
        bdd_split: ``train`` or ``val``: which label file of a BDD100K dataset root to read.

    Returns:
        The content of ``partition.json`` plus ``validation`` (the validation report).

    Raises:
        DataError: any bad option or, under ``strict``, any problem in the data.
    """
    fmt, arg = parse_source(source)
    spec = parse_split(split)
    if not isinstance(clients, int) or clients < 1:
        raise DataError(f"--clients {clients}: must be an integer of at least 1")
    if not 0 < eval_fraction < 1:
        raise DataError(f"--eval-fraction {eval_fraction}: must be between 0 and 1 (exclusive)")
    if bdd_split is not None and fmt != "bdd100k":
        raise DataError(f"--bdd-split {bdd_split}: applies to bdd100k sources only, not {fmt}")
    log = IssueLog(policy)
    class_map = load_class_map(classes)
    out = Path(out).resolve()
    check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise DataError(
            f"--out {out}: cannot create a folder in {out.parent} ({exc.strerror or exc})"
        ) from None
    try:
        samples = read_source(fmt, arg, class_map, log, stage, seed, imgsz, bdd_split)
        if not samples:
            raise DataError(f"--source {source}: empty dataset, no usable image" + _skipped_note(log))
        if len(samples) < clients + 1:
            raise DataError(
                f"--clients {clients}: {len(samples)} usable images are too few for {clients} clients "
                "and an evaluation split"
            )
        rng = np.random.default_rng(seed)
        eval_idx, train_idx = hold_out(len(samples), eval_fraction, rng)
        shards, moved = partition(samples, spec, clients, train_idx, rng)
        names = class_map.classes
        splits = {EVAL_DIR: split_stats(samples, eval_idx, names, EVAL_DIR)}
        write_split(stage / "data" / EVAL_DIR, [samples[i] for i in eval_idx], class_map)
        for k, shard in enumerate(shards):
            splits[client_dir(k)] = split_stats(samples, shard, names, client_dir(k))
            write_split(stage / "data" / client_dir(k), [samples[i] for i in shard], class_map)
        client_stats = [splits[client_dir(k)] for k in range(clients)]
        report = {
            "version": 1,
            "source": source,
            "split": str(spec),
            "seed": seed,
            "clients": clients,
            "eval_fraction": eval_fraction,
            "policy": policy,
            "classes": list(names),
            "class_map": class_map.origin,
            "images": len(samples),
            "skipped": len(log.issues),
            "moved_to_fill_empty_clients": moved,
            "skew": {"mean_tv_distance": round(mean_tv_distance(client_stats, names), 6)},
            "splits": splits,
        }
        (stage / "data" / REPORT_FILE).write_text(json.dumps(report, indent=1))
        (stage / "data" / VALIDATION_FILE).write_text(json.dumps(log.as_json(), indent=1))
        _install(stage / "data", out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**report, "validation": log.as_json()}


def _skipped_note(log: IssueLog) -> str:
    return f" ({len(log.issues)} items skipped under --policy skip)" if log.issues else ""
