"""What every FleetFL component shares: its ClearML task, its parameters and its output.

A component is a plain function (``version_data``, ``evaluate_register``, ``decide``...) plus a
``main()`` entry point that runs it as a ClearML task::

    task, params = init_component_task("version_data", DEFAULTS, task_type="data_processing")
    output = version_data(**params)
    publish_output(task, output)

* **Parameters** are connected to the task (section ``General``; the federated run settings in
  section :data:`CONFIG_SECTION`, built from :class:`federated.config.FederatedConfig`), so that a
  clone edited in the UI or with ``Task.set_parameters`` runs with the edited values: when an agent
  runs the task, ``connect`` returns the values stored on the server, cast to the defaults' types.
* **Code on agents** (the "script entry" approach): a component task carries only its entry
  script (``components/<name>.py``, stored as a standalone script, no repository link), and the
  agent finds the FleetFL packages on its ``PYTHONPATH`` (``fleetfl agent start`` sets
  ``CLEARML_AGENT_EXTRA_PYTHON_PATH`` to the repository root; on other machines install FleetFL or
  set that variable). This works the same with uncommitted changes and in a fresh CI clone, because
  nothing is cloned from git.
* **Output**: the function's JSON-able dict is uploaded as the artifact :data:`OUTPUT_ARTIFACT`
  (and read back with :func:`read_output`), which a pipeline step or a script can consume.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is imported lazily: the CLI must start fast
    from clearml import Task

    from federated.config import FederatedConfig

LOG = logging.getLogger(__name__)

#: Default ClearML project of every FleetFL task, dataset and model.
DEFAULT_PROJECT = "FleetFL"
#: Hyper-parameter section of a component's own arguments.
PARAMS_SECTION = "General"
#: Hyper-parameter section holding the flat federated config (:class:`FederatedConfig` keys).
CONFIG_SECTION = "federated"
#: Artifact name of a component's output dict.
OUTPUT_ARTIFACT = "output"
#: The repository root (what agents need on their ``PYTHONPATH``).
REPO_ROOT = Path(__file__).resolve().parent.parent
COMPONENTS_DIR = Path(__file__).resolve().parent


class ComponentError(ValueError):
    """Bad input to a component (printed as one clear line by the CLI)."""


# ---------------------------------------------------------------------- task set-up
def prepare_process(with_ultralytics: bool = False) -> None:
    """Offline, telemetry-free settings for a component process (before heavy imports)."""
    from federated.runtime import configure_offline

    configure_offline(with_ultralytics=with_ultralytics)


def init_component_task(
    name: str,
    params: Mapping[str, Any],
    *,
    project: str | None = None,
    task_type: str = "data_processing",
    tags: tuple[str, ...] = (),
) -> tuple[Task, dict[str, Any]]:
    """Create (locally) or attach to (on an agent) the task of component ``name``; connect ``params``.

    Args:
        name: task name, e.g. ``"version_data"``.
        params: the component's arguments with their defaults (scalars, lists or dicts); the
            returned dict has the values the task really runs with (edited values on an agent).
        project: ClearML project (default: ``params["project"]`` or :data:`DEFAULT_PROJECT`).
        task_type: a ClearML task type (``data_processing``, ``training``, ``qc``, ``service``...).
        tags: task tags.

    Returns:
        ``(task, params)``.
    """
    prepare_process()
    from clearml import Task

    # The task stores its entry script, not a git link (see the module docstring).
    Task.force_store_standalone_script(True)
    task = Task.init(
        project_name=project or str(params.get("project") or DEFAULT_PROJECT),
        task_name=name,
        task_type=task_type,
        tags=list(tags) or None,
        reuse_last_task_id=False,
        output_uri=True,
        auto_connect_frameworks=False,
        auto_connect_arg_parser=False,
        auto_resource_monitoring=False,
    )
    return task, connect_params(task, params)


def connect_params(task: Task, params: Mapping[str, Any], section: str = PARAMS_SECTION) -> dict[str, Any]:
    """Connect ``params`` to ``task`` under ``section`` and return the values to run with.

    Values come back with the types of the defaults (a UI edit is a string); ``None`` defaults are
    stored as ``""`` and come back as ``None`` when left empty. Lists and dicts travel as JSON.
    """
    encoded = {key: _encode(value) for key, value in params.items()}
    connected = dict(task.connect(encoded, name=section))
    return {key: _decode(connected.get(key, encoded[key]), params[key], key, section) for key in params}


def connect_config(
    task: Task, config: FederatedConfig | Mapping[str, Any] | None = None, section: str = CONFIG_SECTION
) -> FederatedConfig:
    """Connect a flat federated config to ``task`` (section ``federated``) and return the one to use.

    Every :class:`FederatedConfig` key is a task parameter, so cloning a task and editing, say,
    ``federated/rounds`` changes the run. Bad edited values raise ``ConfigError`` naming the key.
    """
    from federated.config import FederatedConfig

    if config is None:
        config = FederatedConfig()
    elif not isinstance(config, FederatedConfig):
        config = FederatedConfig.from_flat(dict(config), source="config")
    connected = dict(task.connect(config.to_flat(), name=section))
    return FederatedConfig.from_flat(connected, source=f"task {task.id} parameters '{section}'")


def create_component_task(
    component: str,
    params: Mapping[str, Any],
    *,
    project: str = DEFAULT_PROJECT,
    task_name: str | None = None,
    task_type: str = "data_processing",
    config: FederatedConfig | Mapping[str, Any] | None = None,
    tags: tuple[str, ...] = (),
) -> Task:
    """A draft task that runs ``components/<component>.py`` on an agent, with ``params`` set.

    Use it as a template to clone and enqueue, or as a PipelineController ``add_step`` base task.
    Values are stored as the task's parameters (section ``General``, and ``federated`` when
    ``config`` is given); the component's ``main()`` reads them back when an agent runs it.
    """
    prepare_process()
    from clearml import Task

    script = COMPONENTS_DIR / f"{component}.py"
    if not script.is_file():
        raise ComponentError(f"component {component!r}: no such module {script}")
    task = Task.create(
        project_name=project,
        task_name=task_name or component,
        task_type=task_type,
        script=str(script),
        working_directory=".",
        packages=False,
        add_task_init_call=False,
        detect_repository=False,
    )
    # machine-independent entry point: `python -m components.<name>` from the FleetFL on the agent's
    # PYTHONPATH (Task.create records the absolute path of this checkout's file)
    task.set_script(
        repository="",
        branch="",
        commit="",
        diff="",
        working_dir=".",
        entry_point=f"-m components.{component}",
    )
    values = {f"{PARAMS_SECTION}/{key}": _encode(value) for key, value in params.items()}
    if config is not None:
        from federated.config import FederatedConfig

        flat = (
            config.to_flat()
            if isinstance(config, FederatedConfig)
            else FederatedConfig.from_flat(config).to_flat()
        )
        values.update({f"{CONFIG_SECTION}/{key}": value for key, value in flat.items()})
    task.set_parameters(values)
    if tags:
        task.add_tags(list(tags))
    return task


# ---------------------------------------------------------------------- outputs
def publish_output(task: Task, output: Mapping[str, Any], name: str = OUTPUT_ARTIFACT) -> None:
    """Upload a component's output dict as a task artifact (and wait for the upload)."""
    # JSON or an error, never a silent fallback to pickle (read_output accepts JSON only)
    task.upload_artifact(name, artifact_object=dict(output), wait_on_upload=True, auto_pickle=False)


def read_output(task_id: str, name: str = OUTPUT_ARTIFACT) -> dict[str, Any]:
    """The output dict a component task published (see :func:`publish_output`)."""
    from clearml import Task

    task = Task.get_task(task_id=task_id)
    if name not in task.artifacts:
        raise ComponentError(f"task {task_id} has no artifact {name!r} (did the component finish?)")
    artifact = task.artifacts[name]
    if artifact.type not in ("JSON", "dict"):  # the SDK would unpickle a "pickle" artifact
        raise ComponentError(
            f"task {task_id}: artifact {name!r} is a {artifact.type}, not JSON (outputs are JSON only)"
        )
    value = artifact.get(block_unsafe_artifacts=True)
    try:
        if isinstance(value, str | bytes | os.PathLike):  # an older SDK may hand back the JSON file
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        return dict(value)
    except (ValueError, TypeError) as exc:
        raise ComponentError(f"task {task_id}: artifact {name!r} is not a JSON object ({exc})") from None


def running_remotely() -> bool:
    """True when this process was started by a clearml-agent for a task."""
    from clearml.config import running_remotely as _remote

    return bool(_remote())


# ---------------------------------------------------------------------- parameter types
def _encode(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def _decode(value: Any, default: Any, key: str, section: str) -> Any:
    where = f"parameter {section}/{key}"
    if default is None:
        return None if value in ("", None) else value
    if isinstance(default, list | tuple | dict):
        if isinstance(value, list | tuple | dict):
            parsed = value
        else:
            try:
                parsed = json.loads(value) if value not in ("", None) else type(default)()
            except json.JSONDecodeError as exc:
                raise ComponentError(f"{where}: expected JSON, got {value!r} ({exc.msg})") from None
        expected = dict if isinstance(default, dict) else (list, tuple)
        if not isinstance(parsed, expected):
            raise ComponentError(f"{where}: expected a {type(default).__name__}, got {value!r}")
        return tuple(parsed) if isinstance(default, tuple) else parsed
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no", ""):
            return False
        raise ComponentError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, int | float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ComponentError(f"{where}: expected {type(default).__name__}, got {value!r}") from None
        if isinstance(default, float):
            return number
        if not number.is_integer():  # "3.0" (an optimizer's float) is 3; "2.5" is an error
            raise ComponentError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    return str(value)
