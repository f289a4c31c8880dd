"""Helpers shared by the readers: file pairing, per-item problems, image checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from datasets.classes import ClassMap
from datasets.errors import FileProblem, IssueLog
from datasets.samples import IMAGE_SUFFIXES, Box, Sample, check_box


class ItemProblem(Exception):
    """A problem with one item (an image and its labels); under ``skip`` the item is left out."""

    def __init__(self, where: str | Path, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = str(where)
        self.message = message


def list_images(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem, sorted by name."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def pair_by_stem(
    images: dict[str, Path], labels: dict[str, Path], log: IssueLog
) -> list[tuple[str, Path, Path]]:
    """Match images and label files by stem; a label without an image, or the reverse, is a problem."""
    for stem in sorted(set(labels) - set(images)):
        log.report(labels[stem], "label file has no image", skipped=labels[stem].name)
    pairs = []
    for stem in sorted(images):
        if stem not in labels:
            log.report(images[stem], "image has no label file", skipped=images[stem].name)
            continue
        pairs.append((stem, images[stem], labels[stem]))
    return pairs


def pixel_box(cls: int, corners: Iterable[float], width: int, height: int, where: str | Path) -> Box:
    """A validated :class:`Box` from pixel corners; problems name ``where``."""
    try:
        x1, y1, x2, y2 = check_box(*corners, width, height)
    except ValueError as exc:
        raise ItemProblem(where, str(exc)) from exc
    return Box(cls, x1, y1, x2, y2)


def resolve_class(class_map: ClassMap, name: str, where: str | Path) -> int | None:
    """Canonical id of a source class name (None: dropped); an unknown name is an :class:`ItemProblem`."""
    try:
        return class_map.resolve(name)
    except KeyError:
        raise ItemProblem(
            where,
            f"unknown class name {name!r} (not in the {class_map.origin}; map it with --classes MAP.yaml)",
        ) from None


def collect(
    items: Iterable, build: Callable[..., Sample | None], log: IssueLog, label: Callable
) -> list[Sample]:
    """Run ``build(item)`` for every item; an :class:`ItemProblem` or a :class:`FileProblem` (an
    unreadable image or label file) is reported and the item skipped.

    ``label(item)`` names the skipped item in the report.
    """
    samples = []
    for item in items:
        try:
            sample = build(item)
        except (ItemProblem, FileProblem) as problem:
            log.report(problem.where, problem.message, skipped=label(item))
            continue
        if sample is not None:
            samples.append(sample)
    return samples
