"""BDD100K detection reader (the det_20 / 2018 JSON: a list of frames with ``labels[].box2d``).

``bdd100k:PATH`` where PATH is

- the dataset root as unpacked (``bdd100k/`` with ``labels/det_20/det_train.json``,
  ``det_val.json`` and ``images/100k/<split>/``; the 2018 ``labels/bdd100k_labels_images_<split>.json``
  too): the split is chosen with ``--bdd-split train|val``;
- a label JSON file (images in ``images/100k/<split>`` of the official layout, else in ``images/``
  beside it, else beside it directly);
- a folder holding one ``*.json`` label file and ``images/``.

Each frame: ``{"name": "x.jpg", "attributes": {"weather": .., "scene": .., "timeofday": ..},
"labels": [{"category": "car", "box2d": {"x1": .., "y1": .., "x2": .., "y2": ..}}, ..]}``.
Image attributes are kept (they drive ``--split attribute:weather``). Labels without ``box2d``
(lanes, drivable areas) are allowed only for categories the class map drops.
"""

from __future__ import annotations

from pathlib import Path

from datasets.classes import ClassMap
from datasets.errors import DataError, IssueLog
from datasets.files import image_size, read_json
from datasets.readers.common import ItemProblem, collect, list_images, pixel_box, resolve_class
from datasets.samples import Sample

BOX_KEYS: tuple[str, ...] = ("x1", "y1", "x2", "y2")
#: Splits with detection labels (BDD100K publishes no test labels).
BDD_SPLITS: tuple[str, ...] = ("train", "val")
#: Where label files are looked for under a folder source, in this order.
LABEL_DIRS: tuple[str, ...] = (".", "labels", "labels/det_20")


def split_of(label_file: Path) -> str:
    """The split a label file names: ``det_val.json`` -> ``val``, ``*_images_train.json`` -> ``train``."""
    return label_file.stem.rsplit("_", 1)[-1]


def bdd_paths(path: Path, split: str | None = None) -> tuple[Path, Path]:
    """The label JSON and the image folder of a BDD100K source (``split``: see :data:`BDD_SPLITS`)."""
    if split is not None and split not in BDD_SPLITS:
        raise DataError(f"--bdd-split {split!r}: expected one of {', '.join(BDD_SPLITS)}")
    if path.is_dir():
        label_file, root = _label_file_in(path, split), path
    elif path.is_file():
        label_file, root = path, path.parent
        if split is not None and split_of(path) != split:
            raise DataError(
                f"{path}: --bdd-split {split} given, but this label file is not the {split} split"
            )
    else:
        raise DataError(f"{path}: BDD100K source not found")
    for images in (*_official_image_dirs(label_file), root / "images"):
        if images.is_dir():
            return label_file, images
    return label_file, root


def _label_file_in(folder: Path, split: str | None) -> Path:
    """The one label ``*.json`` of a folder source (with ``split``: the one named for it)."""
    for sub in LABEL_DIRS:
        candidates = sorted((folder / sub).glob("*.json"))
        if split is not None:
            candidates = [c for c in candidates if split_of(c) == split]
        if candidates:
            break
    if len(candidates) == 1:
        return candidates[0]
    places = ", ".join(f"{sub}/" for sub in LABEL_DIRS)
    if not candidates:
        wanted = f"label *_{split}.json" if split else "label *.json"
        raise DataError(f"{folder}: no BDD100K {wanted} in {places}")
    names = ", ".join(c.name for c in candidates)
    raise DataError(
        f"{folder}: {len(candidates)} BDD100K label files in {candidates[0].parent} ({names}): "
        f"choose one with --bdd-split {'|'.join(BDD_SPLITS)} or name the file in --source"
    )


def _official_image_dirs(label_file: Path) -> list[Path]:
    """Image folders of the official layout: ``labels/det_20/det_val.json`` -> ``images/100k/val``."""
    split = split_of(label_file)
    return [parent / "images" / "100k" / split for parent in label_file.parents[:4]]


def load_frames(label_file: Path) -> list:
    """The JSON list of frames (a parse error names the line)."""
    frames = read_json(label_file, "BDD100K label file")
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


def read_bdd100k(path: Path, class_map: ClassMap, log: IssueLog, split: str | None = None) -> list[Sample]:
    """Read a BDD100K detection JSON (of ``split`` under a dataset root) and its images into samples."""
    label_file, image_dir = bdd_paths(path, split)
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
        width, height = image_size(image)
        boxes = frame_boxes(frame, where, class_map, width, height)
        tags = {str(k): str(v) for k, v in attributes.items() if isinstance(v, str | int | float | bool)}
        return Sample(image.stem, image, width, height, tuple(boxes), tags)

    return collect(items, build, log, label=lambda item: item[2].name)
