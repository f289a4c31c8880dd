"""Partitioners: disjoint, complete, seeded; Dirichlet skew grows as alpha shrinks; attribute split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.classes import DEFAULT_CLASSES
from datasets.errors import DataError
from datasets.partition import SplitSpec, hold_out, parse_split, partition, rarest_class_labels
from datasets.report import mean_tv_distance, split_stats
from datasets.samples import Box, Sample


def _samples(n: int = 300, seed: int = 0) -> list[Sample]:
    """Images with 1-4 boxes of a skewed class mix and a weather attribute."""
    rng = np.random.default_rng(seed)
    p = np.array([0.4, 0.2, 0.1, 0.15, 0.05, 0.05, 0.05])
    out = []
    for i in range(n):
        classes = rng.choice(len(p), size=int(rng.integers(1, 5)), p=p)
        boxes = tuple(Box(int(c), 1, 1, 10, 10) for c in classes)
        weather = ("clear", "rainy", "snowy")[i % 3]
        out.append(Sample(f"{i:04d}", Path(f"{i}.jpg"), 32, 32, boxes, {"weather": weather}))
    return out


def _split(samples, spec: str, clients: int, seed: int):
    rng = np.random.default_rng(seed)
    eval_idx, rest = hold_out(len(samples), 0.2, rng)
    shards, _ = partition(samples, parse_split(spec), clients, rest, rng)
    return eval_idx, rest, shards


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.1", "dirichlet:1", "attribute:weather"])
def test_disjoint_complete_and_eval_held_out(spec: str) -> None:
    samples = _samples()
    eval_idx, rest, shards = _split(samples, spec, 4, seed=1)
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)), "no image in two clients"
    assert sorted(flat) == rest, "every training image in exactly one client"
    assert not set(flat) & set(eval_idx), "no client sees the evaluation split"
    assert len(eval_idx) == 60 and all(shards)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "attribute:weather"])
def test_seeded(spec: str) -> None:
    samples = _samples()
    assert _split(samples, spec, 3, seed=5) == _split(samples, spec, 3, seed=5)
    if spec != "attribute:weather":  # the attribute split with 3 values and 3 clients is fixed
        assert _split(samples, spec, 3, seed=5) != _split(samples, spec, 3, seed=6)


def test_skew_grows_as_alpha_shrinks() -> None:
    samples = _samples(600)
    classes = DEFAULT_CLASSES

    def skew(spec: str) -> float:
        values = []
        for seed in range(3):
            _, _, shards = _split(samples, spec, 5, seed)
            values.append(mean_tv_distance([split_stats(samples, s, classes, "c") for s in shards], classes))
        return float(np.mean(values))

    skews = [skew(s) for s in ("iid", "dirichlet:100", "dirichlet:1", "dirichlet:0.1")]
    assert skews[0] < 0.1 and skews[1] < 0.1
    assert skews[1] < skews[2] < skews[3], skews


def test_attribute_split_is_natural() -> None:
    samples = _samples(90)
    _, _, shards = _split(samples, "attribute:weather", 3, seed=0)
    assert sorted(len({samples[i].attributes["weather"] for i in s}) for s in shards) == [1, 1, 1]
    _, _, shards = _split(samples, "attribute:weather", 5, seed=0)  # more clients than values
    assert all(len({samples[i].attributes["weather"] for i in s}) == 1 for s in shards)
    _, _, shards = _split(samples, "attribute:weather", 2, seed=0)  # fewer clients than values
    assert sorted(len({samples[i].attributes["weather"] for i in s}) for s in shards) == [1, 2]


def test_rarest_class_label() -> None:
    samples = [
        Sample("a", Path("a"), 9, 9, (Box(0, 0, 0, 1, 1), Box(2, 0, 0, 1, 1))),
        Sample("b", Path("b"), 9, 9, (Box(0, 0, 0, 1, 1), Box(0, 0, 0, 1, 1))),
        Sample("c", Path("c"), 9, 9, ()),
    ]
    assert rarest_class_labels(samples) == [2, 0, -1]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("iid", SplitSpec("iid")), ("dirichlet:0.5", SplitSpec("dirichlet", alpha=0.5)),
     ("attribute:time_of_day", SplitSpec("attribute", attribute="timeofday"))],
)  # fmt: skip
def test_parse_split(spec: str, expected: SplitSpec) -> None:
    assert parse_split(spec) == expected


BAD_SPECS = ["", "random", "iid:2", "dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x",
             "dirichlet:nan",
             "attribute:", "attribute:  "]  # fmt: skip


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_split_spec(spec: str) -> None:
    with pytest.raises(DataError, match="--split"):
        parse_split(spec)


def test_missing_attribute_and_too_many_clients() -> None:
    samples = _samples(20)
    with pytest.raises(DataError, match="no image has attribute 'scene'; available: weather"):
        _split(samples, "attribute:scene", 2, seed=0)
    with pytest.raises(DataError, match="more clients than training images"):
        _split(samples, "iid", 17, seed=0)
