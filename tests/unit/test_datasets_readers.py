"""Readers: real KITTI frames, tiny BDD100K and YOLO fixtures, class maps."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from datasets.classes import DEFAULT_CLASSES, load_class_map
from datasets.errors import DataError, IssueLog
from datasets.readers import read_bdd100k, read_kitti, read_yolo
from tests.fixtures.data import BDD_ROOT_LABELS

CLS = {name: i for i, name in enumerate(DEFAULT_CLASSES)}


def _counts(samples) -> Counter:
    return Counter(DEFAULT_CLASSES[b.cls] for s in samples for b in s.boxes)


def test_kitti_real_frames(kitti_tiny_dir: Path) -> None:
    samples = read_kitti(kitti_tiny_dir, load_class_map(None), IssueLog())
    assert len(samples) == 75
    # README counts: Car 209, Van 25, Pedestrian 36, Person_sitting 5, Cyclist 14, Truck 10, Tram 9;
    # Misc 3 dropped by the default map; 188 DontCare regions ignored.
    assert _counts(samples) == {"car": 234, "pedestrian": 41, "cyclist": 14, "truck": 10, "train": 9}
    first = samples[0]
    assert first.name == "000000" and (first.width, first.height) == (1224, 370)
    box = first.boxes[0]
    assert (box.cls, box.x1, box.y1, box.x2, box.y2) == (CLS["pedestrian"], 712.40, 143.00, 810.73, 307.92)
    assert all(0 <= b.x1 < b.x2 <= s.width and 0 <= b.y1 < b.y2 <= s.height for s in samples for b in s.boxes)


def test_kitti_user_map_with_own_classes(kitti_tiny_dir: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "map.yaml"
    groups = {"vehicle": ["Car", "Van", "Truck", "Tram"],
              "person": ["Pedestrian", "Person_sitting", "Cyclist"], "other": ["Misc"]}  # fmt: skip
    mapping.write_text(
        yaml.safe_dump({"classes": list(groups), "map": {n: g for g, ns in groups.items() for n in ns}})
    )
    class_map = load_class_map(mapping)
    samples = read_kitti(kitti_tiny_dir, class_map, IssueLog())
    counts = Counter(class_map.classes[b.cls] for s in samples for b in s.boxes)
    assert counts == {"vehicle": 234 + 10 + 9, "person": 41 + 14, "other": 3}


def test_bdd100k_boxes_and_attributes(make_bdd) -> None:
    samples = {s.name: s for s in read_bdd100k(make_bdd(), load_class_map(None), IssueLog())}
    assert sorted(samples) == ["a", "b", "c", "d", "e"]
    assert samples["a"].attributes == {"weather": "clear", "scene": "city street", "timeofday": "daytime"}
    assert [DEFAULT_CLASSES[b.cls] for b in samples["a"].boxes] == ["car", "traffic_light"], "lane dropped"
    assert [DEFAULT_CLASSES[b.cls] for b in samples["b"].boxes] == ["truck", "cyclist", "bicycle"]
    assert [DEFAULT_CLASSES[b.cls] for b in samples["d"].boxes] == ["bus", "motorcycle", "train"]
    assert samples["e"].boxes == ()
    car = samples["a"].boxes[0]
    assert (car.x1, car.y1, car.x2, car.y2) == (5, 10, 40, 40)


def test_bdd100k_json_file_as_source(make_bdd) -> None:
    root = make_bdd()
    assert len(read_bdd100k(root / "labels.json", load_class_map(None), IssueLog())) == 5


def test_bdd100k_official_layout(make_bdd) -> None:
    root = make_bdd()  # -> bdd/labels/det_20/det_val.json and bdd/images/100k/val/*.jpg
    (root / "labels" / "det_20").mkdir(parents=True)
    (root / "labels.json").rename(root / "labels" / "det_20" / "det_val.json")
    (root / "images").rename(root / "val")
    (root / "images" / "100k").mkdir(parents=True)
    (root / "val").rename(root / "images" / "100k" / "val")
    samples = read_bdd100k(root / "labels" / "det_20" / "det_val.json", load_class_map(None), IssueLog())
    assert len(samples) == 5 and samples[0].image.parent == root / "images" / "100k" / "val"


@pytest.mark.parametrize("release", list(BDD_ROOT_LABELS))
def test_bdd100k_dataset_root_with_split(make_bdd_root, release: str) -> None:
    root = make_bdd_root(release)
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d", "e"])):
        samples = read_bdd100k(root, load_class_map(None), IssueLog(), split=split)
        assert [s.name for s in samples] == names
        assert {s.image.parent for s in samples} == {root / "images" / "100k" / split}
    with pytest.raises(
        DataError, match=r"bdd100k: 2 BDD100K label files in .*labels.* choose one with --bdd-split"
    ):
        read_bdd100k(root, load_class_map(None), IssueLog())


def test_bdd100k_split_errors(make_bdd_root) -> None:
    root = make_bdd_root()
    val = root / "labels" / "det_20" / "det_val.json"
    with pytest.raises(
        DataError, match=r"det_val\.json: --bdd-split train given, but this label file is not"
    ):
        read_bdd100k(val, load_class_map(None), IssueLog(), split="train")
    with pytest.raises(DataError, match=r"--bdd-split 'test': expected one of train, val"):
        read_bdd100k(root, load_class_map(None), IssueLog(), split="test")
    val.unlink()
    with pytest.raises(
        DataError, match=r"bdd100k: no BDD100K label \*_val\.json in \./, labels/, labels/det_20/"
    ):
        read_bdd100k(root, load_class_map(None), IssueLog(), split="val")
    assert len(read_bdd100k(root, load_class_map(None), IssueLog())) == 3, "the one label file left"


def test_image_size_check_does_not_rely_on_pil_global(tmp_path: Path, monkeypatch) -> None:
    """ultralytics' ``compress_one_image`` sets ``PIL.Image.MAX_IMAGE_PIXELS = None`` process-wide."""
    from PIL import Image

    from datasets.errors import FileProblem
    from datasets.files import image_size
    from tests.fixtures.data import write_bomb_png

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = write_bomb_png(tmp_path / "bomb.png", 20000, 9000)
    with pytest.raises(
        FileProblem, match=r"bomb\.png: image too large to decode safely \(20000x9000 pixels, more"
    ):
        image_size(bomb)
    assert image_size(write_bomb_png(tmp_path / "small.png", 300, 200)) == (300, 200)


@pytest.mark.parametrize("names_as_dict", [False, True])
def test_yolo_roboflow_export(make_yolo, names_as_dict: bool) -> None:
    samples = read_yolo(make_yolo(names_as_dict=names_as_dict), load_class_map(None), IssueLog())
    assert sorted(s.name for s in samples) == ["t0", "t1", "t2", "t3", "v0", "v1", "x0"], "all splits pooled"
    assert _counts(samples) == {"car": 4, "cyclist": 1, "pedestrian": 2, "traffic_light": 1, "truck": 2}
    t0 = next(s for s in samples if s.name == "t0")
    box = t0.boxes[0]
    assert (box.cls, box.x1, box.y1, box.x2, box.y2) == pytest.approx((CLS["car"], 28.8, 19.2, 67.2, 44.8))


def test_yolo_synthetic_attributes(synthetic_dir: Path) -> None:
    samples = read_yolo(synthetic_dir, load_class_map(None), IssueLog())
    assert len(samples) == 24, "train and val name the same folder: read once"
    assert all({"weather", "timeofday", "scene"} <= set(s.attributes) for s in samples)


def test_yolo_duplicate_stems_across_splits_get_unique_names(make_yolo) -> None:
    root = make_yolo()
    (root / "valid" / "images" / "v0.jpg").rename(root / "valid" / "images" / "t0.jpg")
    (root / "valid" / "labels" / "v0.txt").rename(root / "valid" / "labels" / "t0.txt")
    names = sorted(s.name for s in read_yolo(root, load_class_map(None), IssueLog()))
    assert "t0" in names and "val-t0" in names


def test_user_map_on_top_of_default(make_yolo, tmp_path: Path) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text("biker: null\ntrafficLight-Red: traffic_sign\n")
    samples = read_yolo(make_yolo(), load_class_map(mapping), IssueLog())
    assert _counts(samples) == {"car": 4, "pedestrian": 2, "traffic_sign": 1, "truck": 2}


@pytest.mark.parametrize(
    ("content", "match"),
    [("car: plane\n", r"map\.yaml: field 'car': unknown canonical class 'plane'"),
     ("[car, truck]\n", "must be a non-empty mapping"),
     ("car: [unclosed\n", r"map\.yaml:2: not valid YAML"),
     ("Car: &c car\nVan: *c\n", r"map\.yaml:2: not valid YAML \(aliases \(\*name\) are not accepted\)"),
     ("classes: [a, a]\nmap: {}\n", "lists a class twice"),
     ("classes: [a]\nmap: {x: b}\n", r"field 'map\.x': unknown canonical class 'b'")],
)  # fmt: skip
def test_bad_class_map(tmp_path: Path, content: str, match: str) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text(content)
    with pytest.raises(DataError, match=match):
        load_class_map(mapping)
