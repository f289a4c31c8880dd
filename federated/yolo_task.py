"""The YOLO side of federated learning, free of Flower: model, weights, local training, evaluation.

* Weights travel as a list of numpy arrays: every ``state_dict`` entry in order, BatchNorm running
  statistics and ``num_batches_tracked`` included, so a round trip is bitwise exact.
* Local training uses ultralytics' own :class:`DetectionTrainer` through a subclass
  (:class:`FederatedTrainer`) whose ``get_model`` loads the global weights strictly: ``train()`` on a
  yaml-built model would otherwise start from new random weights and silently ignore them.
  The subclass also applies FedProx's proximal term, skips the per-round validation and pickled
  ``last.pt``/``best.pt`` (the server evaluates centrally; weights leave as numpy arrays).
* Evaluation uses ultralytics' :class:`DetectionValidator` on a fresh copy of the model (validation
  fuses the model in place).

Per process, the parsed model (one per yaml and class count) and the validators (with their data
loaders) are cached, so that a client or server that runs many rounds pays their set-up once.
"""

from __future__ import annotations

import atexit
import copy
import functools
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from federated.config import FederatedConfig, atomic_write_bytes
from federated.model_yaml import load_checked

if TYPE_CHECKING:  # heavy imports stay lazy: the CLI must start without torch
    import torch
    from ultralytics.nn.tasks import DetectionModel

LOG = logging.getLogger(__name__)

NDArrays = list[np.ndarray]


class DatasetError(ValueError):
    """A data.yaml that cannot be used (missing file, no class names)."""


# ---------------------------------------------------------------------- dataset and model
@dataclass(frozen=True)
class DatasetInfo:
    """What a client or the server needs to know about a YOLO-format ``data.yaml``."""

    path: Path
    names: dict[int, str]

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)


def read_dataset(data_yaml: str | Path) -> DatasetInfo:
    """Read a ``data.yaml`` (ultralytics format) and return its class names.

    Raises:
        DatasetError: the file is missing, has no ``names``, or has a ``download`` script.
    """
    path = Path(data_yaml).resolve()
    if not path.is_file():
        raise DatasetError(f"data.yaml not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if isinstance(data, dict) and "download" in data:
        # ultralytics runs a data.yaml's `download` (exec of Python, or a shell command) when a split
        # is missing: a dataset from a server or a user must never carry one
        raise DatasetError(f"{path}: download: not allowed (ultralytics would run it as code)")
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DatasetError(f"{path}: 'names' must be a non-empty list or mapping of class names")
    return DatasetInfo(path=path, names={int(k): str(v) for k, v in names.items()})


def count_images(data_yaml: str | Path, split: str = "train") -> int:
    """Number of images in one split of a ``data.yaml`` (a folder, a list of folders or a .txt list)."""
    from ultralytics.data.utils import IMG_FORMATS

    path = Path(data_yaml).resolve()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    root = Path(data.get("path") or path.parent)
    root = root if root.is_absolute() else (path.parent / root)
    entries = data.get(split) or []
    total = 0
    for entry in entries if isinstance(entries, list) else [entries]:
        target = Path(entry) if Path(entry).is_absolute() else root / entry
        if target.is_dir():
            total += sum(1 for p in target.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
        elif target.is_file():
            total += sum(1 for line in target.read_text(encoding="utf-8").splitlines() if line.strip())
    return total


@functools.lru_cache(maxsize=4)
def _model_template(model_yaml: str, nc: int, seed: int) -> DetectionModel:
    import torch
    from ultralytics.nn.tasks import DetectionModel, guess_model_scale

    # ultralytics gets the checked dict, never the file: what it parses is what was checked
    cfg = load_checked(model_yaml)
    cfg["scale"] = guess_model_scale(model_yaml)  # as ultralytics' yaml_model_load does
    cfg["yaml_file"] = model_yaml
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DetectionModel(cfg, nc=nc, ch=3, verbose=False)


def build_model(model_yaml: str, names: Mapping[int, str], seed: int = 0) -> DetectionModel:
    """Build a detection model from an ultralytics yaml with ``len(names)`` classes.

    The yaml passes :func:`federated.model_yaml.load_checked` first (no string in it reaches
    ultralytics' ``eval`` or a global lookup outside the allow-lists). The same
    ``(model_yaml, names, seed)`` always gives bitwise the same initial weights; the parsed model is
    cached per process and a deep copy is returned.
    """
    model = copy.deepcopy(_model_template(model_yaml, len(names), seed))
    model.names = dict(names)
    model.nc = len(names)
    return model


def state_keys(model: torch.nn.Module) -> list[str]:
    """The ``state_dict`` keys, in the order :func:`get_weights` uses."""
    return list(model.state_dict().keys())


def get_weights(model: torch.nn.Module) -> NDArrays:
    """All ``state_dict`` entries as numpy arrays (copies, on the CPU, in their own dtype)."""
    return [value.detach().cpu().numpy().copy() for value in model.state_dict().values()]


def set_weights(model: torch.nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load ``weights`` (as from :func:`get_weights`) into ``model``, strictly.

    Each array is cast to the dtype of the tensor it replaces; integer tensors
    (``num_batches_tracked``) are rounded first, since averaging turns them into floats.

    Raises:
        ValueError: the number of arrays or a shape does not match the model.
    """
    import torch

    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(state)} state_dict entries")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(
                f"{key}: shape {tuple(array.shape)} does not match the model's {tuple(current.shape)}"
            )
        if not current.dtype.is_floating_point and array.dtype.kind == "f":
            array = np.rint(array)
        new_state[key] = torch.tensor(array).to(current.dtype)  # a copy: message buffers may be read-only
    model.load_state_dict(new_state, strict=True)


def buffer_mask(model: torch.nn.Module) -> list[bool]:
    """Per ``state_dict`` entry (``get_weights`` order): ``True`` for statistics, not trainable parameters.

    BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` are buffers: averaging
    suits them, a server optimizer's step does not (see ``federated.strategies``).
    """
    parameters = {name for name, _ in model.named_parameters()}
    return [key not in parameters for key in model.state_dict()]


def named_weights(keys: Sequence[str], weights: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Pair arrays with their ``state_dict`` keys (for checkpoints)."""
    if len(keys) != len(weights):
        raise ValueError(f"{len(keys)} keys for {len(weights)} arrays")
    return dict(zip(keys, weights, strict=True))


# ---------------------------------------------------------------------- local training
@dataclass
class TrainResult:
    """What one client's local training returns."""

    weights: NDArrays
    num_examples: int
    train_loss: float
    seconds: float
    loss_items: dict[str, float] = field(default_factory=dict)
    #: the local optimizer's state at the end (``config.optimizer_state == "keep"``), else ``None``
    optimizer_state: dict[str, np.ndarray] | None = None
    #: optimizer steps carried into this round from the previous one (0: a fresh optimizer)
    resumed_steps: int = 0


def optimizer_state_arrays(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """An optimizer's per-parameter state as named numpy arrays: ``"<param index>/<name>"``.

    Adam-type optimizers hold ``step``, ``exp_avg`` and ``exp_avg_sq``, SGD ``momentum_buffer``.
    Hyperparameters (learning rate, betas, the schedule's ``initial_lr``) are not included: they
    belong to the round, not to the client's history.
    """
    arrays: dict[str, np.ndarray] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if hasattr(value, "detach"):
                arrays[f"{index}/{name}"] = value.detach().cpu().numpy().copy()
            elif value is not None:
                arrays[f"{index}/{name}"] = np.asarray(value)
    return arrays


def load_optimizer_state(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]) -> int:
    """Load per-parameter state saved by :func:`optimizer_state_arrays`, keeping the fresh hyperparameters.

    Returns:
        The optimizer steps the state carries (``step``, Adam-type optimizers; 0 for SGD's momentum).

    Raises:
        ValueError: the state does not fit this optimizer's parameters (a key, parameter index or
            shape that differs); the optimizer is left unchanged.
    """
    import torch

    params = [param for group in optimizer.param_groups for param in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, array in arrays.items():
        index_text, _, name = key.partition("/")
        if not index_text.isdigit() or not name:
            raise ValueError(f"optimizer state: bad key {key!r}")
        index = int(index_text)
        if index >= len(params):
            raise ValueError(f"optimizer state: parameter {index} of an optimizer with {len(params)}")
        array = np.asarray(array)
        expected = tuple(params[index].shape)
        if array.ndim and tuple(array.shape) != expected:
            raise ValueError(f"optimizer state {key}: shape {tuple(array.shape)}, parameter has {expected}")
        state.setdefault(index, {})[name] = torch.tensor(array)
    current = optimizer.state_dict()
    current["state"] = state
    optimizer.load_state_dict(current)
    steps = [float(entry["step"]) for entry in state.values() if "step" in entry]
    return int(max(steps)) if steps else 0


def _make_trainer_class() -> type:
    """Define :class:`FederatedTrainer` lazily (it subclasses ultralytics' trainer)."""
    import torch

    from federated import label_cache

    label_cache.install()  # a dataset's labels.cache is read without unpickling code
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.patches import override_configs

    class FederatedTrainer(DetectionTrainer):
        """ultralytics' detection trainer, started from given weights, with FedProx and no local eval.

        Args:
            initial_weights: the global weights (``get_weights`` order) that training starts from.
            proximal_mu: FedProx's mu; ``0`` trains plain local SGD.
            overrides: ultralytics train arguments.
            optimizer_state: the client's optimizer state from its previous round
                (:func:`optimizer_state_arrays`), loaded into the fresh optimizer; ``None`` starts fresh.
        """

        def __init__(
            self,
            initial_weights: Sequence[np.ndarray],
            proximal_mu: float = 0.0,
            overrides: dict[str, Any] | None = None,
            _callbacks: Any = None,
            optimizer_state: Mapping[str, np.ndarray] | None = None,
        ) -> None:
            self.initial_weights = initial_weights
            self.proximal_mu = float(proximal_mu)
            self.initial_optimizer_state = optimizer_state
            self.resumed_steps = 0
            self._global_params: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
            super().__init__(overrides=overrides, _callbacks=_callbacks)

        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> DetectionModel:
            """Build the model from the (cached) yaml template and load the global weights, strictly."""
            model = build_model(str(cfg), self.data["names"])
            set_weights(model, self.initial_weights)
            return model

        def _setup_train(self) -> None:
            super()._setup_train()
            if self.initial_optimizer_state:
                try:
                    self.resumed_steps = load_optimizer_state(self.optimizer, self.initial_optimizer_state)
                except ValueError as exc:  # e.g. a client whose previous round used another model
                    LOG.warning("starting a fresh optimizer: %s", exc)
            if self.proximal_mu > 0:
                reference = dict(zip(state_keys(self.model), self.initial_weights, strict=True))
                self._global_params = [
                    (param, torch.tensor(np.asarray(reference[name])).to(param.device, param.dtype))
                    for name, param in self.model.named_parameters()
                    if param.requires_grad
                ]

        def optimizer_step(self) -> None:
            """Add FedProx's gradient ``mu * (w - w_global)`` before ultralytics' own step.

            This is the gradient of the proximal term ``mu/2 * ||w - w_global||^2`` added to the loss of
            every optimizer step. Gradients are still multiplied by the AMP scaler's factor here (the
            parent unscales them), so the term is scaled the same way.
            """
            if self._global_params:
                scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
                with torch.no_grad():
                    for param, reference in self._global_params:
                        if param.grad is not None:
                            param.grad.add_(param.detach() - reference, alpha=self.proximal_mu * scale)
            super().optimizer_step()

        def get_dataloader(
            self, dataset_path: Any, batch_size: int = 16, rank: int = 0, mode: str = "train"
        ) -> Any:
            """The train loader as ultralytics builds it; the (unused) val loader without worker processes."""
            if mode == "train":
                return super().get_dataloader(dataset_path, batch_size, rank, mode)
            with override_configs(self.args, {"workers": 0}):
                return super().get_dataloader(dataset_path, batch_size, rank, mode)

        def validate(self) -> tuple[dict[str, float], None]:
            """No local validation: the server evaluates the global model on the held-out split."""
            return {}, None

        def save_model(self) -> bool:
            """No pickled ``last.pt``/``best.pt``: the weights leave as numpy arrays."""
            return False

        def final_eval(self) -> None:
            """Nothing to re-validate (see :meth:`validate`)."""

        def plot_training_labels(self) -> None:
            """No plots for a federated round."""

    return FederatedTrainer


@functools.cache
def trainer_class() -> type:
    """The :class:`FederatedTrainer` class (created on first use, after ultralytics is imported)."""
    return _make_trainer_class()


@functools.cache
def _client_work_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="fleetfl-client-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def round_learning_rate(config: FederatedConfig, server_round: int) -> tuple[float, float]:
    """ultralytics' ``(lr0, lrf)`` for one round, so that the run follows one linear schedule.

    Over the run's ``T = rounds x local_epochs`` epochs the learning rate falls linearly from
    ``config.lr0`` to ``config.lr0 x config.lrf``, epoch by epoch, exactly as one ultralytics training
    of ``T`` epochs with the same ``lr0``/``lrf`` would (its linear ``lf``). Round ``r`` covers
    epochs ``(r-1) x local_epochs`` to ``r x local_epochs``: it starts at the schedule's value there
    and its own linear decay ends where round ``r + 1`` starts. Rounds beyond ``rounds`` (a resumed
    run given more rounds follows the new total) keep the final rate.
    """
    total = config.rounds * config.local_epochs

    def schedule(epoch: float) -> float:
        return max(1.0 - epoch / total, 0.0) * (1.0 - config.lrf) + config.lrf

    start = (max(server_round, 1) - 1) * config.local_epochs
    first, last = schedule(start), schedule(start + config.local_epochs)
    return config.lr0 * first, last / first


def train_args(
    config: FederatedConfig, data_yaml: str | Path, seed: int, work_dir: Path, server_round: int = 1
) -> dict[str, Any]:
    """ultralytics train arguments for one local round, every choice explicit.

    ``lr0``/``lrf`` place the round on the run's linear schedule (:func:`round_learning_rate`), so a
    round does not restart the decay; ``close_mosaic=0`` keeps ``mosaic`` as configured (with
    ``epochs <= 10`` it would be off all round); ``pretrained=False`` and ``amp=False`` avoid weight
    downloads.
    """
    lr0, lrf = round_learning_rate(config, server_round)
    return {
        "model": config.model,
        "data": str(data_yaml),
        "epochs": config.local_epochs,
        "imgsz": config.imgsz,
        "batch": config.batch,
        "nbs": config.nbs,
        "workers": config.workers,
        "cache": False if config.image_cache == "none" else config.image_cache,
        "device": config.device or None,
        "optimizer": config.optimizer,
        "lr0": lr0,
        "lrf": lrf,
        "cos_lr": False,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "warmup_epochs": config.warmup_epochs,
        "mosaic": config.mosaic,
        "close_mosaic": 0,
        "seed": seed,
        "deterministic": True,
        "pretrained": False,
        "amp": False,
        "val": False,
        "plots": False,
        "save": False,
        "verbose": False,
        "project": str(work_dir),
        "name": "round",
        "exist_ok": True,
    }


def round_seed(base_seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's local round: a pure function, so a resumed run repeats it exactly."""
    return (base_seed * 1_000_003 + server_round * 1_009 + partition_id) % (2**31 - 1)


def train_local(
    weights: Sequence[np.ndarray],
    data_yaml: str | Path,
    config: FederatedConfig,
    *,
    seed: int,
    server_round: int = 1,
    proximal_mu: float = 0.0,
    work_dir: Path | None = None,
    callbacks: Mapping[str, Callable[[Any], None]] | None = None,
    optimizer_state: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train locally for ``config.local_epochs`` starting exactly from ``weights``.

    Args:
        weights: global weights (``get_weights`` order).
        data_yaml: the client's ``data.yaml`` (its ``train`` split is used).
        config: the run's configuration.
        seed: seed of this round (see :func:`round_seed`).
        server_round: the round (from 1): its place on the learning-rate schedule.
        proximal_mu: FedProx's mu (the proximal term is added to every optimizer step's loss).
        work_dir: where ultralytics writes its small run files (default: a per-process temp dir).
        callbacks: extra ultralytics callbacks ``{event: fn(trainer)}`` (tests use ``on_train_start``).
        optimizer_state: with ``config.optimizer_state == "keep"``, this client's optimizer state
            from its previous round (``TrainResult.optimizer_state``); ignored with ``"reset"``.

    Returns:
        The trained weights (fp32 EMA or raw, as ``config.send_weights`` says), the number of training
        images, the mean training loss of the last epoch, the wall-clock seconds of ``train()`` and,
        with ``optimizer_state="keep"``, the optimizer's state for the next round.
    """
    keep = config.optimizer_state == "keep"
    info = read_dataset(data_yaml)
    args = train_args(config, info.path, seed, work_dir or _client_work_dir(), server_round)
    trainer = trainer_class()(
        initial_weights=list(weights),
        proximal_mu=proximal_mu,
        overrides=args,
        optimizer_state=optimizer_state if keep else None,
    )
    for event, callback in (callbacks or {}).items():
        trainer.add_callback(event, callback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    source = trainer.ema.ema if config.send_weights == "ema" else trainer.model
    new_weights = [
        array.astype(np.float32) if array.dtype.kind == "f" else array for array in get_weights(source)
    ]
    loss_items = {str(k): float(v) for k, v in (trainer.tloss or {}).items()}
    return TrainResult(
        weights=new_weights,
        num_examples=len(trainer.train_loader.dataset),
        train_loss=float(sum(loss_items.values())) if loss_items else math.nan,
        seconds=seconds,
        loss_items=loss_items,
        optimizer_state=optimizer_state_arrays(trainer.optimizer) if keep else None,
        resumed_steps=trainer.resumed_steps,
    )


# ---------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Central evaluation of a model on a held-out split."""

    map50: float
    map50_95: float
    per_class: dict[str, dict[str, float]]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"map50": self.map50, "map50_95": self.map50_95, "per_class": self.per_class}


_VALIDATORS: dict[tuple[str, int, int, str], Any] = {}


def _validator(data_yaml: Path, imgsz: int, batch: int, device: str) -> Any:
    """A cached ultralytics validator: its data loader is built once per process."""
    from ultralytics.models.yolo.detect import DetectionValidator

    from federated import label_cache

    label_cache.install()  # a dataset's labels.cache is read without unpickling code
    key = (str(data_yaml), imgsz, batch, device)
    if key not in _VALIDATORS:
        args = {
            "data": str(data_yaml),
            "imgsz": imgsz,
            "batch": batch,
            "device": device or None,
            "split": "val",
            "plots": False,
            "save_json": False,
            "verbose": False,
            "half": False,
            "workers": 0,
            "project": str(_client_work_dir()),
            "name": "val",
            "exist_ok": True,
        }
        _VALIDATORS[key] = DetectionValidator(args=args)
    return _VALIDATORS[key]


def evaluate(weights: Sequence[np.ndarray], data_yaml: str | Path, config: FederatedConfig) -> EvalResult:
    """Evaluate ``weights`` on the ``val`` split of ``data_yaml`` with ultralytics' validator.

    The validator fuses the model it is given, so it gets a fresh copy; ``weights`` are not changed.
    """
    info = read_dataset(data_yaml)
    model = build_model(config.model, info.names)
    set_weights(model, weights)
    model.args = {"imgsz": config.imgsz, "task": "detect"}
    validator = _validator(info.path, config.imgsz, config.batch, config.device)
    start = time.perf_counter()
    stats = validator(model=model)
    metrics = validator.metrics
    per_class: dict[str, dict[str, float]] = {}
    for index, class_id in enumerate(metrics.ap_class_index):
        ap = metrics.box.all_ap[index]
        per_class[info.names[int(class_id)]] = {"map50": float(ap[0]), "map50_95": float(ap.mean())}
    return EvalResult(
        map50=float(stats.get("metrics/mAP50(B)", 0.0)),
        map50_95=float(stats.get("metrics/mAP50-95(B)", 0.0)),
        per_class=per_class,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------- export
def export_ultralytics(
    weights: Sequence[np.ndarray],
    names: Mapping[int, str],
    config: FederatedConfig,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``weights`` as an ultralytics checkpoint (``YOLO(path)`` loads it), atomically.

    The dict has the keys ultralytics' own (optimizer-stripped) checkpoints have; the model is kept in
    fp32 so the file holds exactly the final global weights. ``.pt`` files are pickles by design: only
    load ones you made (FleetFL's own checkpoints are safetensors).
    """
    import io
    from datetime import datetime

    import torch
    import ultralytics

    model = build_model(config.model, names)
    set_weights(model, weights)
    train_args_ = {
        "task": "detect",
        "model": config.model,
        "imgsz": config.imgsz,
        "batch": config.batch,
        "epochs": config.local_epochs * config.rounds,
    }
    model.args = train_args_
    model.task = "detect"
    checkpoint = {
        "date": datetime.now(UTC).isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": model.eval(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args_,
        "train_metrics": dict(metadata or {}),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
