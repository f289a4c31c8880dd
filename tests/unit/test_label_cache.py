"""ultralytics' labels.cache arrives with a dataset: it is read as arrays only, a payload never runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from tests.fixtures.payloads import Call


def _write_cache(path: Path, content: object) -> None:
    with open(path, "wb") as handle:  # a file handle: np.save would add ".npy" to a name
        np.save(handle, np.array(content, dtype=object), allow_pickle=True)


def test_a_label_cache_with_a_payload_is_rescanned_and_never_runs(
    fl_ultralytics, fl_data_dir: Path, fl_config, tmp_path: Path
) -> None:
    from federated import yolo_task
    from federated.label_cache import read_label_cache

    data = tmp_path / "eval"
    shutil.copytree(fl_data_dir / "eval", data)
    marker = tmp_path / "marker"
    cache = data / "labels.cache"  # where ultralytics looks (next to labels/)
    _write_cache(cache, {"version": "x", "labels": Call(os.system, f"touch {marker}")})
    names = yolo_task.read_dataset(data / "data.yaml").names
    weights = yolo_task.get_weights(yolo_task.build_model(fl_config.model, names, seed=0))
    result = yolo_task.evaluate(weights, data / "data.yaml", fl_config)
    assert 0.0 <= result.map50 <= 1.0
    assert not marker.exists()
    rescanned = read_label_cache(cache)  # ultralytics rewrote it after the scan: arrays only
    assert len(rescanned["labels"]) == len(list((data / "images").iterdir()))
