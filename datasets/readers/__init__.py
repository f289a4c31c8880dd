"""Source readers: each turns one dataset format into canonical :class:`~datasets.samples.Sample` lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets.classes import ClassMap
from datasets.errors import IssueLog
from datasets.readers.bdd100k import read_bdd100k
from datasets.readers.kitti import read_kitti
from datasets.readers.yolo import read_yolo
from datasets.samples import Sample

#: ``FORMAT`` of ``--source FORMAT:PATH`` -> reader.
READERS: dict[str, Callable[[Path, ClassMap, IssueLog], list[Sample]]] = {
    "kitti": read_kitti,
    "bdd100k": read_bdd100k,
    "yolo": read_yolo,
}

__all__ = ["READERS", "read_bdd100k", "read_kitti", "read_yolo"]
