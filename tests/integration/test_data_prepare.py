"""``fleetfl data prepare`` end to end: layout, data.yaml that ultralytics accepts, report, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datasets.classes import DEFAULT_CLASSES
from datasets.errors import DataError
from datasets.prepare import prepare
from pipelines.cli import main
from tests.fixtures.data import write_bomb_png


def _files(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "images").iterdir()}


def test_cli_prepare_kitti(kitti_tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "kitti"
    argv = ["data", "prepare", "--source", f"kitti:{kitti_tiny_dir}", "--clients", "3",
            "--split", "dirichlet:0.5", "--seed", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "client_2" in printed and "pedestrian" in printed and "skew" in printed
    report = json.loads((out / "partition.json").read_text())
    assert report["split"] == "dirichlet:0.5" and report["seed"] == 4 and report["images"] == 75
    assert set(report["splits"]) == {"eval", "client_0", "client_1", "client_2"}
    folders = [out / "eval", *(out / f"client_{i}" for i in range(3))]
    stems = [_files(f) for f in folders]
    assert sum(map(len, stems)) == 75 == len(set().union(*stems)), "disjoint and complete"
    for folder, files in zip(folders, stems, strict=True):
        assert {p.stem for p in (folder / "labels").iterdir()} == files
        split = report["splits"][folder.name]
        assert split["images"] == len(files) and sorted(split["files"]) == sorted(files)
        data = yaml.safe_load((folder / "data.yaml").read_text())
        assert "path" not in data and data["train"] == data["val"] == "images"
        assert data["names"] == dict(enumerate(DEFAULT_CLASSES)) and data["nc"] == len(DEFAULT_CLASSES)
    boxes = sum(s["per_class"]["car"]["boxes"] for s in report["splits"].values())
    assert boxes == 209 + 25, "KITTI Car and Van are cars"
    assert json.loads((out / "validation.json").read_text())["count"] == 0
    # a second run replaces the previous output in place
    assert main([*argv[:-2], "--out", str(out), "--split", "iid"]) == 0
    assert json.loads((out / "partition.json").read_text())["split"] == "iid"


def test_ultralytics_resolves_the_data_yaml(prepared_data_dir: Path) -> None:
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=True)
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(prepared_data_dir / "client_0" / "data.yaml"))
    assert Path(data["train"]) == (prepared_data_dir / "client_0" / "images").resolve()
    assert data["nc"] == len(DEFAULT_CLASSES)
    # ultralytics' own label reader (verify_image_label) accepts every image and box we wrote
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    dataset = build_yolo_dataset(get_cfg(overrides={"imgsz": 64}), data["train"], 4, data, mode="val")
    split = json.loads((prepared_data_dir / "partition.json").read_text())["splits"]["client_0"]
    assert len(dataset.labels) == split["images"]
    assert sum(len(label["cls"]) for label in dataset.labels) == split["boxes"]


def test_synthetic_attribute_split(tmp_path: Path) -> None:
    report = prepare(
        "synthetic:30", clients=2, split="attribute:weather", seed=1, out=tmp_path / "d", imgsz=96
    )
    for name in ("client_0", "client_1"):
        assert report["splits"][name]["attributes"]["weather"]
    assert report["splits"]["eval"]["images"] == 6
    from datasets.report import format_table

    table = format_table(report).splitlines()
    assert table[1].split()[:3] == ["split", "images", "boxes"] and table[1].split()[-1] == "weather"
    assert table[2].startswith("eval") and "=" in table[3] and table[-1] == "(boxes per class)"


def test_strict_failure_writes_nothing(make_kitti, tmp_path: Path) -> None:
    root = make_kitti()
    (root / "training" / "label_2" / "000003.txt").write_text("Car 0 0 0 1 2 3\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"000003\.txt:1: expected 15 fields, got 7"):
        prepare(f"kitti:{root}", clients=2, out=out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kitti"], "no temporary folder left behind"


def test_refuses_to_replace_a_foreign_folder(make_kitti, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a FleetFL data folder"):
        prepare(f"kitti:{make_kitti()}", clients=2, out=out)
    assert (out / "notes.txt").read_text() == "keep"


def test_cli_reports_bad_input_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--source", "synthetic:4", "--clients", "0", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "fleetfl: error: --clients 0: must be an integer of at least 1"


def test_layout_helpers(prepared_data_dir: Path, tmp_path: Path) -> None:
    from datasets.layout import client_yaml, eval_yaml, num_clients, read_partition

    assert num_clients(prepared_data_dir) == 2
    assert client_yaml(prepared_data_dir, 1) == prepared_data_dir / "client_1" / "data.yaml"
    assert eval_yaml(prepared_data_dir).parent.name == "eval"
    assert read_partition(prepared_data_dir)["splits"]["client_0"]["images"] == 16
    with pytest.raises(DataError, match="no data for client 2"):
        client_yaml(prepared_data_dir, 2)
    with pytest.raises(DataError, match="fleetfl data prepare"):
        read_partition(tmp_path)


def test_cli_skip_prints_and_writes_the_validation_report(make_kitti, tmp_path, capsys) -> None:
    root = make_kitti()
    (root / "training" / "label_2" / "000002.txt").write_text("Car 0 0 0 x 2 3 4 1 1 1 1 1 1 1\n")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--source", f"kitti:{root}", "--clients", "2", "--policy", "skip",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "skipped 1 item(s) under --policy skip:" in printed
    assert "000002.txt:1: non-numeric field 'x' (skipped 000002.png)" in printed
    validation = json.loads((out / "validation.json").read_text())
    assert validation["count"] == 1 and validation["issues"][0]["skipped"] == "000002.png"
    assert json.loads((out / "partition.json").read_text())["images"] == 5


def _not_utf8(root: Path) -> str:
    label = root / "training" / "label_2" / "000003.txt"
    label.write_bytes(label.read_bytes().replace(b"DontCare", b"DontC\xe4re"))
    return f"{label}:2: not UTF-8 text (byte 0xe4 at column 6)"


def _bomb(root: Path) -> str:
    image = write_bomb_png(root / "training" / "image_2" / "000001.png", 20000, 9000)
    return f"{image}: image too large to decode safely"


def _deep_json(root: Path) -> str:
    (root / "labels.json").write_text("[" * 50_000 + "]" * 50_000)
    return f"{root / 'labels.json'}: JSON nested too deeply to parse"


def _bdd_root_without_split(root: Path) -> str:
    return f"{root}: 2 BDD100K label files in {root / 'labels' / 'det_20'} (det_train.json, det_val.json)"


@pytest.mark.parametrize(
    ("fmt", "breaks"),
    [("kitti", _not_utf8), ("kitti", _bomb), ("bdd", _deep_json), ("bdd_root", _bdd_root_without_split)],
    ids=["label_not_utf8", "bomb_image", "deep_bdd_json", "bdd_root_without_split"],
)
def test_cli_bad_file_is_one_line_naming_it(request, fmt, breaks, tmp_path: Path, capsys) -> None:
    root = request.getfixturevalue(f"make_{fmt}")()
    expected = breaks(root)
    source = f"{'kitti' if fmt == 'kitti' else 'bdd100k'}:{root}"
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--source", source, "--clients", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fleetfl: error: {expected}"), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("below", ["sub", "sub/deeper"])
def test_cli_out_inside_a_file(make_kitti, tmp_path: Path, capsys, below: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    out = notes / below
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--source", f"kitti:{make_kitti()}", "--clients", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == f"fleetfl: error: --out {out}: {notes} is a file, not a folder; choose another path\n"
    assert notes.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kitti", "notes.txt"]


def test_cli_bdd100k_root_with_split(make_bdd_root, tmp_path: Path, capsys) -> None:
    root = make_bdd_root()
    out = tmp_path / "bdd"
    argv = ["data", "prepare", "--source", f"bdd100k:{root}", "--clients", "2", "--out", str(out)]
    assert main([*argv, "--bdd-split", "train"]) == 0
    report = json.loads((out / "partition.json").read_text())
    assert report["images"] == 3 and report["splits"]["eval"]["images"] == 1
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--source", "synthetic:4", "--clients", "1", "--out", str(out),
              "--bdd-split", "val"])  # fmt: skip
    assert "--bdd-split val: applies to bdd100k sources only, not synthetic" in capsys.readouterr().err
