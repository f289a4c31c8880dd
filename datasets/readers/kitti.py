"""KITTI object-detection reader (``label_2``: 15 fields a line; the 2D box is fields 5-8).

``kitti:PATH`` where PATH holds ``image_2/`` and ``label_2/`` directly or under ``training/``.
``DontCare`` regions are ignored; other names go through the class map (``Misc`` is dropped by
default). Only the 2D box (left, top, right, bottom in pixels) is used.
"""

from __future__ import annotations

from pathlib import Path

from datasets.classes import ClassMap
from datasets.errors import DataError, IssueLog
from datasets.files import image_size, read_text
from datasets.readers.common import (
    ItemProblem,
    collect,
    list_images,
    pair_by_stem,
    pixel_box,
    resolve_class,
)
from datasets.samples import Sample

KITTI_FIELDS = 15


def kitti_dirs(root: Path) -> tuple[Path, Path]:
    """The ``image_2`` and ``label_2`` folders of a KITTI root."""
    for base in (root, root / "training"):
        if (base / "image_2").is_dir() and (base / "label_2").is_dir():
            return base / "image_2", base / "label_2"
    raise DataError(f"{root}: no KITTI 'image_2/' and 'label_2/' folders here or under 'training/'")


def parse_kitti_label(path: Path, class_map: ClassMap, width: int, height: int) -> list:
    """The canonical boxes of one ``label_2`` file; a bad line is an :class:`ItemProblem`."""
    boxes = []
    for lineno, line in enumerate(read_text(path, "label file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != KITTI_FIELDS:
            raise ItemProblem(where, f"expected {KITTI_FIELDS} fields, got {len(fields)}")
        try:
            numbers = [float(f) for f in fields[1:]]
        except ValueError:
            bad = next(f for f in fields[1:] if not _is_number(f))
            raise ItemProblem(where, f"non-numeric field {bad!r}") from None
        if class_map.is_ignored(fields[0]):
            continue
        cls = resolve_class(class_map, fields[0], where)
        if cls is None:
            continue
        boxes.append(pixel_box(cls, numbers[3:7], width, height, where))
    return boxes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_kitti(root: Path, class_map: ClassMap, log: IssueLog) -> list[Sample]:
    """Read a KITTI training folder into canonical samples."""
    image_dir, label_dir = kitti_dirs(root)
    labels = {p.stem: p for p in sorted(label_dir.glob("*.txt"))}
    pairs = pair_by_stem(list_images(image_dir), labels, log)

    def build(pair: tuple[str, Path, Path]) -> Sample:
        stem, image, label = pair
        width, height = image_size(image)
        boxes = parse_kitti_label(label, class_map, width, height)
        return Sample(stem, image, width, height, tuple(boxes))

    return collect(pairs, build, log, label=lambda pair: pair[1].name)
