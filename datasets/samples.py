"""The canonical in-memory form every reader produces: images with pixel boxes and attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Image suffixes FleetFL accepts (all of them are read by ultralytics).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: How far (pixels) a box may stick out of its image and still be clipped instead of rejected.
EDGE_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class Box:
    """One object: canonical class id and corners in pixels (left, top, right, bottom)."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float

    def yolo_line(self, width: int, height: int) -> str:
        """The box as a YOLO label line (class, centre x/y, width, height; normalized)."""
        cx = (self.x1 + self.x2) / 2 / width
        cy = (self.y1 + self.y2) / 2 / height
        bw = (self.x2 - self.x1) / width
        bh = (self.y2 - self.y1) / height
        return f"{self.cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"


@dataclass(frozen=True)
class Sample:
    """One image of the canonical dataset.

    ``name`` is the output file stem (unique in a dataset); ``attributes`` are image-level tags
    such as BDD100K's ``weather``, ``scene`` and ``timeofday``.
    """

    name: str
    image: Path
    width: int
    height: int
    boxes: tuple[Box, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> set[int]:
        """Class ids present in the image."""
        return {b.cls for b in self.boxes}


def check_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[float, ...]:
    """Validate pixel corners against the image and clip them by at most :data:`EDGE_TOLERANCE_PX`.

    Raises:
        ValueError: zero or negative area, or the box leaves the image (message names the values).
    """
    if not x2 > x1 or not y2 > y1:
        raise ValueError(
            f"box has zero or negative area (left {x1:g}, top {y1:g}, right {x2:g}, bottom {y2:g})"
        )
    tol = EDGE_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise ValueError(
            f"box (left {x1:g}, top {y1:g}, right {x2:g}, bottom {y2:g}) is outside the "
            f"{width}x{height} image"
        )
    x1, y1 = max(x1, 0.0), max(y1, 0.0)
    x2, y2 = min(x2, float(width)), min(y2, float(height))
    if not x2 > x1 or not y2 > y1:
        raise ValueError("box has zero area inside the image")
    return x1, y1, x2, y2
