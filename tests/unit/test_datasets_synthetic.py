"""Synthetic driving scenes: seeded, valid YOLO labels, every drawn class present, attributes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datasets.classes import DEFAULT_CLASSES
from datasets.errors import DataError
from datasets.synthetic import TIMES, WEATHERS, generate_scenes, render_scene

DRAWN = {"car", "truck", "bus", "pedestrian", "cyclist", "traffic_light", "traffic_sign"}


def _labels(root: Path) -> dict[str, list[list[float]]]:
    return {
        p.stem: [list(map(float, line.split())) for line in p.read_text().splitlines()]
        for p in sorted((root / "labels").glob("*.txt"))
    }


def test_layout_and_data_yaml(synthetic_dir: Path) -> None:
    data = yaml.safe_load((synthetic_dir / "data.yaml").read_text())
    assert data == {
        "train": "images",
        "val": "images",
        "nc": len(DEFAULT_CLASSES),
        "names": dict(enumerate(DEFAULT_CLASSES)),
    }
    images = sorted(p.stem for p in (synthetic_dir / "images").glob("*.jpg"))
    assert images == sorted(_labels(synthetic_dir)) and len(images) == 24
    with Image.open(synthetic_dir / "images" / "000000.jpg") as img:
        assert img.size == (160, 160)


def test_labels_are_valid_and_learnable_sizes(synthetic_dir: Path) -> None:
    labels = _labels(synthetic_dir)
    rows = np.array([row for rows in labels.values() for row in rows])
    assert all(rows_ for rows_ in labels.values()), "every scene has objects"
    assert rows.shape[1] == 5
    assert set(rows[:, 0].astype(int)) <= set(range(len(DEFAULT_CLASSES)))
    cx, cy, w, h = rows[:, 1:].T
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    assert (w * 160 >= 2.5).all() and (h * 160 >= 2.5).all(), "objects stay visible at 160 px"


def test_classes_and_attributes_cover_the_design(tmp_path: Path) -> None:
    root = generate_scenes(tmp_path / "s", 80, seed=3, imgsz=96)
    seen = {DEFAULT_CLASSES[int(r[0])] for rows in _labels(root).values() for r in rows}
    assert seen == DRAWN
    attributes = json.loads((root / "attributes.json").read_text())
    assert len(attributes) == 80
    assert {a["weather"] for a in attributes.values()} == set(WEATHERS)
    assert {a["timeofday"] for a in attributes.values()} == set(TIMES)


def test_seeded_and_independent_of_n(tmp_path: Path) -> None:
    a = generate_scenes(tmp_path / "a", 3, seed=7, imgsz=96)
    b = generate_scenes(tmp_path / "b", 5, seed=7, imgsz=96)
    c = generate_scenes(tmp_path / "c", 3, seed=8, imgsz=96)
    for name in ("000000", "000002"):
        assert (a / "images" / f"{name}.jpg").read_bytes() == (b / "images" / f"{name}.jpg").read_bytes()
        assert (a / "labels" / f"{name}.txt").read_text() == (b / "labels" / f"{name}.txt").read_text()
    assert (a / "images" / "000000.jpg").read_bytes() != (c / "images" / "000000.jpg").read_bytes()


def test_night_is_darker_than_day() -> None:
    levels: dict[str, list[float]] = {"daytime": [], "night": []}
    for i in range(40):
        img, _, attributes = render_scene(np.random.default_rng([0, i]), 96)
        if attributes["timeofday"] in levels:
            levels[attributes["timeofday"]].append(float(img.mean()))
    assert np.mean(levels["night"]) < 0.7 * np.mean(levels["daytime"])


def test_refuses_bad_arguments_and_non_empty_output(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 1"):
        generate_scenes(tmp_path / "x", 0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_scenes(tmp_path / "full", 2)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"], "no temporary folder left behind"
