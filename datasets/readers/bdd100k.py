"""BDD100K detection reader (the det_20 / 2018 JSON: a list of frames with ``labels[].box2d``).

``bdd100k:PATH`` where PATH is the label JSON file (images in ``images/`` beside it, in the official
layout's ``images/100k/<split>`` for ``labels/det_20/det_<split>.json``, or beside it directly) or a
folder holding one ``*.json`` label file and ``images/``. Each frame:
``{"name": "x.jpg", "attributes": {"weather": .., "scene": .., "timeofday": ..},
"labels": [{"category": "car", "box2d": {"x1": .., "y1": .., "x2": .., "y2": ..}}, ..]}``.
Image attributes are kept (they drive ``--split attribute:weather``). Labels without ``box2d``
(lanes, drivable areas) are allowed only for categories the class map drops.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets.classes import ClassMap
from datasets.errors import DataError, IssueLog
from datasets.readers.common import ItemProblem, checked_size, collect, list_images, pixel_box, resolve_class
from datasets.samples import Sample

BOX_KEYS: tuple[str, ...] = ("x1", "y1", "x2", "y2")


def bdd_paths(path: Path) -> tuple[Path, Path]:
    """The label JSON and the image folder of a BDD100K source."""
    if path.is_dir():
        candidates = sorted(path.glob("*.json")) or sorted((path / "labels").glob("*.json"))
        if len(candidates) != 1:
            raise DataError(
                f"{path}: expected exactly one BDD100K label *.json here or in labels/, "
                f"found {len(candidates)}"
            )
        label_file, root = candidates[0], path
    elif path.is_file():
        label_file, root = path, path.parent
    else:
        raise DataError(f"{path}: BDD100K source not found")
    for images in (root / "images", *_official_image_dirs(label_file)):
        if images.is_dir():
            return label_file, images
    return label_file, root


def _official_image_dirs(label_file: Path) -> list[Path]:
    """Image folders of the official layout: ``labels/det_20/det_val.json`` -> ``images/100k/val``."""
    split = label_file.stem.rsplit("_", 1)[-1]  # det_val -> val, bdd100k_labels_images_train -> train
    return [parent / "images" / "100k" / split for parent in label_file.parents[1:4]]


def load_frames(label_file: Path) -> list:
    """The JSON list of frames (a parse error names the line)."""
    try:
        frames = json.loads(label_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{label_file}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(frames, list):
        raise DataError(f"{label_file}: top level must be a JSON list of frames, got {type(frames).__name__}")
    return frames


def frame_boxes(frame: dict, where: str, class_map: ClassMap, width: int, height: int) -> list:
    """Canonical boxes of one frame; a bad field is an :class:`ItemProblem` naming its JSON path."""
    labels = frame.get("labels") or []
    if not isinstance(labels, list):
        raise ItemProblem(f"{where}.labels", "must be a list")
    boxes = []
    for j, label in enumerate(labels):
        at = f"{where}.labels[{j}]"
        if not isinstance(label, dict) or not isinstance(label.get("category"), str):
            raise ItemProblem(f"{at}.category", "missing or not a string")
        cls = resolve_class(class_map, label["category"], f"{at}.category")
        if cls is None:
            continue
        box = label.get("box2d")
        if not isinstance(box, dict):
            raise ItemProblem(f"{at}.box2d", f"missing or not an object (category {label['category']!r})")
        for key in BOX_KEYS:
            value = box.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ItemProblem(f"{at}.box2d.{key}", f"must be a number, got {value!r}")
        boxes.append(pixel_box(cls, [float(box[k]) for k in BOX_KEYS], width, height, f"{at}.box2d"))
    return boxes


def read_bdd100k(path: Path, class_map: ClassMap, log: IssueLog) -> list[Sample]:
    """Read a BDD100K detection JSON and its images into canonical samples."""
    label_file, image_dir = bdd_paths(path)
    frames = load_frames(label_file)
    images = list_images(image_dir)
    by_name = {p.name: p for p in images.values()}
    named = set()
    items = []
    for i, frame in enumerate(frames):
        where = f"{label_file}:[{i}]"
        name = frame.get("name") if isinstance(frame, dict) else None
        if not isinstance(name, str) or not name:
            log.report(f"{where}.name", "frame without an image name", skipped=f"frame {i}")
            continue
        if name in named:
            log.report(f"{where}.name", f"image {name!r} is labelled twice", skipped=f"frame {i}")
            continue
        named.add(name)
        if name not in by_name:
            log.report(f"{where}.name", f"label has no image ({image_dir / name} not found)", skipped=name)
            continue
        items.append((i, frame, by_name[name]))
    for name in sorted(set(by_name) - named):
        log.report(by_name[name], f"image has no label in {label_file}", skipped=name)

    def build(item: tuple[int, dict, Path]) -> Sample:
        i, frame, image = item
        where = f"{label_file}:[{i}]"
        attributes = frame.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ItemProblem(f"{where}.attributes", "must be an object")
        width, height = checked_size(image)
        boxes = frame_boxes(frame, where, class_map, width, height)
        tags = {str(k): str(v) for k, v in attributes.items() if isinstance(v, str | int | float | bool)}
        return Sample(image.stem, image, width, height, tuple(boxes), tags)

    return collect(items, build, log, label=lambda item: item[2].name)
