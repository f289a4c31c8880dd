"""The partition report: images and boxes per class for the evaluation split and every client.

It is written as ``partition.json`` and printed as a table. Skew is measured as the mean total
variation distance between each client's class distribution (boxes per class) and the
distribution over all clients: 0 for identical mixes, 1 for disjoint ones.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from datasets.samples import Sample


def split_stats(samples: list[Sample], indices: list[int], classes: tuple[str, ...], folder: str) -> dict:
    """Counts for one split: images, boxes, per class images/boxes, attribute value counts, files."""
    boxes: Counter[int] = Counter()
    images: Counter[int] = Counter()
    attributes: dict[str, Counter[str]] = {}
    for i in indices:
        sample = samples[i]
        boxes.update(b.cls for b in sample.boxes)
        images.update(sample.classes)
        for key, value in sample.attributes.items():
            attributes.setdefault(key, Counter())[value] += 1
    return {
        "dir": folder,
        "images": len(indices),
        "boxes": sum(boxes.values()),
        "per_class": {name: {"images": images[c], "boxes": boxes[c]} for c, name in enumerate(classes)},
        "attributes": {k: dict(sorted(v.items())) for k, v in sorted(attributes.items())},
        "files": sorted(samples[i].name for i in indices),
    }


def class_distribution(stats: dict, classes: tuple[str, ...]) -> np.ndarray:
    """Boxes per class of a split, normalized (zeros when the split has no boxes)."""
    counts = np.array([stats["per_class"][c]["boxes"] for c in classes], float)
    return counts / counts.sum() if counts.sum() else counts


def mean_tv_distance(client_stats: list[dict], classes: tuple[str, ...]) -> float:
    """Mean total variation distance of client class distributions to the pooled client distribution."""
    pooled = np.array([sum(s["per_class"][c]["boxes"] for s in client_stats) for c in classes], float)
    if not pooled.sum():
        return 0.0
    pooled /= pooled.sum()
    return float(np.mean([0.5 * np.abs(class_distribution(s, classes) - pooled).sum() for s in client_stats]))


def format_table(report: dict) -> str:
    """The partition report as a fixed-width table (boxes per class; images in the first columns)."""
    classes = [
        c for c in report["classes"] if any(s["per_class"][c]["boxes"] for s in report["splits"].values())
    ]
    head = ["split", "images", "boxes", *classes]
    rows = [
        [name, str(s["images"]), str(s["boxes"]), *(str(s["per_class"][c]["boxes"]) for c in classes)]
        for name, s in report["splits"].items()
    ]
    attribute = report["split"].partition("attribute:")[2]
    if attribute:  # which attribute values each split holds
        head.append(attribute)
        for row, s in zip(rows, report["splits"].values(), strict=True):
            row.append(" ".join(f"{v}={n}" for v, n in s["attributes"].get(attribute, {}).items()))
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    numeric = range(1, len(head) - bool(attribute))  # right-aligned columns

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (v.rjust(w) if k in numeric else v.ljust(w) for k, (v, w) in pairs)
        return "  ".join(padded).rstrip()

    lines = [
        f"source {report['source']}  split {report['split']}  seed {report['seed']}  "
        f"clients {report['clients']}  skew (mean TV distance) {report['skew']['mean_tv_distance']:.3f}",
        line(head),
        *(line(row) for row in rows),
    ]
    lines.append("(boxes per class)")
    return "\n".join(lines)
