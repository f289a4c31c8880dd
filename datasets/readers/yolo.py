"""Reader for YOLO-format exports with a ``data.yaml`` (ultralytics, Roboflow, Udacity style).

``yolo:PATH`` where PATH is the ``data.yaml`` or the folder holding it. Keys: ``names`` (list or
``{id: name}``; required), ``nc`` (optional, must agree), at least one of ``train``, ``val``,
``valid``, ``test`` (a folder of images, a ``.txt`` list of images, or a list of those), ``path``
(optional base folder). Split paths resolve like ultralytics does: against ``path`` (or the yaml's
folder), and Roboflow's ``../train/images`` falls back to ``train/images``. Labels live where
ultralytics looks: the last ``images`` folder of the image path replaced by ``labels``. All splits
are pooled (FleetFL makes its own split); the same image listed twice is read once.

FleetFL extension: an optional ``attributes.json`` beside the yaml maps image file names to
attributes (``{"0001.jpg": {"weather": "rainy", ...}}``), as the synthetic generator writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.classes import ClassMap
from datasets.errors import DataError, IssueLog
from datasets.files import image_size, read_json, read_text, read_yaml
from datasets.readers.common import ItemProblem, collect, pixel_box, resolve_class
from datasets.samples import IMAGE_SUFFIXES, Sample

SPLIT_KEYS: tuple[str, ...] = ("train", "val", "valid", "test")
ATTRIBUTES_FILE = "attributes.json"


def load_data_yaml(path: Path) -> tuple[Path, dict]:
    """The data.yaml path and its content, checked for the keys FleetFL needs."""
    yaml_path = path / "data.yaml" if path.is_dir() else path
    if not yaml_path.is_file():
        raise DataError(f"{yaml_path}: data.yaml not found")
    data = read_yaml(yaml_path, "data.yaml")
    if not isinstance(data, dict):
        raise DataError(f"{yaml_path}: expected a mapping with 'names' and 'train'/'val'/'test'")
    if "names" not in data:
        raise DataError(f"{yaml_path}: missing key 'names'")
    if not any(data.get(k) for k in SPLIT_KEYS):
        raise DataError(f"{yaml_path}: missing key: at least one of {', '.join(SPLIT_KEYS)} is required")
    return yaml_path, data


def source_names(yaml_path: Path, data: dict) -> list[str]:
    """Class names by id from ``names`` (list or dict with ids 0..n-1), checked against ``nc``."""
    names = data["names"]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{yaml_path}: field 'names' must map integer class ids to names") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{yaml_path}: field 'names' must have ids 0..{len(ids) - 1}, got {ids}")
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise DataError(f"{yaml_path}: field 'names' must be a non-empty list or {{id: name}} mapping")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{yaml_path}: field 'nc' is {data['nc']!r} but 'names' has {len(names)} entries")
    return [str(n) for n in names]


def _split_sources(yaml_path: Path, data: dict) -> list[tuple[str, Path]]:
    base = Path(data["path"]) if data.get("path") else yaml_path.parent
    if not base.is_absolute():
        base = yaml_path.parent / base
    sources = []
    for key in SPLIT_KEYS:
        entries = data.get(key)
        if not entries:
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            candidate = (base / str(entry)).resolve()
            if not candidate.exists() and str(entry).startswith("../"):
                candidate = (base / str(entry)[3:]).resolve()
            if not candidate.exists():
                raise DataError(
                    f"{yaml_path}: field '{key}': {entry!r} does not exist (looked at {candidate})"
                )
            sources.append((key, candidate))
    return sources


def _images_of(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    lines = [x.strip() for x in read_text(source, "image list").splitlines() if x.strip()]
    return [(source.parent / x).resolve() if not Path(x).is_absolute() else Path(x) for x in lines]


def label_path(image: Path) -> Path:
    """Where ultralytics looks for an image's label file (``.../images/x.jpg`` -> ``.../labels/x.txt``)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def parse_yolo_label(
    path: Path, names: list[str], class_map: ClassMap, width: int, height: int, yaml_path: Path
) -> list:
    """Canonical boxes of one YOLO label file; a bad line is an :class:`ItemProblem`."""
    boxes = []
    for lineno, line in enumerate(read_text(path, "label file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise ItemProblem(
                where, f"expected 5 fields (class x_center y_center width height), got {len(fields)}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise ItemProblem(where, f"non-numeric field in {line.strip()!r}") from None
        cls_id = values[0]
        if cls_id != int(cls_id) or not 0 <= cls_id < len(names):
            raise ItemProblem(where, f"class id {fields[0]} out of range 0..{len(names) - 1} ({yaml_path})")
        cls = resolve_class(class_map, names[int(cls_id)], f"{where} (names[{int(cls_id)}] in {yaml_path})")
        if cls is None:
            continue
        cx, cy, bw, bh = values[1] * width, values[2] * height, values[3] * width, values[4] * height
        corners = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        boxes.append(pixel_box(cls, corners, width, height, where))
    return boxes


def _attributes(yaml_path: Path) -> dict[str, dict[str, str]]:
    path = yaml_path.parent / ATTRIBUTES_FILE
    if not path.is_file():
        return {}
    data = read_json(path, ATTRIBUTES_FILE)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected {{image file name: {{attribute: value}}}}")
    return {k: {str(a): str(b) for a, b in v.items()} for k, v in data.items()}


def read_yolo(path: Path, class_map: ClassMap, log: IssueLog) -> list[Sample]:
    """Read a YOLO export (all of its splits) into canonical samples."""
    yaml_path, data = load_data_yaml(path)
    names = source_names(yaml_path, data)
    for i, name in enumerate(names):
        if not class_map.is_ignored(name):
            try:
                class_map.resolve(name)
            except KeyError:
                log.report(
                    f"{yaml_path}: names[{i}]",
                    f"unknown class name {name!r} (not in the {class_map.origin}; "
                    "map it with --classes MAP.yaml)",
                )
    attributes = _attributes(yaml_path)
    items: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    used: set[str] = set()
    for key, source in _split_sources(yaml_path, data):
        images = _images_of(source)
        for image in images:
            if image in seen:
                continue
            seen.add(image)
            name = image.stem if image.stem not in used else f"{key}-{image.stem}"
            used.add(name)
            items.append((name, image))
        if source.is_dir():  # a label without an image (only detectable for folder splits)
            labels_dir = label_path(source / "x.jpg").parent
            if labels_dir.is_dir() and labels_dir != source:
                stems = {p.stem for p in images}
                for label in sorted(labels_dir.glob("*.txt")):
                    if label.stem not in stems:
                        log.report(label, "label file has no image", skipped=label.name)

    def build(item: tuple[str, Path]) -> Sample:
        name, image = item
        if not image.is_file():
            raise ItemProblem(image, "image listed but missing")
        label = label_path(image)
        if not label.is_file():
            raise ItemProblem(image, f"image has no label file (expected {label})")
        width, height = image_size(image)
        boxes = parse_yolo_label(label, names, class_map, width, height, yaml_path)
        return Sample(name, image, width, height, tuple(boxes), dict(attributes.get(image.name, {})))

    return collect(items, build, log, label=lambda item: item[1].name)
