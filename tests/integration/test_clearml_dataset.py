"""Flow (d): ClearML Datasets on the embedded server, with versions, lineage and local copies."""

from __future__ import annotations

import uuid
from pathlib import Path


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_dataset_versions_lineage_and_local_copy(clearml_server, tmp_path: Path) -> None:
    from clearml import Dataset

    project = f"fleetfl-test/datasets-{uuid.uuid4().hex[:6]}"
    name = "kitti-mini"
    v1_files = {"images/000001.png": "img-1", "labels/000001.txt": "0 0.5 0.5 0.1 0.1"}
    v1_dir = write_tree(tmp_path / "v1", v1_files)

    v1 = Dataset.create(dataset_name=name, dataset_project=project, dataset_version="1.0.0")
    v1.add_files(str(v1_dir))
    v1.upload()
    v1.finalize()
    assert v1.is_final()

    v2_dir = write_tree(
        tmp_path / "v2", {"images/000002.png": "img-2", "labels/000002.txt": "1 0.2 0.2 0.1 0.1"}
    )
    v2 = Dataset.create(
        dataset_name=name, dataset_project=project, parent_datasets=[v1.id], dataset_version="1.1.0"
    )
    v2.add_files(str(v2_dir))
    v2.upload()
    v2.finalize()

    # the chunks live in the embedded file server
    stored = list((Path(clearml_server.data_dir) / "files").rglob("*.zip"))
    assert len(stored) >= 2

    latest = Dataset.get(dataset_name=name, dataset_project=project)
    assert latest.id == v2.id
    assert Dataset.get(dataset_name=name, dataset_project=project, dataset_version="1.0.0").id == v1.id
    assert Dataset.get(dataset_id=v1.id).id == v1.id
    assert latest.get_dependency_graph() == {v2.id: [v1.id], v1.id: []}  # lineage
    assert sorted(latest.list_files()) == sorted([*v1_files, "images/000002.png", "labels/000002.txt"])

    local = Path(latest.get_local_copy())
    assert (local / "images/000001.png").read_text() == "img-1"  # from the parent version
    assert (local / "labels/000002.txt").read_text() == "1 0.2 0.2 0.1 0.1"
    assert (Path(Dataset.get(dataset_id=v1.id).get_local_copy()) / "labels/000001.txt").exists()

    listed = Dataset.list_datasets(dataset_project=project)
    assert {(d["id"], d["version"]) for d in listed} == {(v1.id, "1.0.0"), (v2.id, "1.1.0")}
    assert all(d["name"] == name for d in listed)
