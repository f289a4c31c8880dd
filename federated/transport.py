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

``update_dtype="fp16"`` (config key ``update_dtype``) halves what travels: the floating-point arrays
go as one float16 vector (relative error <= 2**-11 per value, values below 2**-14 lose relative
precision), the integer arrays (BatchNorm's ``num_batches_tracked``) as a second, exact vector.
:func:`unpack` reads both forms into the model's own dtypes, so whoever aggregates (the server,
:class:`federated.strategies.GuardedStrategy`) works on float32; :func:`widen` turns a received
vector pair back into the exact single-vector form before Flower's strategy sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_FLOAT32_EXACT_INT = 2**24
_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: What a client sends and the server broadcasts (config key ``update_dtype``).
UPDATE_DTYPES: tuple[str, ...] = ("fp32", "fp16")


class PackError(ValueError):
    """A packed vector that does not match the template it is unpacked with."""


def pack(arrays: Sequence[np.ndarray], update_dtype: str = "fp32") -> list[np.ndarray]:
    """Concatenate ``arrays`` (any shapes and numeric dtypes) into the wire form of ``update_dtype``.

    ``fp32``: a one-element list of one exact vector. ``fp16``: ``[float16 vector of the floating-point
    arrays, exact vector of the others]`` (see the module docstring).

    Raises:
        PackError: ``fp16`` and a value beyond float16's range (+-65504), or an unknown ``update_dtype``.
    """
    flat = [np.asarray(a).ravel() for a in arrays]
    if update_dtype == "fp32":
        return [_concatenate(flat)]
    if update_dtype != "fp16":
        raise PackError(f"update_dtype: {update_dtype!r} is not one of {', '.join(UPDATE_DTYPES)}")
    floats = [a for a in flat if _is_float(a)]
    exact = _concatenate([a for a in flat if not _is_float(a)])
    full = np.concatenate(floats) if floats else np.zeros(0, dtype=np.float32)
    with np.errstate(over="ignore"):  # reported below, naming the key
        half = full.astype(np.float16)
    overflow = np.isfinite(full) & ~np.isfinite(half)  # NaN/Inf pass as they are: the server rejects them
    if overflow.any():
        worst = float(np.abs(full[overflow]).max())
        raise PackError(
            f"update_dtype: fp16 cannot hold a weight of magnitude {worst:.4g} (float16 holds up to "
            f"{_FLOAT16_MAX:g}); use update_dtype=fp32"
        )
    return [half, exact]


def unpack(packed: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Split what :func:`pack` made (either form) into arrays shaped and typed like ``like``.

    Raises:
        PackError: ``packed`` is neither form, or does not hold exactly as many values as ``like``.
    """
    vectors = [np.asarray(v) for v in packed]
    templates = [np.asarray(t) for t in like]
    if len(vectors) == 1 and vectors[0].ndim == 1:
        return _split(vectors[0], templates, "packed vector")
    if len(vectors) == 2 and all(v.ndim == 1 for v in vectors) and vectors[0].dtype == np.float16:
        floats = iter(_split(vectors[0], [t for t in templates if _is_float(t)], "fp16 vector"))
        others = iter(_split(vectors[1], [t for t in templates if not _is_float(t)], "exact vector"))
        return [next(floats) if _is_float(t) else next(others) for t in templates]
    kinds = ", ".join(f"{v.ndim}-d {v.dtype}" for v in vectors)
    raise PackError(
        "expected one packed vector (update_dtype fp32) or a float16 vector and an exact vector "
        f"(fp16), got {len(vectors)} array(s): {kinds}"
    )


def widen(packed: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Either wire form as the exact single-vector (``fp32``) form, for aggregation in float32."""
    if len(packed) == 1:
        return [np.asarray(packed[0])]
    return pack(unpack(packed, like))


def _split(vector: np.ndarray, like: list[np.ndarray], what: str) -> list[np.ndarray]:
    sizes = [int(t.size) for t in like]
    if vector.size != sum(sizes):
        raise PackError(f"{what} holds {vector.size} values, the model needs {sum(sizes)}")
    out = []
    offset = 0
    for template, size in zip(like, sizes, strict=True):
        values = vector[offset : offset + size]
        if np.issubdtype(template.dtype, np.integer):  # an average of counters: round, don't truncate
            values = np.rint(values)
        out.append(values.astype(template.dtype).reshape(template.shape))
        offset += size
    return out


def _concatenate(flat: list[np.ndarray]) -> np.ndarray:
    dtype = np.float32 if all(_fits_float32(a) for a in flat) else np.float64
    if not flat:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([a.astype(dtype, copy=False) for a in flat])


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _fits_float32(array: np.ndarray) -> bool:
    if array.dtype == np.float32 or array.dtype == np.float16 or array.dtype == np.bool_:
        return True
    if np.issubdtype(array.dtype, np.integer):
        return array.size == 0 or int(np.abs(array).max()) <= _FLOAT32_EXACT_INT
    return False
