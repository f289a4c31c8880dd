"""ultralytics' label caches (``labels.cache``), read without unpickling anything but numpy arrays.

ultralytics keeps a scan of a dataset's labels in ``<split>/labels.cache``, a ``.npy`` holding a
pickled dict, and reads it back with ``np.load(allow_pickle=True)``
(``ultralytics.data.utils.load_dataset_cache_file``, 8.4): a cache file that came with a dataset (a
ClearML Dataset version, a folder given to ``--data``) would run any code its pickle names, before
ultralytics even checks the cache's hash. :func:`install` replaces that function, in the one module
that calls it for detection datasets (``ultralytics.data.dataset``), with :func:`read_label_cache`,
which admits numpy arrays, dtypes and plain containers only. Anything else raises, and ultralytics
then does what it does with a stale cache: scans the labels again and rewrites the file.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Numpy arrays (and the dicts, lists, tuples and strings around them); no other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused global '{module}.{name}' in a label cache")


def read_label_cache(path: Path) -> dict[str, Any]:
    """The dict in an ultralytics ``.cache`` file; raises on anything but arrays and containers."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version not in readers:
            raise ValueError(f"{path}: .npy format {version} is not read")
        shape, _, dtype = readers[version](handle)
        if shape != () or dtype != np.dtype(object):
            raise ValueError(f"{path}: not an ultralytics label cache")
        array = _ArrayUnpickler(handle).load()
    if not isinstance(array, np.ndarray) or array.shape != () or not isinstance(array.item(), dict):
        raise ValueError(f"{path}: not an ultralytics label cache")
    return array.item()


@functools.cache
def install() -> None:
    """Make ultralytics read label caches with :func:`read_label_cache` (once per process)."""
    from ultralytics.data import dataset

    dataset.load_dataset_cache_file = read_label_cache
