"""Seeded partitioners: a held-out evaluation split, then IID, Dirichlet or attribute client shards.

* ``iid``: shuffle and cut into K near-equal shards.
* ``dirichlet:ALPHA``: label each image by its rarest class (the class with the fewest boxes in the
  whole dataset among those it contains; images without boxes form their own group), then split
  every group over the clients with proportions drawn from Dirichlet(ALPHA, ..., ALPHA). Small
  ALPHA gives skewed class mixes, large ALPHA approaches IID.
* ``attribute:NAME``: a natural split by an image attribute (BDD100K ``weather``, ``timeofday``,
  ``scene``; the synthetic scenes carry the same). With at least K values, whole value groups go to
  clients (largest group to the client with the fewest images); with fewer values, each value gets
  a share of the clients in proportion to its size and is split evenly among them. Images without
  the attribute form the group ``undefined``.

A client left empty by chance receives one image from the largest client (reported in the
partition's ``moved`` count). All randomness comes from one ``numpy`` generator seeded by the user.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from datasets.errors import DataError
from datasets.samples import Sample

UNDEFINED = "undefined"
#: Attribute-name spellings accepted for the BDD100K ``timeofday`` key.
ATTRIBUTE_ALIASES = {"time_of_day": "timeofday", "time-of-day": "timeofday"}


@dataclass(frozen=True)
class SplitSpec:
    """A parsed ``--split`` value."""

    kind: str
    alpha: float | None = None
    attribute: str | None = None

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "attribute":
            return f"attribute:{self.attribute}"
        return self.kind


def parse_split(spec: str) -> SplitSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` (ALPHA > 0) or ``attribute:NAME``.

    Raises:
        DataError: anything else.
    """
    text = str(spec).strip()
    kind, _, arg = text.partition(":")
    if kind == "iid" and not arg:
        return SplitSpec("iid")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if not alpha > 0 or not np.isfinite(alpha):
            raise DataError(f"--split {text!r}: ALPHA of dirichlet:ALPHA must be a positive number")
        return SplitSpec("dirichlet", alpha=alpha)
    if kind == "attribute":
        if not arg.strip():
            raise DataError(f"--split {text!r}: attribute:NAME needs an attribute name (e.g. weather)")
        name = arg.strip()
        return SplitSpec("attribute", attribute=ATTRIBUTE_ALIASES.get(name, name))
    raise DataError(f"--split {text!r}: expected iid, dirichlet:ALPHA or attribute:NAME")


def hold_out(n: int, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Indices of the evaluation split (``round(fraction*n)``, at least 1) and of the rest."""
    order = rng.permutation(n)
    k = min(n - 1, max(1, round(fraction * n)))
    return sorted(order[:k].tolist()), sorted(order[k:].tolist())


def rarest_class_labels(samples: list[Sample]) -> list[int]:
    """Per image, its rarest class by total box count (-1 for images without boxes)."""
    counts = Counter(b.cls for s in samples for b in s.boxes)
    return [min(s.classes, key=lambda c: (counts[c], c)) if s.boxes else -1 for s in samples]


def _iid(indices: list[int], clients: int, rng: np.random.Generator) -> list[list[int]]:
    shuffled = rng.permutation(indices)
    return [sorted(part.tolist()) for part in np.array_split(shuffled, clients)]


def _dirichlet(
    indices: list[int], labels: list[int], clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    shards: list[list[int]] = [[] for _ in range(clients)]
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(labels[i], []).append(i)
    for label in sorted(groups):
        members = rng.permutation(groups[label])
        proportions = rng.dirichlet([alpha] * clients)
        cuts = (np.cumsum(proportions)[:-1] * len(members)).round().astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            shards[client].extend(part.tolist())
    return [sorted(s) for s in shards]


def _by_attribute(
    indices: list[int], values: list[str], clients: int, rng: np.random.Generator
) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(values[i], []).append(i)
    ordered = sorted(groups, key=lambda v: (-len(groups[v]), v))
    shards: list[list[int]] = [[] for _ in range(clients)]
    if len(ordered) >= clients:
        for value in ordered:
            target = min(range(clients), key=lambda c: (len(shards[c]), c))
            shards[target].extend(groups[value])
        return [sorted(s) for s in shards]
    share = dict.fromkeys(ordered, 1)
    for _ in range(clients - len(ordered)):
        value = max(ordered, key=lambda v: (len(groups[v]) / share[v], -ordered.index(v)))
        share[value] += 1
    client = 0
    for value in ordered:
        for part in np.array_split(rng.permutation(groups[value]), share[value]):
            shards[client] = sorted(part.tolist())
            client += 1
    return shards


def _fill_empty(shards: list[list[int]], rng: np.random.Generator) -> int:
    moved = 0
    for shard in shards:
        if not shard:
            donor = max(shards, key=len)
            shard.append(donor.pop(int(rng.integers(len(donor)))))
            moved += 1
    return moved


def attribute_values(samples: list[Sample], name: str) -> list[str]:
    """Each image's value of attribute ``name`` (``undefined`` when missing).

    Raises:
        DataError: no image has the attribute (the message lists the attributes there are).
    """
    if not any(name in s.attributes for s in samples):
        present = sorted({k for s in samples for k in s.attributes})
        listed = ", ".join(present) if present else "none (this source has no image attributes)"
        raise DataError(f"--split attribute:{name}: no image has attribute {name!r}; available: {listed}")
    return [s.attributes.get(name, UNDEFINED) for s in samples]


def partition(
    samples: list[Sample], spec: SplitSpec, clients: int, indices: list[int], rng: np.random.Generator
) -> tuple[list[list[int]], int]:
    """Split ``indices`` (positions in ``samples``) into ``clients`` disjoint, complete shards.

    Returns:
        The shards (sorted index lists) and how many images were moved to fill empty clients.
    """
    if clients > len(indices):
        raise DataError(f"--clients {clients}: more clients than training images ({len(indices)})")
    if spec.kind == "iid":
        shards = _iid(indices, clients, rng)
    elif spec.kind == "dirichlet":
        shards = _dirichlet(indices, rarest_class_labels(samples), clients, spec.alpha, rng)
    else:
        shards = _by_attribute(indices, attribute_values(samples, spec.attribute), clients, rng)
    moved = _fill_empty(shards, rng)
    return [sorted(s) for s in shards], moved
