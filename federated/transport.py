"""Pack model weights into one array for the Deployment Engine's wire, and back.

Why: Flower 1.42 stores every ``Array`` of an ``ArrayRecord`` as its own content-addressed object and
moves each object with its own HTTP request on every hop (ServerApp -> SuperLink -> SuperNode ->
ClientApp and back). YOLOv9t's ``state_dict`` has 1339 entries, so one round with 2 clients makes
roughly 15,000 requests: measured on 2 busy CPU cores, 2 rounds of the v9t weights took 467 s as 1339
arrays and 8 s as one packed array (``benchmarks/round_overhead.py --transport``). Packing is exact
(``unpack(pack(w), w)`` is bitwise equal to ``w``) and every strategy FleetFL offers is element-wise
(FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedMedian, FedTrimmedAvg) or works on the whole vector
(Krum, update norms), so aggregating the packed vector equals aggregating the arrays.

Floats and integers whose values float32 holds exactly travel as one float32 vector; anything else
(float64 values, integers beyond 2**24) makes the vector float64, so packing never loses a bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_FLOAT32_EXACT_INT = 2**24


class PackError(ValueError):
    """A packed vector that does not match the template it is unpacked with."""


def pack(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Concatenate ``arrays`` (any shapes and numeric dtypes) into a one-element list of one vector."""
    flat = [np.asarray(a).ravel() for a in arrays]
    dtype = np.float32 if all(_fits_float32(a) for a in flat) else np.float64
    if not flat:
        return [np.zeros(0, dtype=dtype)]
    return [np.concatenate([a.astype(dtype, copy=False) for a in flat])]


def unpack(packed: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Split the vector made by :func:`pack` into arrays shaped and typed like ``like``.

    Raises:
        PackError: ``packed`` is not one vector of exactly as many values as ``like`` holds.
    """
    if len(packed) != 1 or np.asarray(packed[0]).ndim != 1:
        raise PackError(f"expected one packed vector, got {len(packed)} array(s)")
    vector = np.asarray(packed[0])
    sizes = [int(np.asarray(t).size) for t in like]
    if vector.size != sum(sizes):
        raise PackError(f"packed vector holds {vector.size} values, the model needs {sum(sizes)}")
    out = []
    offset = 0
    for template, size in zip(like, sizes, strict=True):
        template = np.asarray(template)
        values = vector[offset : offset + size]
        if np.issubdtype(template.dtype, np.integer):  # an average of counters: round, don't truncate
            values = np.rint(values)
        out.append(values.astype(template.dtype).reshape(template.shape))
        offset += size
    return out


def _fits_float32(array: np.ndarray) -> bool:
    if array.dtype == np.float32 or array.dtype == np.float16 or array.dtype == np.bool_:
        return True
    if np.issubdtype(array.dtype, np.integer):
        return array.size == 0 or int(np.abs(array).max()) <= _FLOAT32_EXACT_INT
    return False
