"""Weights from outside the process (a registry, a URL, a user's file): read as tensors, nothing else.

Formats: ``.safetensors`` (FleetFL's checkpoints, ``federated/run_dir.py``), ``.npz`` (read without
pickle) and ``.pt``/``.pth`` (``torch.save`` zip archives: a state_dict, or an ultralytics checkpoint
such as ``RUN_DIR/final.pt``).

A ``.pt`` file is a pickle. ``torch.load(weights_only=True)`` is not enough: its allow-list is
process-wide (ultralytics' restricted loader adds ``DetectionModel`` and every layer class to it) and
an allowed class is *called* with the file's arguments (``DetectionModel(cfg)`` with an ``activation``
that ultralytics passes to ``eval``). So :func:`read_torch_tensors` unpickles with its own
:class:`_TensorUnpickler`, handed to ``torch.load`` as its ``pickle_module`` (torch still reads the
storages), that admits

* the tensor rebuild functions, through FleetFL's own wrappers (no hooks, no tensor subclasses),
* plain containers (``dict``, ``list``, ``tuple``, ``set``, ``OrderedDict``, ``str``, numbers...),
* for the classes of a pickled model (``torch.nn.modules.*``, ``ultralytics.*``) an inert record
  (:class:`_Record`): the class is neither imported nor called, the record only keeps the state
  pickle hands it, from which the state_dict's tensors are collected;

and refuses every other global (``os.system``, ``builtins.eval``, ``copyreg._reconstructor``...) with
an error naming it. TorchScript archives (which ``torch.load`` would hand to ``torch.jit.load``) and
pre-1.6 (non-zip) files are refused before torch reads them.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

#: Module prefixes whose classes become inert records (the layers of a pickled model).
RECORD_NAMESPACES: tuple[str, ...] = ("torch.nn.modules.", "ultralytics.")
_MAX_MODULE_DEPTH = 64
_ZIP_MAGIC = b"PK\x03\x04"


class WeightsFileError(ValueError):
    """A weights file that cannot be read as tensors; the message names the file."""


def read_named_arrays(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of a ``.safetensors``, ``.npz`` or ``.pt`` file (tensors only).

    Raises:
        WeightsFileError: unknown format, unreadable file, or anything but tensors (named).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        if suffix in (".pt", ".pth"):
            return read_torch_tensors(path)
    except WeightsFileError:
        raise
    except Exception as exc:
        raise WeightsFileError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    raise WeightsFileError(f"{path}: unknown weights format {suffix!r} (expected .safetensors, .npz or .pt)")


def read_torch_tensors(path: Path) -> dict[str, np.ndarray]:
    """The state_dict of a ``torch.save`` file (a state_dict or an ultralytics checkpoint) as arrays.

    Floating tensors of 16 bits come back as float32 (numpy has no bfloat16).
    """
    import torch

    path = Path(path)
    _check_archive(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE)
    except pickle.UnpicklingError as exc:
        raise WeightsFileError(f"{path}: {exc}") from None
    except Exception as exc:
        raise WeightsFileError(
            f"{path}: not a readable torch file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    tensors = _state_dict(loaded, path)
    arrays = {}
    for key, tensor in tensors.items():
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        arrays[key] = tensor.detach().cpu().numpy()
    return arrays


# ---------------------------------------------------------------------- the restricted unpickler
class _Record:
    """What a pickled class becomes: its constructor arguments and pickled state; no code of its own."""

    __slots__ = ("args", "state")
    qualified_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Record:
        record = object.__new__(cls)
        record.args = args
        record.state = None
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the class named in the file is never constructed."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> Any:
    """``torch._utils._rebuild_tensor(_v2)`` without backward hooks, metadata or subclasses."""
    import torch

    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor without storage ({type(storage).__name__})")
    if not (_ints(size) and _ints(stride) and isinstance(offset, int) and len(size) == len(stride)):
        raise pickle.UnpicklingError("a tensor with a malformed size or stride")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _parameter(data: Any, *_ignored: Any) -> Any:
    """``torch._utils._rebuild_parameter(_with_state)``: the tensor, without hooks or extra state."""
    import torch

    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter without a tensor ({type(data).__name__})")
    return data


def _ints(values: Any) -> bool:
    return isinstance(values, tuple | list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )


_ALLOWED: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _tensor,
    "torch._utils._rebuild_tensor_v2": _tensor,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
}


class _TensorUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing: tensors, plain containers and inert records only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._records: dict[str, type[_Record]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name Python 2 modules (``__builtin__``, ``commands``); read them as pickle
        # itself would (names only: nothing is imported)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in _ALLOWED:
            return _ALLOWED[qualified]
        if qualified.startswith(RECORD_NAMESPACES) and name.isidentifier():
            if qualified not in self._records:
                self._records[qualified] = type(
                    f"Record[{qualified}]", (_Record,), {"__slots__": (), "qualified_name": qualified}
                )
            return self._records[qualified]
        raise pickle.UnpicklingError(
            f"refused global {qualified!r}: FleetFL reads tensors and plain containers only, never code "
            "or classes from a weights file"
        )


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _TensorUnpickler(file, **kwargs).load()


#: What ``torch.load`` gets as ``pickle_module``: the restricted unpickler for every path it may take.
_PICKLE_MODULE = types.ModuleType("fleetfl_tensor_pickle")
_PICKLE_MODULE.Unpickler = _TensorUnpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = _restricted_load  # type: ignore[attr-defined]
_PICKLE_MODULE.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- archive and state_dict
def _check_archive(path: Path) -> None:
    """A ``torch.save`` zip archive (so torch takes its zip path), not TorchScript."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(_ZIP_MAGIC))
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise WeightsFileError(
            f"{path}: not a torch zip archive ({exc}); FleetFL reads torch.save files of torch >= 1.6, "
            "safetensors and npz"
        ) from None
    if magic != _ZIP_MAGIC:
        raise WeightsFileError(f"{path}: not a torch zip archive (it does not start with a zip entry)")
    if any(name.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in name for name in names):
        raise WeightsFileError(f"{path}: a TorchScript archive (code), not weights: refused")


def _state_dict(loaded: Any, path: Path) -> dict[str, Any]:
    """The tensors of a loaded state_dict, ``{"state_dict": ...}`` or ultralytics checkpoint."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    elif isinstance(loaded, dict):
        model = next((loaded[k] for k in ("ema", "model") if isinstance(loaded.get(k), _Record)), None)
        if model is not None:  # an ultralytics checkpoint: the model's layers are records
            found: dict[str, Any] = {}
            _collect_module(model, "", found, path, depth=0)
            return found
    if isinstance(loaded, dict) and loaded and all(_is_tensor(v) for v in loaded.values()):
        return {str(key): value for key, value in loaded.items()}
    raise WeightsFileError(
        f"{path}: holds no state_dict (expected a dict of tensors or an ultralytics checkpoint, "
        f"got {type(loaded).__name__})"
    )


def _collect_module(record: _Record, prefix: str, found: dict[str, Any], path: Path, depth: int) -> None:
    """Add the state_dict entries of a pickled ``nn.Module`` (a record) in ``state_dict()`` order."""
    state = record.state
    if depth > _MAX_MODULE_DEPTH or not isinstance(state, dict):
        raise WeightsFileError(f"{path}: {prefix or 'model'} is not a pickled torch module")
    skipped = state.get("_non_persistent_buffers_set") or set()
    for section in ("_parameters", "_buffers"):
        for name, tensor in (state.get(section) or {}).items():
            if tensor is None or (section == "_buffers" and name in skipped):
                continue
            if not _is_tensor(tensor):
                raise WeightsFileError(f"{path}: {prefix}{name} is not a tensor")
            found[f"{prefix}{name}"] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _Record):
            raise WeightsFileError(f"{path}: {prefix}{name} is not a pickled torch module")
        _collect_module(child, f"{prefix}{name}.", found, path, depth + 1)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
