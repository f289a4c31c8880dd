"""The one gate a model yaml passes before ultralytics sees it: parsed as data, checked, never run.

ultralytics builds a model from its yaml with ``eval`` of the ``activation`` string, a lookup of each
layer's module name in ``ultralytics.nn.tasks``' globals (any function there, ``torch_safe_load``
included, could be named) and ``locals()``/``ast.literal_eval`` of string arguments. A model yaml
reaches FleetFL from a user (``--set model=``, ``--config``), a run's ``run.json`` (``--resume``), a
ClearML task or pipeline parameter, so every one of them goes through :func:`load_checked`
(:class:`federated.config.FederatedConfig` validates ``model`` with it, and
``federated.yolo_task.build_model`` builds from the dict it returns, never from the file again):

* the file is a local path or one of ultralytics' bundled model yamls (``yolov9t.yaml``,
  ``yolov8n.yaml`` -> ``yolov8.yaml`` with scale ``n``); URLs are refused (no downloads);
* it is read with ``yaml.safe_load`` (at most :data:`MAX_BYTES`);
* top-level keys are those a detection model uses, with their types;
* ``activation`` is one of :data:`ACTIVATIONS` with literal numeric arguments, handed to ultralytics
  re-written from the parsed call (so the text ultralytics evaluates is FleetFL's, not the file's);
* every layer is ``[from, number, module, args]`` with ``module`` in :data:`LAYERS` (the layers of
  ultralytics' bundled detection yamls and the plain blocks ``parse_model`` knows; nothing that loads
  or downloads, e.g. ``TorchVision``), and every argument a number, a bool, ``None``, a list of
  those, or a string from :data:`STRING_ARGS` (``nc``, upsample modes) or a number written as text.

Anything else is a :class:`ModelYamlError` naming the file and the key, e.g.
``evil.yaml: activation: 'nn.SiLU() if ... else 0' is not an allowed activation``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import yaml

#: Largest model yaml read (ultralytics' own are below 5 KB).
MAX_BYTES = 256 * 1024
#: ``torch.nn`` activations allowed in ``activation`` (as ``nn.X(...)`` or ``torch.nn.X(...)``).
ACTIVATIONS: frozenset[str] = frozenset(
    {
        "CELU",
        "ELU",
        "GELU",
        "Hardsigmoid",
        "Hardswish",
        "Identity",
        "LeakyReLU",
        "Mish",
        "ReLU",
        "ReLU6",
        "SELU",
        "SiLU",
        "Sigmoid",
        "Tanh",
    }
)
#: Keyword arguments an activation may take, with the types of their values.
_ACTIVATION_KEYWORDS: dict[str, tuple[type, ...]] = {
    "inplace": (bool,),
    "negative_slope": (int, float),
    "alpha": (int, float),
    "approximate": (str,),
}
#: Layer (module) names a model yaml may use: what ultralytics' bundled detection yamls use, plus
#: the plain convolution blocks ``parse_model`` sizes itself. Each is a class in
#: ``ultralytics.nn.tasks``' namespace or ``torch.nn`` (``tests/unit/test_model_yaml.py`` checks).
LAYERS: frozenset[str] = frozenset(
    {
        "A2C2f",
        "AConv",
        "ADown",
        "Bottleneck",
        "BottleneckCSP",
        "C1",
        "C2",
        "C2PSA",
        "C2f",
        "C2fCIB",
        "C2fPSA",
        "C3",
        "C3Ghost",
        "C3TR",
        "C3k2",
        "C3x",
        "CBFuse",
        "CBLinear",
        "Concat",
        "Conv",
        "ConvTranspose",
        "DWConv",
        "DWConvTranspose2d",
        "Detect",
        "ELAN1",
        "Focus",
        "GhostBottleneck",
        "GhostConv",
        "PSA",
        "RepC3",
        "RepNCSPELAN4",
        "SCDown",
        "SPP",
        "SPPELAN",
        "SPPF",
        "v10Detect",
        "nn.BatchNorm2d",
        "nn.ConvTranspose2d",
        "nn.Identity",
        "nn.MaxPool2d",
        "nn.Upsample",
        "nn.ZeroPad2d",
    }
)
#: Strings allowed as layer arguments: ``nc`` (ultralytics substitutes the class count) and the
#: ``nn.Upsample`` modes. Numbers, ``None``, ``True`` and ``False`` written as text are allowed too.
STRING_ARGS: frozenset[str] = frozenset({"nc", "nearest", "bilinear", "bicubic"})
#: Top-level keys and the types of their values (a detection model's; others are refused).
_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "nc": (int,),
    "scales": (dict,),
    "scale": (str,),
    "depth_multiple": (int, float),
    "width_multiple": (int, float),
    "activation": (str,),
    "backbone": (list,),
    "head": (list,),
    "end2end": (bool,),
    "reg_max": (int,),
    "channels": (int,),
    "inplace": (bool,),
    "yaml_file": (str,),
}
_MAX_LIST = 64
_MAX_DEPTH = 3
_MAX_ROWS = 512


class ModelYamlError(ValueError):
    """A model yaml that cannot be found, read or trusted; the message names the file and the key."""


# ---------------------------------------------------------------------- public API
def load_checked(model: str) -> dict[str, Any]:
    """Resolve ``model``, read it as data and check it; return the dict to build the model from.

    Raises:
        ModelYamlError: the file is missing, remote, too large, not YAML, or holds anything outside
            the allow-lists (the message names the file and the key).
    """
    path = resolve(model)
    return check(_read(path), str(model))


def check_model(model: str) -> None:
    """:func:`load_checked` without the result, cached per file version (config validation)."""
    path = resolve(model)
    stat = path.stat()
    _check_file_version(str(model), str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)


def resolve(model: str) -> Path:
    """The local file ``model`` names: a path as is, else one of ultralytics' bundled model yamls.

    As ultralytics resolves it: a local file first; then a bundled file of that name; then the
    bundled family file without the scale letter (``yolov8n.yaml`` -> ``yolov8.yaml``).
    """
    text = str(model).strip()
    if not text:
        raise ModelYamlError("model: empty (expected a model yaml such as yolov9t.yaml)")
    if "://" in text:
        raise ModelYamlError(f"{text}: a remote model yaml is not allowed (FleetFL downloads nothing)")
    if not text.endswith((".yaml", ".yml")):
        raise ModelYamlError(f"{text}: expected an ultralytics detection model yaml (e.g. yolov9t.yaml)")
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.name == text:
        bundled = _bundled_yamls()
        family = re.sub(r"(\d+)([nslmx])(.*)(\.ya?ml)$", r"\1\3\4", text)
        for name in (text, family):
            if name in bundled:
                return bundled[name]
    raise ModelYamlError(
        f"{text}: model yaml not found (neither a file nor one of ultralytics' bundled yamls)"
    )


def check(data: Any, source: str) -> dict[str, Any]:
    """Check a parsed model yaml; return a copy ready for ultralytics (``activation`` re-written)."""
    if not isinstance(data, dict):
        raise ModelYamlError(
            f"{source}: expected a mapping (nc, backbone, head...), got {type(data).__name__}"
        )
    checked: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TOP_LEVEL:
            raise ModelYamlError(
                f"{source}: {key!r} is not a key of a detection model yaml (known: {', '.join(_TOP_LEVEL)})"
            )
        kinds = _TOP_LEVEL[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ModelYamlError(
                f"{source}: {key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r:.80}"
            )
        checked[key] = value
    if "nc" not in checked:
        raise ModelYamlError(f"{source}: nc: missing (the number of classes; FleetFL sets it from the data)")
    for key in ("backbone", "head"):
        if not checked.get(key):
            raise ModelYamlError(
                f"{source}: {key}: missing or empty (a list of [from, number, module, args] rows)"
            )
        checked[key] = [_check_row(row, f"{key}[{index}]", source) for index, row in enumerate(checked[key])]
    if len(checked["backbone"]) + len(checked["head"]) > _MAX_ROWS:
        raise ModelYamlError(f"{source}: more than {_MAX_ROWS} layers")
    for key in ("nc", "reg_max", "channels"):
        if key in checked and checked[key] < 1:
            raise ModelYamlError(f"{source}: {key}: must be >= 1, got {checked[key]}")
    for key in ("depth_multiple", "width_multiple"):
        if key in checked:
            _positive_number(checked[key], key, source)
    if "scales" in checked:
        checked["scales"] = _check_scales(checked["scales"], source)
    if "activation" in checked:
        checked["activation"] = activation_call(checked["activation"], source)
    return checked


def activation_call(text: str, source: str) -> str:
    """``text`` as an allowed ``torch.nn`` activation call, re-written by FleetFL (``torch.nn.X(...)``).

    Raises:
        ModelYamlError: anything but ``[torch.]nn.<one of ACTIVATIONS>(<literal arguments>)``.
    """
    refused = ModelYamlError(
        f"{source}: activation: {text!r:.200} is not an allowed activation (allowed: "
        f"{', '.join(f'nn.{name}()' for name in sorted(ACTIVATIONS))}, with literal numeric arguments)"
    )
    if len(text) > 200:
        raise refused
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        raise refused from None
    if not isinstance(call, ast.Call):
        raise refused
    name = _activation_name(call.func)
    if name not in ACTIVATIONS or len(call.args) > 2:
        raise refused
    args = [_literal(node) for node in call.args]
    if any(not (_is_number(value) or isinstance(value, bool)) for value in args):
        raise refused
    keywords = {}
    for keyword in call.keywords:
        value = _literal(keyword.value)
        kinds = _ACTIVATION_KEYWORDS.get(keyword.arg or "")
        if (
            kinds is None
            or not isinstance(value, kinds)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise refused
        if keyword.arg == "approximate" and value not in ("none", "tanh"):
            raise refused
        keywords[keyword.arg] = value
    rendered = [repr(value) for value in args] + [f"{key}={value!r}" for key, value in keywords.items()]
    return f"torch.nn.{name}({', '.join(rendered)})"


# ---------------------------------------------------------------------- helpers
@functools.cache
def _bundled_yamls() -> dict[str, Path]:
    """ultralytics' bundled model yamls by file name (found without importing ultralytics)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.y*ml")):
        found.setdefault(path.name, path)
    return found


@functools.lru_cache(maxsize=64)
def _check_file_version(model: str, path: str, mtime_ns: int, size: int, inode: int) -> None:
    check(_read(Path(path)), model)


def _read(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ModelYamlError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise ModelYamlError(f"{path}: larger than {MAX_BYTES} bytes (not a model yaml)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelYamlError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # a safe loader: plain data, no tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ModelYamlError(
            f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})"
        ) from None
    except RecursionError:
        raise ModelYamlError(f"{path}: nested too deeply") from None


def _check_row(row: Any, where: str, source: str) -> list[Any]:
    if not isinstance(row, list) or len(row) != 4:
        raise ModelYamlError(f"{source}: {where}: expected [from, number, module, args], got {row!r:.120}")
    origin, number, module, args = row
    origins = origin if isinstance(origin, list) else [origin]
    if not origins or len(origins) > _MAX_LIST or not all(_is_int(item) for item in origins):
        raise ModelYamlError(
            f"{source}: {where}.from: expected a layer index or a list of them, got {origin!r:.80}"
        )
    if not _is_int(number) or number < 1:
        raise ModelYamlError(f"{source}: {where}.number: expected an integer >= 1, got {number!r:.80}")
    if not isinstance(module, str) or module not in LAYERS:
        raise ModelYamlError(
            f"{source}: {where}.module: {module!r:.80} is not an allowed layer "
            f"(allowed: {', '.join(sorted(LAYERS))})"
        )
    if not isinstance(args, list) or len(args) > _MAX_LIST:
        raise ModelYamlError(f"{source}: {where}.args: expected a list of arguments, got {args!r:.80}")
    for index, arg in enumerate(args):
        _check_arg(arg, f"{where}.args[{index}]", source, depth=0)
    return [origin, number, module, list(args)]


def _check_arg(value: Any, where: str, source: str, depth: int) -> None:
    if value is None or isinstance(value, bool) or _is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelYamlError(f"{source}: {where}: {value!r} is not a finite number")
        return
    if isinstance(value, str):
        if value in STRING_ARGS or (len(value) <= 32 and _is_literal_text(value)):
            return
        raise ModelYamlError(
            f"{source}: {where}: {value!r:.80} is not an allowed argument (a number, a bool, None, "
            f"or one of {', '.join(sorted(STRING_ARGS))})"
        )
    if isinstance(value, list) and depth < _MAX_DEPTH and len(value) <= _MAX_LIST:
        for index, item in enumerate(value):
            _check_arg(item, f"{where}[{index}]", source, depth + 1)
        return
    raise ModelYamlError(f"{source}: {where}: {value!r:.80} is not an allowed argument")


def _check_scales(scales: dict[Any, Any], source: str) -> dict[str, list[float]]:
    checked = {}
    for name, values in scales.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", name):
            raise ModelYamlError(f"{source}: scales: {name!r:.40} is not a scale name")
        if not isinstance(values, list) or len(values) != 3:
            raise ModelYamlError(f"{source}: scales.{name}: expected [depth, width, max_channels]")
        for value in values:
            _positive_number(value, f"scales.{name}", source)
        checked[name] = list(values)
    return checked


def _positive_number(value: Any, where: str, source: str) -> None:
    if not _is_number(value) or value <= 0:
        raise ModelYamlError(f"{source}: {where}: expected a positive number, got {value!r:.80}")


def _activation_name(node: ast.expr) -> str | None:
    """``X`` of ``nn.X`` or ``torch.nn.X``; ``None`` for anything else."""
    if not isinstance(node, ast.Attribute):
        return None
    owner = node.value
    if isinstance(owner, ast.Name) and owner.id == "nn":
        return node.attr
    if (
        isinstance(owner, ast.Attribute)
        and owner.attr == "nn"
        and isinstance(owner.value, ast.Name)
        and owner.value.id == "torch"
    ):
        return node.attr
    return None


def _literal(node: ast.expr) -> Any:
    """A constant (or a negated number) from the parse tree; :data:`_NOT_LITERAL` otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
    ):
        value = node.operand.value
        if _is_number(value):
            return -value
    return _NOT_LITERAL


_NOT_LITERAL = object()


def _is_literal_text(text: str) -> bool:
    """``text`` reads as a number, ``True``, ``False`` or ``None`` (what ``ast.literal_eval`` keeps)."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return value is None or isinstance(value, bool) or _is_number(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def bundled_detection_yamls() -> list[Path]:
    """ultralytics' bundled detection model yamls (last layer ``Detect`` or ``v10Detect``), for tests."""
    found = []
    for path in sorted(set(_bundled_yamls().values())):
        data = _read(path)
        rows = (data.get("backbone") or []) + (data.get("head") or []) if isinstance(data, dict) else []
        if rows and rows[-1][2] in ("Detect", "v10Detect"):
            found.append(path)
    return found
