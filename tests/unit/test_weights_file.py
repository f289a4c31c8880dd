"""Weights from outside the process are tensors only: no payload in a ``.pt`` file runs.

Every hostile file would write a marker if anything in it were imported, called or evaluated; the
tests assert the marker never appears and the error names the file (and the refused global).
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from federated.weights_file import WeightsFileError, read_named_arrays
from tests.fixtures.payloads import Call, evil_checkpoint, evil_model_cfg


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    """name -> (object to torch.save, text the error must contain)."""
    command = f"touch {marker}"
    weight = torch.zeros(2)
    return {
        "reduce-os-system": (Call(os.system, command), "refused global 'posix.system'"),
        "reduce-eval": (Call(eval, f"__import__('os').system('{command}')"), "'builtins.eval'"),
        "reduce-exec": (
            {"w": weight, "x": Call(exec, f"import os; os.system('{command}')")},
            "'builtins.exec'",
        ),
        "getattr-chain": (Call(getattr, Call(__import__, "os"), "system"), "'builtins.getattr'"),
        "payload-inside-a-state-dict": (OrderedDict(w=weight, b=Call(os.system, command)), "posix.system"),
        "subprocess": (Call(__import__("subprocess").call, ["touch", str(marker)]), "subprocess.call"),
    }


@pytest.mark.parametrize("case", list(_payloads(Path("m"))))
def test_reduce_payloads_are_refused_and_never_run(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "marker"
    obj, message = _payloads(marker)[case]
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(WeightsFileError, match=str(path)) as refused:
        read_named_arrays(path)
    assert message in str(refused.value)
    assert not marker.exists()


def test_an_allowed_class_with_an_evil_argument_is_never_constructed(tmp_path: Path) -> None:
    """``DetectionModel(cfg)`` in the pickle (ultralytics' and torch's allow-lists admit the class).

    The result must not depend on process-wide allow-lists either: ultralytics' restricted loader
    registers ``DetectionModel`` with ``torch.serialization``; here it is registered around the read.
    """
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "final.pt", marker)
    with torch.serialization.safe_globals([DetectionModel]), pytest.raises(WeightsFileError) as refused:
        read_named_arrays(path)
    assert "is not a pickled torch module" in str(refused.value) and str(path) in str(refused.value)
    torch.save({"model": Call(DetectionModel, evil_model_cfg(marker))}, path)
    with pytest.raises(WeightsFileError, match="not a pickled torch module"):
        read_named_arrays(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_legacy_and_plain_pickles_are_refused_before_torch_reads_them(tmp_path: Path) -> None:
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))  # torch.load would call torch.jit.load
    with pytest.raises(WeightsFileError, match="TorchScript archive"):
        read_named_arrays(scripted)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsFileError, match="not a torch zip archive"):
        read_named_arrays(legacy)
    marker = tmp_path / "marker"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Call(os.system, f"touch {marker}"), protocol=0))
    with pytest.raises(WeightsFileError, match="not a torch zip archive"):
        read_named_arrays(raw)
    assert not marker.exists()


def test_tensors_and_ultralytics_checkpoints_are_read(tmp_path: Path) -> None:
    """A state_dict, a ``{"state_dict": ...}`` dict and a pickled module come back as their tensors."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    expected = {key: value.numpy() for key, value in model.state_dict().items()}
    for obj in (model.state_dict(), {"state_dict": model.state_dict()}, {"model": model, "ema": None}):
        path = tmp_path / "w.pt"
        torch.save(obj, path)
        found = read_named_arrays(path)
        assert list(found) == list(expected)
        assert all(np.array_equal(found[key], expected[key]) for key in expected)
    torch.save({"model": model.half()}, path)  # ultralytics' own checkpoints are fp16
    assert read_named_arrays(path)["0.weight"].dtype == np.float32
