"""Bad input: every problem names its file and line (or JSON field); ``strict`` writes nothing,
``skip`` leaves the item out and lists it in ``validation.json``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from datasets.errors import DataError
from datasets.prepare import prepare
from tests.fixtures.data import write_bomb_png


def _edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _yaml(root: Path, **changes) -> None:
    data = yaml.safe_load((root / "data.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (root / "data.yaml").write_text(yaml.safe_dump(data))


def _bdd(root: Path, edit: Callable[[list], object]) -> None:
    frames = json.loads((root / "labels.json").read_text())
    edit(frames)
    (root / "labels.json").write_text(json.dumps(frames))


K = "training/label_2"
KI = "training/image_2"


@dataclass(frozen=True)
class Case:
    """One bad input: the source fixture, how to break it, the expected message, skippable or not."""

    fmt: str
    mutate: Callable[[Path], object]
    match: str
    skippable: bool = True


def _kitti_line(stem: str, lineno: int, text: str) -> Callable[[Path], None]:
    return lambda root: _edit_line(root / K / f"{stem}.txt", lineno, text)


def _yolo_line(rel: str, lineno: int, text: str) -> Callable[[Path], None]:
    return lambda root: _edit_line(root / rel, lineno, text)


def _truncate(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes((root / rel).read_bytes()[:300])


def _bad_bytes(rel: str, lineno: int) -> Callable[[Path], None]:
    """Line ``lineno`` of ``rel`` gets a byte that is not UTF-8 (Latin-1 'é')."""

    def mutate(root: Path) -> None:
        lines = (root / rel).read_bytes().split(b"\n")
        lines[lineno - 1] = lines[lineno - 1].replace(b" ", b"\xe9 ", 1)
        (root / rel).write_bytes(b"\n".join(lines))

    return mutate


def _bomb(rel: str, width: int, height: int) -> Callable[[Path], None]:
    return lambda root: write_bomb_png(root / rel, width, height)


def _symlink_loop(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).unlink()
        (root / rel).symlink_to((root / rel).name)

    return mutate


def _yaml_alias_bomb(root: Path) -> None:
    """Append a "billion laughs" to data.yaml: 9 levels of 9 aliases each (9**9 names once expanded)."""
    levels = ["bomb0: &bomb0 [" + ", ".join(["car"] * 9) + "]"]
    levels += [f"bomb{i}: &bomb{i} [" + ", ".join([f"*bomb{i - 1}"] * 9) + "]" for i in range(1, 9)]
    with (root / "data.yaml").open("a") as out:
        out.write("\n".join(levels) + "\n")


def _bdd_label(frame: int, label: int, **update) -> Callable[[Path], None]:
    return lambda root: _bdd(root, lambda f: f[frame]["labels"][label].update(update))


KITTI_TAIL = " 1 1 1 1 1 1 1"
NAMES = ["unicorn", "car", "pedestrian", "biker", "truck"]

CASES: dict[str, Case] = {
    "kitti_field_count": Case("kitti", _kitti_line("000003", 1, "Car 0 0 0 1 2 3"),
                              r"000003\.txt:1: expected 15 fields, got 7"),
    "kitti_non_numeric": Case("kitti", _kitti_line("000002", 3, "Cyclist 0 0 0 abc 2 3 4" + KITTI_TAIL),
                              r"000002\.txt:3: non-numeric field 'abc'"),
    "kitti_unknown_class": Case("kitti", _kitti_line("000001", 1, "Spaceship" + " 1" * 14),
                                r"000001\.txt:1: unknown class name 'Spaceship'"),
    "kitti_zero_area": Case("kitti", _kitti_line("000000", 1, "Car 0 0 0 10 20 10 60" + KITTI_TAIL),
                            r"000000\.txt:1: box has zero or negative area"),
    "kitti_outside": Case("kitti", _kitti_line("000000", 1, "Car 0 0 0 10 20 150 60" + KITTI_TAIL),
                          r"000000\.txt:1: box .* is outside the 96x64 image"),
    "kitti_label_without_image": Case("kitti", lambda r: (r / KI / "000004.png").unlink(),
                                      r"000004\.txt: label file has no image"),
    "kitti_image_without_label": Case("kitti", lambda r: (r / K / "000005.txt").unlink(),
                                      r"000005\.png: image has no label file"),
    "kitti_corrupt_image": Case("kitti", lambda r: (r / KI / "000002.png").write_bytes(b"not an image"),
                                r"000002\.png: unreadable or corrupt image"),
    "kitti_truncated_image": Case("kitti", _truncate(f"{KI}/000001.png"),
                                  r"000001\.png: unreadable or corrupt image"),
    "kitti_no_folders": Case("kitti", lambda r: (r / KI).rename(r / "images"), "no KITTI 'image_2/'", False),
    "yolo_class_out_of_range": Case("yolo", _yolo_line("train/labels/t0.txt", 2, "7 0.5 0.5 0.1 0.1"),
                                    r"t0\.txt:2: class id 7 out of range 0\.\.4"),
    "yolo_polygon_line": Case("yolo", _yolo_line("valid/labels/v1.txt", 1, "1 0.1 0.1 0.2 0.1 0.2 0.2"),
                              r"v1\.txt:1: expected 5 fields \(class x_center .*\), got 7"),
    "yolo_non_numeric": Case("yolo", _yolo_line("test/labels/x0.txt", 2, "1 0.5 zero 0.1 0.1"),
                             r"x0\.txt:2: non-numeric field"),
    "yolo_outside": Case("yolo", _yolo_line("train/labels/t2.txt", 1, "4 0.9 0.5 0.6 0.5"),
                         r"t2\.txt:1: box .* is outside the 96x64 image"),
    "yolo_zero_size": Case("yolo", _yolo_line("train/labels/t2.txt", 1, "4 0.5 0.5 0 0.5"),
                           r"t2\.txt:1: box has zero or negative area"),
    "yolo_corrupt_image": Case("yolo", _truncate("valid/images/v0.jpg"),
                               r"v0\.jpg: unreadable or corrupt image"),
    "yolo_image_without_label": Case("yolo", lambda r: (r / "train/labels/t1.txt").unlink(),
                                     r"t1\.jpg: image has no label file"),
    "yolo_label_without_image": Case("yolo", lambda r: (r / "train/images/t1.jpg").unlink(),
                                     r"t1\.txt: label file has no image"),
    "yolo_unknown_name": Case("yolo", lambda r: _yaml(r, names=NAMES),
                              r"data\.yaml: names\[0\]: unknown class name 'unicorn'"),
    "yolo_missing_names": Case("yolo", lambda r: _yaml(r, names=None), r"data\.yaml: missing key 'names'",
                               False),
    "yolo_missing_splits": Case("yolo", lambda r: _yaml(r, train=None, val=None, test=None),
                                r"data\.yaml: missing key: at least one of train", False),
    "yolo_nc_mismatch": Case("yolo", lambda r: _yaml(r, nc=3), r"field 'nc' is 3 but 'names' has 5 entries",
                             False),
    "yolo_missing_split_dir": Case("yolo", lambda r: _yaml(r, val="../nope/images"),
                                   r"data\.yaml: field 'val': '\.\./nope/images' does not exist", False),
    "kitti_label_not_utf8": Case("kitti", _bad_bytes(f"{K}/000003.txt", 2),
                                 r"000003\.txt:2: not UTF-8 text \(byte 0xe9 at column 9\)"),
    "kitti_label_symlink_loop": Case("kitti", _symlink_loop(f"{K}/000001.txt"),
                                     r"000001\.txt: cannot read label file \(.*symbolic links"),
    "kitti_bomb_image": Case("kitti", _bomb(f"{KI}/000002.png", 20000, 9000),  # past PIL's error limit
                             r"000002\.png: image too large to decode safely \(more than 89478485 pixels"),
    "yolo_bomb_image": Case("yolo", _bomb("valid/images/v1.jpg", 10000, 9000),  # PIL only warns
                            r"v1\.jpg: image too large to decode safely"),
    "yolo_label_not_utf8": Case("yolo", _bad_bytes("train/labels/t1.txt", 2), r"t1\.txt:2: not UTF-8 text"),
    "yolo_yaml_not_utf8": Case("yolo", _bad_bytes("data.yaml", 3), r"data\.yaml:3: not UTF-8 text", False),
    "yolo_yaml_alias_bomb": Case("yolo", _yaml_alias_bomb,
                                 r"data\.yaml:\d+: not valid YAML \(aliases \(\*name\)", False),
    "yolo_deep_attributes": Case("yolo", lambda r: (r / "attributes.json").write_text("[" * 100_000),
                                 r"attributes\.json: JSON nested too deeply", False),
    "bdd_not_utf8": Case("bdd100k", _bad_bytes("labels.json", 4), r"labels\.json:4: not UTF-8 text", False),
    "bdd_deep_json": Case("bdd100k", lambda r: (r / "labels.json").write_text("[" * 100_000 + "]" * 100_000),
                          r"labels\.json: JSON nested too deeply", False),
    "bdd_invalid_json": Case("bdd100k", lambda r: (r / "labels.json").write_text('[\n{"name": "a.jpg",\n'),
                             r"labels\.json:3: not valid JSON", False),
    "bdd_not_a_list": Case("bdd100k", lambda r: (r / "labels.json").write_text('{"frames": []}'),
                           r"labels\.json: top level must be a JSON list of frames", False),
    "bdd_box_field": Case("bdd100k", lambda r: _bdd(r, lambda f: f[1]["labels"][0]["box2d"].pop("x2")),
                          r"labels\.json:\[1\]\.labels\[0\]\.box2d\.x2: must be a number, got None"),
    "bdd_box_type": Case("bdd100k", lambda r: _bdd(r, lambda f: f[2]["labels"][1]["box2d"].update(y1="5")),
                         r"labels\.json:\[2\]\.labels\[1\]\.box2d\.y1: must be a number, got '5'"),
    "bdd_no_category": Case("bdd100k", lambda r: _bdd(r, lambda f: f[0]["labels"][1].pop("category")),
                            r"labels\.json:\[0\]\.labels\[1\]\.category: missing or not a string"),
    "bdd_category_not_text": Case("bdd100k", _bdd_label(0, 0, category=1),
                                  r"labels\.json:\[0\]\.labels\[0\]\.category: missing or not a string"),
    "bdd_unknown_category": Case("bdd100k", _bdd_label(2, 0, category="ufo"),
                                 r"labels\.json:\[2\]\.labels\[0\]\.category: unknown class name 'ufo'"),
    "bdd_labels_not_list": Case("bdd100k", lambda r: _bdd(r, lambda f: f[3].update(labels={"a": 1})),
                                r"labels\.json:\[3\]\.labels: must be a list"),
    "bdd_label_without_image": Case("bdd100k", lambda r: (r / "images/c.jpg").unlink(),
                                    r"labels\.json:\[2\]\.name: label has no image"),
    "bdd_image_without_label": Case("bdd100k", lambda r: _bdd(r, lambda f: f.pop(4)),
                                    r"e\.jpg: image has no label in .*labels\.json"),
    "bdd_box_outside": Case("bdd100k", lambda r: _bdd(r, lambda f: f[0]["labels"][0]["box2d"].update(x2=400)),
                            r"labels\.json:\[0\]\.labels\[0\]\.box2d: box .* is outside the 96x64 image"),
}  # fmt: skip


@pytest.fixture
def source(make_kitti, make_yolo, make_bdd) -> Callable[[str], Path]:
    return {"kitti": make_kitti, "yolo": make_yolo, "bdd100k": make_bdd}.__getitem__


@pytest.mark.parametrize("name", list(CASES))
def test_strict_raises_and_writes_nothing(name: str, source, tmp_path: Path) -> None:
    case = CASES[name]
    root = source(case.fmt)()
    case.mutate(root)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=case.match):
        prepare(f"{case.fmt}:{root}", clients=2, out=out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary folder left"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.skippable])
def test_skip_leaves_the_item_out_and_reports_it(name: str, source, tmp_path: Path) -> None:
    case = CASES[name]
    root = source(case.fmt)()
    clean = prepare(f"{case.fmt}:{root}", clients=2, out=tmp_path / "clean")["images"]
    case.mutate(root)
    report = prepare(f"{case.fmt}:{root}", clients=2, out=tmp_path / "out", policy="skip")
    validation = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert validation["policy"] == "skip" and validation["count"] >= 1
    assert validation == report["validation"] and report["skipped"] == validation["count"]
    messages = [f"{i['where']}: {i['message']}" for i in validation["issues"]]
    assert any(re.search(case.match, m) for m in messages), messages
    assert report["images"] < clean, "the broken item is left out"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"source": "coco:/x"}, r"--source 'coco:/x': expected FORMAT:PATH"),
     ({"source": "kitti"}, "expected FORMAT:PATH"),
     ({"source": "kitti:/does/not/exist"}, "does not exist"),
     ({"source": "synthetic:many"}, "synthetic:N needs a positive integer"),
     ({"source": "synthetic:0"}, "synthetic:N needs a positive integer"),
     ({"clients": 0}, "--clients 0: must be an integer of at least 1"),
     ({"clients": 12}, "too few for 12 clients"),
     ({"split": "dirichlet:-2"}, "--split 'dirichlet:-2'"),
     ({"split": "attribute:weather"}, "no image has attribute 'weather'"),
     ({"eval_fraction": 0.0}, "--eval-fraction 0.0"),
     ({"eval_fraction": 1.5}, "--eval-fraction 1.5"),
     ({"policy": "lenient"}, "policy 'lenient'")],
)  # fmt: skip
def test_bad_options(make_kitti, tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"source": f"kitti:{make_kitti()}", "clients": 2, "out": tmp_path / "out", **kwargs}
    with pytest.raises(DataError, match=match):
        prepare(**args)
    assert not (tmp_path / "out").exists()


def test_empty_dataset(make_kitti, tmp_path: Path) -> None:
    root = make_kitti()
    for folder in (root / K, root / KI):
        for p in folder.iterdir():
            p.unlink()
    with pytest.raises(DataError, match="empty dataset"):
        prepare(f"kitti:{root}", clients=1, out=tmp_path / "out")


def test_skip_everything_is_still_an_empty_dataset(make_kitti, tmp_path: Path) -> None:
    root = make_kitti()
    for p in (root / KI).iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(DataError, match=r"empty dataset, no usable image \(6 items skipped"):
        prepare(f"kitti:{root}", clients=1, out=tmp_path / "out", policy="skip")
