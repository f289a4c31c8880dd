"""version_data on the embedded server: lineage, idempotence, clean refusal of bad specs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from components import version_data as vd


def _all_datasets(project: str) -> list[dict]:
    from clearml import Dataset

    try:
        return Dataset.list_datasets(dataset_project=f"{project}/datasets", only_completed=False)
    except ValueError:  # no such project yet
        return []


@pytest.fixture(scope="module")
def versioned(clearml_server) -> dict:
    """One registration of 16 synthetic 64 px images over 2 clients (shared by the tests below)."""
    project = f"fleetfl-test/vd-{uuid.uuid4().hex[:6]}"
    return vd.version_data("synthetic:16", split="iid", clients=2, seed=3, project=project, imgsz=64)


@pytest.mark.slow
def test_shards_are_children_of_the_source_version(versioned: dict) -> None:
    from clearml import Dataset

    assert versioned["reused"] is False and len(versioned["clients"]) == 2
    for shard_id in [*versioned["clients"], versioned["eval"]]:
        shard = Dataset.get(dataset_id=shard_id)
        assert shard.get_dependency_graph()[shard_id] == [versioned["source"]]  # lineage
        files = shard.list_files()
        assert "data.yaml" in files and "partition.json" in files
        assert all(not f.startswith("synthetic") for f in files)  # no inherited source files
        assert shard.get_metadata("spec")["seed"] == 3
    source_files = Dataset.get(dataset_id=versioned["source"]).list_files()
    assert sum(f.startswith("images/") for f in source_files) == 16
    partition = versioned["partition"]
    assert partition["clients"] == 2 and partition["source"] == "synthetic:16"
    images = [partition["splits"][name]["images"] for name in ("eval", "client_0", "client_1")]
    assert sum(images) == 16
    local = vd.fetch_dataset(versioned["clients"][1])
    assert len(list((local / "images").iterdir())) == partition["splits"]["client_1"]["images"]


@pytest.mark.slow
def test_same_source_and_spec_reuse_the_versions(versioned: dict) -> None:
    project = versioned["dataset_project"].removesuffix("/datasets")
    count = len(_all_datasets(project))
    again = vd.version_data("synthetic:16", split="iid", clients=2, seed=3, project=project, imgsz=64)
    assert again["reused"] is True
    assert (again["source"], again["eval"], again["clients"]) == (
        versioned["source"],
        versioned["eval"],
        versioned["clients"],
    )
    assert again["partition"]["splits"] == versioned["partition"]["splits"]
    assert len(_all_datasets(project)) == count  # nothing new registered


@pytest.mark.slow
def test_materialize_gives_a_prepared_data_folder(versioned: dict, tmp_path: Path) -> None:
    from datasets.layout import client_yaml, eval_yaml, num_clients

    out = vd.materialize(versioned, tmp_path / "data")
    assert num_clients(out) == 2
    assert client_yaml(out, 1).is_file() and eval_yaml(out).is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "dirichlet:-1"}, "split"),
        ({"split": "weird"}, "split"),
        ({"clients": 0}, "clients"),
        ({"eval_fraction": 1.5}, "eval_fraction"),
        ({"policy": "lenient"}, "policy"),
        ({"source": "nope:/x"}, "--source"),
        ({"source": "kitti:/does/not/exist"}, "does not exist"),
        ({"source": "clearml:xyz"}, "clearml:DATASET_ID"),
        ({"classes": "/no/such/map.yaml"}, "classes"),
    ],
)
def test_bad_spec_is_refused_before_registering(clearml_server, kwargs: dict, message: str) -> None:
    project = f"fleetfl-test/vd-bad-{uuid.uuid4().hex[:6]}"
    args = {"source": "synthetic:8", "split": "iid", "clients": 2, "project": project, "imgsz": 64, **kwargs}
    with pytest.raises(vd.VersionDataError, match=message):
        vd.version_data(**args)
    assert _all_datasets(project) == []


@pytest.mark.slow
def test_failure_half_way_leaves_no_half_registered_versions(clearml_server, monkeypatch) -> None:
    project = f"fleetfl-test/vd-fail-{uuid.uuid4().hex[:6]}"
    real = vd._register_shard
    calls = []

    def failing(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise RuntimeError("upload failed (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(vd, "_register_shard", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        vd.version_data("synthetic:8", clients=2, project=project, imgsz=64)
    assert calls == ["client_0", "client_1"]
    assert _all_datasets(project) == []  # the source and client_0 were deleted again


@pytest.mark.slow
def test_path_source_versions_follow_content_and_registered_sources_are_reused(
    clearml_server, make_kitti
) -> None:
    from clearml import Dataset

    project = f"fleetfl-test/vd-kitti-{uuid.uuid4().hex[:6]}"
    root = make_kitti()
    first = vd.version_data(f"kitti:{root}", clients=2, project=project, eval_fraction=0.3)
    assert first["partition"]["images"] == 6
    # the registered source itself is a valid source: its shards hang off the same version
    by_id = vd.version_data(f"clearml:{first['source']}:kitti", clients=2, project=project, eval_fraction=0.3)
    assert by_id["source"] == first["source"]
    assert Dataset.get(dataset_id=by_id["clients"][0]).get_dependency_graph()[by_id["clients"][0]] == [
        first["source"]
    ]
    # changed content is a new source version (and new shards), never a stale reuse
    label = root / "training" / "label_2" / "000000.txt"
    label.write_text(label.read_text().replace("Car 0.00", "Van 0.00"))
    changed = vd.version_data(f"kitti:{root}", clients=2, project=project, eval_fraction=0.3)
    assert changed["reused"] is False and changed["source"] != first["source"]
