"""Component ``evaluate_register``: evaluate a candidate model and register it in the model registry.

The candidate's weights (a local path, a URL, or a ClearML model id) are evaluated on the held-out
evaluation version (a ClearML Dataset id from ``version_data``) with ultralytics' validator
(``federated.yolo_task.evaluate``), then registered as a ClearML ``OutputModel`` with

* tags: ``candidate`` (by default; the monitor moves it to ``production`` or ``rolled-back``),
* metadata: ``map50``, ``map50_95`` (floats), ``per_class`` (JSON), ``eval_dataset_id``,
  ``weights_source``, ``model_yaml``, ``status`` (``candidate``),
* design: the flat federated config used (model yaml, image size...), and the task's scalars
  ``eval/map50`` and ``eval/map50_95``.

Weights formats (tensors only, see ``federated/weights_file.py``): FleetFL checkpoints
(``.safetensors``, the ``federated/run_dir.py`` format, tensor names ``model/<state_dict key>``, or
plain state_dict names), ``.npz`` archives of state_dict entries, and ``.pt`` files (a state_dict, or
an ultralytics checkpoint such as ``final.pt``) read by FleetFL's restricted unpickler: it imports and
calls no class or function named in the file, so a registry model or a downloaded file cannot run
code; the model is built from the config's checked model yaml, never from the file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common import DEFAULT_PROJECT, ComponentError

if TYPE_CHECKING:
    from clearml import Task

    from federated.config import FederatedConfig

LOG = logging.getLogger(__name__)

CANDIDATE_TAG = "candidate"
DEFAULT_MODEL_NAME = "fleetfl-yolo"
_MODEL_ID = re.compile(r"^[0-9a-f]{32}$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class WeightsError(ComponentError):
    """Weights that cannot be found, read or matched to the model."""


# ---------------------------------------------------------------------- public API
def evaluate_register(
    weights: str,
    eval_dataset_id: str,
    project: str = DEFAULT_PROJECT,
    model_name: str = DEFAULT_MODEL_NAME,
    tags: Sequence[str] = (CANDIDATE_TAG,),
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` on the evaluation version and register the model with its metrics.

    Args:
        weights: local path, URL (``http(s)://``, ``s3://``, ``file://``...) or ClearML model id.
        eval_dataset_id: ClearML Dataset id of the held-out split (``version_data(...)["eval"]``).
        project: ClearML project of the registered model.
        model_name: registry name.
        tags: model tags (``candidate`` by default).
        config: flat federated config (``model``, ``imgsz``, ``batch``, ``device``...); default values
            for missing keys.

    Returns:
        ``{"model_id", "map50", "map50_95", "per_class", "weights_file"}``.
    """
    from components.common import prepare_process
    from components.version_data import fetch_dataset
    from federated.config import FederatedConfig

    cfg = FederatedConfig.from_flat(dict(config or {}), source="config")
    prepare_process(with_ultralytics=True)
    local = resolve_weights(weights)
    data_yaml = fetch_dataset(eval_dataset_id) / "data.yaml"
    from federated.yolo_task import build_model, evaluate, read_dataset

    names = read_dataset(data_yaml).names
    weight_list = load_weights(local, build_model(cfg.model, names, cfg.seed))
    result = evaluate(weight_list, data_yaml, cfg)
    metrics = {"map50": result.map50, "map50_95": result.map50_95, "per_class": result.per_class}
    LOG.info(
        "evaluate_register: %s on %s: mAP50 %.4f, mAP50-95 %.4f",
        weights,
        eval_dataset_id,
        result.map50,
        result.map50_95,
    )
    model_id = register_model(
        local,
        metrics,
        project=project,
        model_name=model_name,
        tags=tags,
        config=cfg,
        extra_metadata={"eval_dataset_id": eval_dataset_id, "weights_source": str(weights)},
    )
    return {"model_id": model_id, **metrics, "weights_file": str(local)}


def register_model(
    weights_file: str | Path,
    metrics: Mapping[str, Any],
    *,
    project: str = DEFAULT_PROJECT,
    model_name: str = DEFAULT_MODEL_NAME,
    tags: Sequence[str] = (CANDIDATE_TAG,),
    config: FederatedConfig | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    task: Task | None = None,
) -> str:
    """Register ``weights_file`` as an ``OutputModel`` with its metrics as metadata; return its id.

    The model belongs to ``task`` (default: the current task if it is in ``project``, else a new
    ``evaluate_register`` task in ``project``); the file is uploaded to the task's output
    destination (the files server by default).
    """
    from clearml import OutputModel, Task
    from clearml.backend_api import Session

    if not {"map50", "map50_95"} <= set(metrics):
        raise ComponentError("metrics: 'map50' and 'map50_95' are required")
    owned = False
    if task is None:
        task = Task.current_task()
        # a model belongs to its task's project, and the registry is queried by exact project: a
        # pipeline step (in "<project>/.pipelines/...") registers through a task of its own
        if task is not None and task.get_project_name() != project:
            task = None
    if task is None:
        task = Task.create(project_name=project, task_name="evaluate_register", task_type="qc")
        task.mark_started(force=True)
        owned = True
    model = OutputModel(
        task=task,
        name=model_name,
        tags=list(tags),
        framework="PyTorch",
        config_dict=config.to_flat() if config is not None else None,
    )
    model.update_weights(
        weights_filename=str(weights_file),
        upload_uri=task.output_uri or Session.get_files_server_host(),
        auto_delete_file=False,
        async_enable=False,
    )
    entries: dict[str, tuple[Any, str]] = {
        "map50": (float(metrics["map50"]), "float"),
        "map50_95": (float(metrics["map50_95"]), "float"),
        "per_class": (json.dumps(metrics.get("per_class") or {}, sort_keys=True), "str"),
        "status": ("candidate" if CANDIDATE_TAG in tags else "registered", "str"),
        "source_task_id": (task.id, "str"),
    }
    if config is not None:
        entries["model_yaml"] = (config.model, "str")
    for key, value in (extra_metadata or {}).items():
        entries[key] = (value, "str")
    for key, (value, kind) in entries.items():
        model.set_metadata(key, value, kind)
    logger = task.get_logger()
    logger.report_single_value("eval/map50", float(metrics["map50"]))
    logger.report_single_value("eval/map50_95", float(metrics["map50_95"]))
    logger.report_text(f"registered model {model.id} ({model_name}, tags {list(tags)}) with {dict(metrics)}")
    logger.flush()
    if owned:
        task.mark_completed(force=True)
    return model.id


def resolve_weights(weights: str | Path) -> Path:
    """A local file for ``weights``: a path as is, a URL downloaded, a model id from the registry."""
    from clearml import InputModel, StorageManager

    text = str(weights).strip()
    if not text:
        raise WeightsError("weights: empty (expected a path, a URL or a ClearML model id)")
    if _MODEL_ID.match(text) and not Path(text).exists():
        try:
            local = InputModel(model_id=text).get_local_copy(raise_on_error=True)
        except Exception as exc:
            raise WeightsError(f"weights: cannot fetch ClearML model {text} ({exc})") from None
    elif _URL.match(text) and not text.startswith("file://"):
        local = StorageManager.get_local_copy(text, extract_archive=False)
        if not local:
            raise WeightsError(f"weights: cannot download {text}")
    else:
        local = text.removeprefix("file://")
    path = Path(local)
    if not path.is_file():
        raise WeightsError(f"weights: {path} is not a file")
    return path


def load_weights(path: Path, model: Any) -> list[np.ndarray]:
    """Read ``path`` (safetensors, npz or ``.pt``, tensors only) into ``model``'s state_dict order.

    Raises:
        WeightsError: unreadable file, missing or extra keys, or a shape mismatch (named).
    """
    named = _read_named_arrays(path)
    if all(key.startswith("model/") for key in named if not key.startswith("strategy/")):
        named = {k.removeprefix("model/"): v for k, v in named.items() if k.startswith("model/")}
    state = model.state_dict()
    missing = [key for key in state if key not in named]
    extra = [key for key in named if key not in state]
    if missing or extra:
        raise WeightsError(
            f"{path}: does not match the model ({len(missing)} missing, {len(extra)} unexpected keys; first "
            f"missing {missing[:1]}, first unexpected {extra[:1]}): check the config's 'model'"
        )
    arrays = []
    for key, tensor in state.items():
        array = np.asarray(named[key])
        if array.size != tensor.numel():
            raise WeightsError(
                f"{path}: {key} has shape {array.shape}, the model expects {tuple(tensor.shape)}"
            )
        arrays.append(array.reshape(tuple(tensor.shape)))  # safetensors stores 0-d arrays as (1,)
    return arrays


def _read_named_arrays(path: Path) -> dict[str, np.ndarray]:
    from federated.weights_file import WeightsFileError, read_named_arrays

    try:
        return read_named_arrays(path)
    except WeightsFileError as exc:
        raise WeightsError(str(exc)) from None


# ---------------------------------------------------------------------- task entry point
DEFAULTS: dict[str, Any] = {
    "weights": "",
    "eval_dataset_id": "",
    "project": DEFAULT_PROJECT,
    "model_name": DEFAULT_MODEL_NAME,
    "tags": [CANDIDATE_TAG],
}


def main() -> None:
    """``python -m components.evaluate_register``: run as a ClearML task (``General`` + ``federated``)."""
    from components.common import connect_config, init_component_task, publish_output

    task, params = init_component_task("evaluate_register", DEFAULTS, task_type="qc")
    config = connect_config(task)
    output = evaluate_register(
        weights=params["weights"],
        eval_dataset_id=params["eval_dataset_id"],
        project=params["project"],
        model_name=params["model_name"],
        tags=tuple(params["tags"]),
        config=config.to_flat(),
    )
    publish_output(task, output)
    print(json.dumps({k: output[k] for k in ("model_id", "map50", "map50_95")}))


if __name__ == "__main__":
    main()
