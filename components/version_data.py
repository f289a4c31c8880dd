"""Component ``version_data``: register a source and its client shards as ClearML Dataset versions.

From a source (``kitti:PATH``, ``bdd100k:PATH``, ``yolo:PATH``, ``synthetic:N``, or a ClearML Dataset
``clearml:ID[:FORMAT]``, FORMAT ``yolo`` by default) and a split spec, it

1. checks the spec (clients, split, seed, eval fraction, policy, class map) - a bad spec fails here,
   before anything is registered;
2. looks for versions registered earlier for the same source content and spec (the *spec key*, a
   hash of both, is a tag of every shard): found, they are returned as they are (idempotent);
3. otherwise reads, validates and partitions the source locally with ``datasets.prepare``;
4. registers the **source** version (reused if the same content was registered before), then one
   Dataset per client shard and one for the held-out evaluation split, each a **child of the source
   version** (lineage; the inherited files are removed, so a shard holds only its own images). Each
   shard's root is a YOLO dataset (``data.yaml``, ``images/``, ``labels/``) plus ``partition.json``;
   the spec, seed and partition report are attached as Dataset metadata too.

If registering fails half-way, the versions this call created are deleted again.

Datasets live in the ClearML project ``<project>/datasets``; shard names are ``<source>.client_<i>``
and ``<source>.eval`` (a new spec of the same source is a new version of the same names).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.common import DEFAULT_PROJECT, ComponentError

LOG = logging.getLogger(__name__)

SHARD_TAG = "fleetfl-shard"
SOURCE_TAG = "fleetfl-source"
POLICIES = ("strict", "skip")
EVAL_ROLE = "eval"
_CLEARML_ID = re.compile(r"^[0-9a-f]{32}$")


class VersionDataError(ComponentError):
    """A bad source or split spec (nothing was registered)."""


# ---------------------------------------------------------------------- public API
def version_data(
    source: str,
    split: str = "iid",
    clients: int = 2,
    seed: int = 0,
    project: str = DEFAULT_PROJECT,
    eval_fraction: float = 0.2,
    classes: str | None = None,
    policy: str = "strict",
    imgsz: int = 320,
) -> dict[str, Any]:
    """Register (or reuse) the source version, its client shards and its evaluation split.

    Args:
        source: ``FORMAT:PATH``, ``synthetic:N``, or ``clearml:DATASET_ID[:FORMAT]``.
        split: ``iid``, ``dirichlet:ALPHA`` or ``attribute:NAME``.
        clients: number of client shards.
        seed: seed of the hold-out, the partition (and synthetic scenes).
        project: ClearML project; datasets go to ``<project>/datasets``.
        eval_fraction: held-out share for evaluation, 0 < F < 1.
        classes: optional class map YAML (see ``datasets.classes``).
        policy: ``strict`` (bad data fails) or ``skip`` (bad items skipped and reported).
        imgsz: image size of synthetic scenes.

    Returns:
        ``{"source": id, "eval": id, "clients": [ids], "partition": {...}, "key": spec key,
        "reused": bool, "dataset_project": str}``.

    Raises:
        VersionDataError: bad spec (before anything is registered); ``DataError`` for bad data.
    """
    spec = _check_spec(source, split, clients, seed, eval_fraction, classes, policy, imgsz)
    from clearml import Dataset

    dataset_project = f"{project}/datasets"
    with tempfile.TemporaryDirectory(prefix="fleetfl-version-data-") as scratch_name:
        scratch = Path(scratch_name)
        fmt, source_id, source_fp, source_name = _identify_source(spec)
        key = spec_key(source_fp, spec)
        existing = find_versions(dataset_project, key, clients)
        if existing is not None:
            LOG.info("version_data: reusing the versions of spec %s", key)
            partition = Dataset.get(dataset_id=existing["eval"]).get_metadata("partition") or {}
            return {
                **existing,
                "partition": partition,
                "key": key,
                "reused": True,
                "dataset_project": dataset_project,
            }

        from datasets.prepare import prepare

        local_source = _local_source(spec, source_id, scratch)
        prepared = scratch / "prepared"
        report = prepare(
            source=f"{fmt}:{local_source}",
            clients=clients,
            split=split,
            seed=seed,
            out=prepared,
            classes=Path(classes) if classes else None,
            policy=policy,
            eval_fraction=eval_fraction,
            imgsz=imgsz,
        )
        report.pop("validation", None)
        report["source"] = source  # the user's source, not the scratch copy
        metadata = {"spec": {**spec, "key": key, "source_fingerprint": source_fp}, "partition": report}
        created: list[str] = []
        try:
            if source_id is None:
                source_id = _register_source(
                    dataset_project, source_name, local_source, source_fp, spec, created
                )
            client_ids = [
                _register_shard(
                    dataset_project,
                    f"{source_name}.client_{i}",
                    f"client_{i}",
                    source_id,
                    prepared / f"client_{i}",
                    prepared / "partition.json",
                    key,
                    metadata,
                    created,
                )
                for i in range(clients)
            ]
            # the eval split is registered last: a complete set always has it (see find_versions)
            eval_id = _register_shard(
                dataset_project,
                f"{source_name}.eval",
                EVAL_ROLE,
                source_id,
                prepared / "eval",
                prepared / "partition.json",
                key,
                metadata,
                created,
            )
        except BaseException:
            _delete_created(created)
            raise
    return {
        "source": source_id,
        "eval": eval_id,
        "clients": client_ids,
        "partition": report,
        "key": key,
        "reused": False,
        "dataset_project": dataset_project,
    }


def spec_key(source_fingerprint: str, spec: dict[str, Any]) -> str:
    """The hash that identifies a (source content, split spec) pair: equal inputs, equal key."""
    material = {k: v for k, v in spec.items() if k not in ("source", "project")}
    material["source"] = source_fingerprint
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def find_versions(dataset_project: str, key: str, clients: int) -> dict[str, Any] | None:
    """The finalized shard versions of spec ``key`` (``{"source", "eval", "clients"}``) or ``None``."""
    from clearml import Dataset

    found = Dataset.list_datasets(dataset_project=dataset_project, tags=[f"spec-{key}"], only_completed=True)
    roles: dict[str, str] = {}
    for entry in found:
        tags = set(entry.get("tags") or [])
        for role in [EVAL_ROLE, *(f"client_{i}" for i in range(clients))]:
            if role in tags and role not in roles:
                roles[role] = entry["id"]
    if EVAL_ROLE not in roles or any(f"client_{i}" not in roles for i in range(clients)):
        return None
    parents = Dataset.get(dataset_id=roles[EVAL_ROLE]).get_dependency_graph().get(roles[EVAL_ROLE], [])
    if not parents:
        return None
    return {
        "source": parents[0],
        "eval": roles[EVAL_ROLE],
        "clients": [roles[f"client_{i}"] for i in range(clients)],
    }


def fetch_dataset(dataset_id: str) -> Path:
    """A local (cached, read-only) copy of a shard or evaluation version: a folder with ``data.yaml``."""
    from clearml import Dataset

    folder = Path(Dataset.get(dataset_id=dataset_id).get_local_copy())
    if not (folder / "data.yaml").is_file():
        raise VersionDataError(f"dataset {dataset_id}: no data.yaml at its root (not a FleetFL shard)")
    return folder


def materialize(datasets: dict[str, Any], out: Path) -> Path:
    """Rebuild a prepared-data folder (``partition.json``, ``eval/``, ``client_<i>/``) from versions.

    ``datasets`` is a :func:`version_data` output. The folders are symlinks to the local copies, so
    ``federated.engine.run_federated(data_dir=out, ...)`` can train on registered shards.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links = {"eval": datasets["eval"], **{f"client_{i}": ds for i, ds in enumerate(datasets["clients"])}}
    for name, dataset_id in links.items():
        target = out / name
        if target.is_symlink() or target.exists():
            target.unlink() if target.is_symlink() else shutil.rmtree(target)
        target.symlink_to(fetch_dataset(dataset_id), target_is_directory=True)
    partition = datasets.get("partition") or json.loads((out / "eval" / "partition.json").read_text())
    tmp = out / ".partition.json.tmp"
    tmp.write_text(json.dumps(partition, indent=1), encoding="utf-8")
    os.replace(tmp, out / "partition.json")
    return out


# ---------------------------------------------------------------------- checks
def _check_spec(
    source: str,
    split: str,
    clients: Any,
    seed: Any,
    eval_fraction: Any,
    classes: str | None,
    policy: str,
    imgsz: Any,
) -> dict[str, Any]:
    from datasets.partition import parse_split
    from datasets.prepare import parse_source

    if not isinstance(source, str) or not source.strip():
        raise VersionDataError("source: expected FORMAT:PATH, synthetic:N or clearml:DATASET_ID")
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise VersionDataError(f"clients: must be an integer of at least 1, got {clients!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise VersionDataError(f"seed: must be a non-negative integer, got {seed!r}")
    if (
        isinstance(eval_fraction, bool)
        or not isinstance(eval_fraction, int | float)
        or not 0 < eval_fraction < 1
    ):
        raise VersionDataError(f"eval_fraction: must be between 0 and 1 (exclusive), got {eval_fraction!r}")
    if policy not in POLICIES:
        raise VersionDataError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 64:
        raise VersionDataError(f"imgsz: must be an integer of at least 64, got {imgsz!r}")
    try:
        split_spec = str(parse_split(split))
    except ValueError as exc:
        raise VersionDataError(f"split: {exc}") from None
    classes_fp = None
    if classes:
        path = Path(classes)
        if not path.is_file():
            raise VersionDataError(f"classes: class map {path} not found")
        from datasets.classes import load_class_map

        load_class_map(path)  # raises DataError naming the file and line
        classes_fp = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if source.startswith("clearml:") or _CLEARML_ID.match(source):
        parts = source.split(":")[1:] if source.startswith("clearml:") else [source]
        fmt = parts[1] if len(parts) > 1 else "yolo"
        if not parts or not _CLEARML_ID.match(parts[0]) or fmt not in ("yolo", "kitti", "bdd100k"):
            raise VersionDataError(
                f"source {source!r}: expected clearml:DATASET_ID[:FORMAT] with a 32-hex id and FORMAT "
                "yolo, kitti or bdd100k"
            )
    else:
        try:
            parse_source(source)
        except ValueError as exc:
            raise VersionDataError(str(exc)) from None
    return {
        "source": source,
        "split": split_spec,
        "clients": clients,
        "seed": seed,
        "eval_fraction": float(eval_fraction),
        "classes": classes_fp,
        "policy": policy,
        "imgsz": imgsz,
    }


# ---------------------------------------------------------------------- sources
def _identify_source(spec: dict[str, Any]) -> tuple[str, str | None, str, str]:
    """``(format, registered id or None, content fingerprint, dataset name)``; nothing is generated."""
    source = spec["source"]
    if source.startswith("clearml:") or _CLEARML_ID.match(source):
        from clearml import Dataset

        parts = source.split(":")[1:] if source.startswith("clearml:") else [source]
        fmt = parts[1] if len(parts) > 1 else "yolo"
        try:
            dataset = Dataset.get(dataset_id=parts[0])
        except ValueError as exc:
            raise VersionDataError(f"source {source!r}: no such ClearML dataset ({exc})") from None
        return fmt, dataset.id, f"clearml-{dataset.id}", _slug(dataset.name)
    fmt, arg = source.split(":", 1)
    if fmt == "synthetic":  # the generator is seeded: its parameters identify its content
        return (
            "yolo",
            None,
            f"synthetic-{int(arg)}-seed{spec['seed']}-{spec['imgsz']}px",
            f"synthetic-{int(arg)}",
        )
    path = Path(arg).resolve()
    return fmt, None, f"{fmt}-{_content_hash(path)}", _slug(f"{fmt}-{path.name}")


def _local_source(spec: dict[str, Any], source_id: str | None, scratch: Path) -> Path:
    """The source's files on this machine (generated or downloaded into ``scratch`` if needed)."""
    source = spec["source"]
    if source_id is not None:
        from clearml import Dataset

        return Path(Dataset.get(dataset_id=source_id).get_local_copy())
    fmt, arg = source.split(":", 1)
    if fmt == "synthetic":
        from datasets.synthetic import generate_scenes

        return generate_scenes(scratch / "synthetic", int(arg), seed=spec["seed"], imgsz=spec["imgsz"])
    return Path(arg).resolve()


def _content_hash(path: Path) -> str:
    """SHA-256 over the relative names and contents of every file under ``path`` (or of the file)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent if path.is_file() else path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "source"


# ---------------------------------------------------------------------- registration
def _register_source(
    dataset_project: str, name: str, local: Path, fingerprint: str, spec: dict[str, Any], created: list[str]
) -> str:
    """The source version with this content fingerprint (registered now if new)."""
    from clearml import Dataset

    tag = f"fp-{fingerprint}"
    for entry in Dataset.list_datasets(dataset_project=dataset_project, tags=[tag], only_completed=True):
        if SOURCE_TAG in (entry.get("tags") or []):
            return entry["id"]
    dataset = Dataset.create(
        dataset_name=name,
        dataset_project=dataset_project,
        dataset_tags=[SOURCE_TAG, tag],
        description=f"FleetFL source {spec['source']}",
    )
    created.append(dataset.id)
    dataset.add_files(str(local))
    dataset.upload()
    dataset.finalize()
    LOG.info("version_data: registered source %s as dataset %s", spec["source"], dataset.id)
    return dataset.id


def _register_shard(
    dataset_project: str,
    name: str,
    role: str,
    parent_id: str,
    folder: Path,
    partition_file: Path,
    key: str,
    metadata: dict[str, Any],
    created: list[str],
) -> str:
    """One shard version: a child of the source holding only the shard's files."""
    from clearml import Dataset

    dataset = Dataset.create(
        dataset_name=name,
        dataset_project=dataset_project,
        dataset_tags=[SHARD_TAG, f"spec-{key}", role],
        parent_datasets=[parent_id],
        description=f"FleetFL {role} of {metadata['partition']['source']} ({metadata['spec']['split']}, "
        f"seed {metadata['spec']['seed']}, spec {key})",
    )
    created.append(dataset.id)
    dataset.remove_files("*", recursive=True)  # a shard holds its own images, not the parent's
    dataset.add_files(str(folder))
    dataset.add_files(str(partition_file))
    dataset.set_metadata(metadata["spec"], metadata_name="spec", ui_visible=False)
    dataset.set_metadata(metadata["partition"], metadata_name="partition", ui_visible=False)
    dataset.upload()
    dataset.finalize()
    return dataset.id


def _delete_created(created: list[str]) -> None:
    from clearml import Dataset

    for dataset_id in reversed(created):
        try:
            Dataset.delete(dataset_id=dataset_id, force=True)
        except Exception as exc:  # keep cleaning up the others
            LOG.warning("version_data: could not delete half-registered dataset %s: %s", dataset_id, exc)


# ---------------------------------------------------------------------- task entry point
DEFAULTS: dict[str, Any] = {
    "source": "synthetic:60",
    "split": "iid",
    "clients": 2,
    "seed": 0,
    "project": DEFAULT_PROJECT,
    "eval_fraction": 0.2,
    "classes": None,
    "policy": "strict",
    "imgsz": 320,
}


def main() -> None:
    """``python -m components.version_data``: run as a ClearML task (parameters in ``General``)."""
    from components.common import init_component_task, publish_output

    task, params = init_component_task("version_data", DEFAULTS, task_type="data_processing")
    output = version_data(**params)
    publish_output(task, output)
    print(json.dumps({k: output[k] for k in ("source", "eval", "clients", "key", "reused")}))


if __name__ == "__main__":
    main()
