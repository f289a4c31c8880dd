"""One typed, validated configuration for a federated run.

The same :class:`FederatedConfig` feeds the command line (``--config FILE``, ``--set KEY=VALUE``),
Flower's run config (a flat dict of scalars, see :meth:`FederatedConfig.to_flat`) and, later, the
ClearML task parameters. Keys are flat (``rounds``, ``strategy``, ``proximal_mu``...) so that the YAML
file, ``--set`` and the run config all spell a setting the same way.

Every error is a :class:`ConfigError` (a ``ValueError``) that names the key and, for files, the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from federated.model_yaml import ModelYamlError, check_model
from federated.transport import UPDATE_DTYPES

Scalar = bool | int | float | str

#: The strategies a run can use (each one is Flower's own class, see ``federated/strategies.py``).
STRATEGIES: tuple[str, ...] = (
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
)
OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp")
SEND_WEIGHTS: tuple[str, ...] = ("ema", "raw")
OPTIMIZER_STATES: tuple[str, ...] = ("reset", "keep")
IMAGE_CACHES: tuple[str, ...] = ("none", "disk", "ram")
#: Differential privacy modes (``federated/privacy.py``): Flower's server-side DP wrappers, or local DP.
DP_MODES: tuple[str, ...] = ("none", "central-fixed", "central-adaptive", "local")
#: Strategies whose aggregate is the plain mean that central DP's noise is calibrated for.
CENTRAL_DP_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox")
#: Flower 1.42's hard-coded poll interval (seconds) of SuperNodes and of the ServerApp's grid.
FLOWER_POLL_INTERVAL = 3.0
#: FleetFL's default poll interval (seconds) in the deployment engine (config key ``poll_interval``).
DEFAULT_POLL_INTERVAL = 0.2

DEFAULT_CONFIG_FILE = Path(__file__).with_name("default_config.yaml")


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key (and the file, if any)."""


def _meta(
    help_: str,
    *,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_min: bool = False,
) -> dict[str, Any]:
    return {
        "help": help_,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_min": exclusive_min,
    }


@dataclass(frozen=True)
class FederatedConfig:
    """Settings of one federated YOLO run (defaults: ``federated/default_config.yaml``)."""

    # --- model and rounds
    model: str = field(
        default="yolov9t.yaml",
        metadata=_meta(
            "ultralytics detection model yaml (yolov9t.yaml, yolov8n.yaml, yolo11n.yaml, a file path...), "
            "checked before use: layers, activation and arguments from allow-lists (federated/model_yaml.py)"
        ),
    )
    rounds: int = field(default=3, metadata=_meta("federated rounds", minimum=1))
    seed: int = field(
        default=0, metadata=_meta("seed of the initial model and of every client's round", minimum=0)
    )
    # --- local training (each client, each round)
    local_epochs: int = field(default=1, metadata=_meta("local epochs per round", minimum=1))
    imgsz: int = field(default=160, metadata=_meta("train/eval image size (pixels)", minimum=32))
    batch: int = field(default=16, metadata=_meta("local batch size", minimum=2))
    nbs: int = field(
        default=16,
        metadata=_meta(
            "ultralytics' nominal batch size: gradients are accumulated over about nbs images per "
            "optimizer step; 16 (= batch) steps every batch, ultralytics' 64 gives a small client very "
            "few steps per round",
            minimum=1,
        ),
    )
    optimizer: str = field(
        default="AdamW",
        metadata=_meta(
            "local optimizer (AdamW: what ultralytics' 'auto' picks for short runs; learns far faster from "
            "scratch than SGD here)",
            choices=OPTIMIZERS,
        ),
    )
    lr0: float = field(
        default=0.001,
        metadata=_meta("local learning rate at the start of the run", minimum=0.0, exclusive_min=True),
    )
    lrf: float = field(
        default=0.01,
        metadata=_meta(
            "final learning rate as a fraction of lr0: the local lr decays linearly over the whole run "
            "(rounds x local_epochs), as ultralytics' linear schedule does over epochs; 1 = constant",
            minimum=0.0,
            maximum=1.0,
            exclusive_min=True,
        ),
    )
    momentum: float = field(
        default=0.9, metadata=_meta("SGD momentum / Adam beta1", minimum=0.0, maximum=1.0)
    )
    weight_decay: float = field(default=0.0005, metadata=_meta("local weight decay", minimum=0.0))
    warmup_epochs: float = field(
        default=0.0,
        metadata=_meta(
            "ultralytics warmup per round (it restarts every round, so 0 by default)", minimum=0.0
        ),
    )
    mosaic: float = field(
        default=1.0, metadata=_meta("mosaic augmentation probability", minimum=0.0, maximum=1.0)
    )
    optimizer_state: str = field(
        default="reset",
        metadata=_meta(
            "local optimizer state between rounds: 'reset' (a fresh optimizer every round: stateless "
            "clients, a resumed run repeats an uninterrupted one exactly) or 'keep' (each client keeps "
            "its optimizer's moments in its Flower context across rounds; never sent; lost when the "
            "client restarts)",
            choices=OPTIMIZER_STATES,
        ),
    )
    send_weights: str = field(
        default="ema",
        metadata=_meta(
            "weights a client sends: 'ema' (ultralytics' exponential moving average, what it would ship) "
            "or 'raw' (the optimizer's last weights)",
            choices=SEND_WEIGHTS,
        ),
    )
    update_dtype: str = field(
        default="fp32",
        metadata=_meta(
            "weights on the wire, both ways: 'fp32' (exact) or 'fp16' (half the bytes; integer buffers "
            "stay exact; the server aggregates in fp32)",
            choices=UPDATE_DTYPES,
        ),
    )
    device: str = field(
        default="", metadata=_meta("torch device for clients and evaluation ('' = auto, 'cpu', '0')")
    )
    workers: int = field(default=0, metadata=_meta("data-loader workers per client", minimum=0))
    image_cache: str = field(
        default="none",
        metadata=_meta(
            "ultralytics' image cache for local training: 'none', 'disk' (decoded .npy files next to the "
            "images, reused by later rounds and processes) or 'ram' (rebuilt every round)",
            choices=IMAGE_CACHES,
        ),
    )
    # --- strategy (Flower)
    strategy: str = field(default="fedavg", metadata=_meta("server strategy", choices=STRATEGIES))
    fraction: float = field(
        default=1.0,
        metadata=_meta("fraction of clients sampled per round", minimum=0.0, maximum=1.0, exclusive_min=True),
    )
    min_clients: int = field(
        default=2,
        metadata=_meta("clients needed to start a round and usable updates needed to finish it", minimum=1),
    )
    server_lr: float = field(
        default=1.0, metadata=_meta("FedAvgM server learning rate", minimum=0.0, exclusive_min=True)
    )
    server_momentum: float = field(
        default=0.5,
        metadata=_meta(
            "FedAvgM server momentum (0.9 stalled YOLOv9t from scratch at mAP 0 for 13+ rounds where 0.5 "
            "matched FedAvg)",
            minimum=0.0,
            maximum=1.0,
        ),
    )
    proximal_mu: float = field(default=0.01, metadata=_meta("FedProx proximal weight mu", minimum=0.0))
    fedopt_eta: float = field(
        default=0.01, metadata=_meta("FedAdam/FedYogi server learning rate", minimum=0.0, exclusive_min=True)
    )
    fedopt_beta_1: float = field(
        default=0.9, metadata=_meta("FedAdam/FedYogi beta_1", minimum=0.0, maximum=1.0)
    )
    fedopt_beta_2: float = field(
        default=0.99, metadata=_meta("FedAdam/FedYogi beta_2", minimum=0.0, maximum=1.0)
    )
    fedopt_tau: float = field(
        default=0.001, metadata=_meta("FedAdam/FedYogi adaptivity tau", minimum=0.0, exclusive_min=True)
    )
    trim_beta: float = field(
        default=0.2, metadata=_meta("FedTrimmedAvg fraction cut at each end", minimum=0.0, maximum=0.5)
    )
    krum_byzantine: int = field(
        default=0, metadata=_meta("Krum: number of malicious clients tolerated", minimum=0)
    )
    # --- safety and timing
    max_update_norm: float = field(
        default=0.0,
        metadata=_meta(
            "reject a client update whose L2 norm (update minus global weights) is above this; 0 = no bound",
            minimum=0.0,
        ),
    )
    # --- differential privacy
    dp: str = field(
        default="none",
        metadata=_meta(
            "differential privacy: 'central-fixed' / 'central-adaptive' (the server clips each update to "
            "clipping_norm, fixed or adapted each round, averages them unweighted and adds Gaussian noise), "
            "'local' (each client clips and noises its own update), 'none'",
            choices=DP_MODES,
        ),
    )
    noise_multiplier: float = field(
        default=1.0,
        metadata=_meta(
            "DP noise standard deviation as a multiple of clipping_norm (central: of clipping_norm / "
            "min_clients)",
            minimum=0.0,
            exclusive_min=True,
        ),
    )
    clipping_norm: float = field(
        default=10.0,
        metadata=_meta(
            "DP: L2 bound of one client's update (the packed weights minus the global ones); "
            "central-adaptive: its initial value",
            minimum=0.0,
            exclusive_min=True,
        ),
    )
    target_delta: float = field(
        default=1e-5,
        metadata=_meta(
            "DP: delta at which the spent epsilon is reported (about 1 / number of clients or less)",
            minimum=0.0,
            maximum=0.5,
            exclusive_min=True,
        ),
    )
    rollback_threshold: float = field(
        default=0.0,
        metadata=_meta(
            "roll a round back to the best checkpoint when its global mAP50-95 is more than this fraction "
            "below the best so far (0.1 = 10%); 0 = off",
            minimum=0.0,
            maximum=1.0,
        ),
    )
    round_timeout: float = field(
        default=3600.0,
        metadata=_meta("seconds to wait for clients per round", minimum=0.0, exclusive_min=True),
    )
    poll_interval: float = field(
        default=DEFAULT_POLL_INTERVAL,
        metadata=_meta(
            "deployment engine: seconds between polls for messages, by the ServerApp (replies) and by "
            "each SuperNode (work); Flower 1.42 hard-codes 3 s, which dominates short rounds; 3 keeps "
            "Flower's own",
            minimum=0.0,
            maximum=FLOWER_POLL_INTERVAL,
            exclusive_min=True,
        ),
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            _check_value(spec, getattr(self, spec.name))
        if self.strategy == "krum" and self.min_clients < 2 * self.krum_byzantine + 3:
            raise ConfigError(
                f"krum_byzantine: Krum with {self.krum_byzantine} malicious client(s) needs "
                f"min_clients >= {2 * self.krum_byzantine + 3}, got {self.min_clients}"
            )
        if self.dp.startswith("central") and self.strategy not in CENTRAL_DP_STRATEGIES:
            raise ConfigError(
                f"dp: {self.dp} calibrates its noise for the plain mean of clipped updates; strategy "
                f"{self.strategy!r} aggregates otherwise "
                f"(use {' or '.join(CENTRAL_DP_STRATEGIES)}, or dp=local)"
            )
        if self.dp == "central-adaptive" and self.noise_multiplier >= self.min_clients / 10:
            # Flower's adaptive clipping spends noise of std min_clients/20 on the clipped count, and
            # the whole budget must exceed it (Andrew et al. 2021)
            raise ConfigError(
                f"noise_multiplier: dp=central-adaptive with min_clients={self.min_clients} needs "
                f"noise_multiplier < min_clients / 10 = {self.min_clients / 10:g}, "
                f"got {self.noise_multiplier:g} (more clients per round, or dp=central-fixed)"
            )

    # ------------------------------------------------------------------ conversions
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """All configuration keys, in declaration order."""
        return tuple(spec.name for spec in fields(cls))

    def to_flat(self) -> dict[str, Scalar]:
        """The config as a flat ``{key: scalar}`` dict (Flower run config, ClearML parameters)."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], source: str = "config") -> FederatedConfig:
        """Build a config from a flat mapping; unknown keys or bad values raise :class:`ConfigError`.

        Strings are converted to each field's type (so Flower run-config and ``--set`` strings work).
        """
        specs = {spec.name: spec for spec in fields(cls)}
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(specs)})")
        converted = {key: _convert(specs[key], value, source) for key, value in values.items()}
        try:
            return cls(**converted)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> FederatedConfig:
        """A copy with ``changes`` applied (validated like any other input)."""
        return self.from_flat({**self.to_flat(), **changes}, source="replace")

    def with_overrides(self, assignments: Iterable[str]) -> FederatedConfig:
        """Apply ``--set KEY=VALUE`` strings (values are read as YAML scalars: ``rounds=5``)."""
        values = self.to_flat()
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            if key not in values:
                raise ConfigError(f"--set {item!r}: unknown key {key!r} (known keys: {', '.join(values)})")
            values[key] = raw.strip()
        return self.from_flat(values, source="--set")

    # ------------------------------------------------------------------ files
    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()
    ) -> FederatedConfig:
        """Load a YAML file (``None``: the defaults) and apply ``--set`` overrides."""
        if path is None:
            return cls().with_overrides(overrides)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({exc})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
        bad = [key for key in data if not isinstance(key, str)]
        if bad:
            raise ConfigError(f"{path}: key {bad[0]!r} is not a string")
        return cls.from_flat(data, source=str(path)).with_overrides(overrides)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as YAML atomically (temp file + ``os.replace``)."""
        path = Path(path)
        text = yaml.safe_dump(self.to_flat(), sort_keys=False)
        atomic_write_text(path, text)
        return path

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(key, default, help)`` rows for documentation and ``--help``."""
        return [(spec.name, repr(spec.default), spec.metadata["help"]) for spec in fields(cls)]


# ---------------------------------------------------------------------- helpers
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _convert(spec: dataclasses.Field[Any], value: Any, source: str) -> Any:
    kind = type(spec.default)
    if isinstance(value, str) and kind is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{source}: {spec.name}: cannot read {value!r} as {kind.__name__}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-5' (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: {spec.name}: expected {kind.__name__}, got {value!r}")


def _check_value(spec: dataclasses.Field[Any], value: Any) -> None:
    meta = spec.metadata
    name = spec.name
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(meta['choices'])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    low, high = meta["minimum"], meta["maximum"]
    if low is not None and (value < low or (meta["exclusive_min"] and value == low)):
        relation = ">" if meta["exclusive_min"] else ">="
        raise ConfigError(f"{name}: must be {relation} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: must be <= {high}, got {value!r}")
    if name == "model":
        # every path to a config (file, --set, run.json, ClearML and pipeline parameters) ends here:
        # the yaml is read as data and checked before anything hands it to ultralytics
        try:
            check_model(value)
        except ModelYamlError as exc:
            raise ConfigError(f"model: {exc}") from None
