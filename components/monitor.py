"""Component ``monitor``: promote good candidates to production, roll back regressions.

Registry convention (ClearML model tags in the project; one model carries ``production``):

* ``candidate``   - registered by ``evaluate_register``, not decided yet;
* ``production``  - the model in service; the monitor moves this tag and only this code does;
* ``rolled-back`` - a candidate the monitor refused (more than ``threshold`` worse than production);
* ``retired``     - a former production model replaced by a better (or not much worse) candidate.

A candidate's quality is its ``map50_95`` metadata (set by ``evaluate_register`` on the held-out
split). :func:`decide` compares it with production's: a candidate whose mAP50-95 is **more than**
``threshold`` (relative, default 10%) below production's is rolled back - production stays on the
last good model, a warning is logged, a ClearML text report is written (an alert) and the
candidate's metadata keeps the rollback record (``monitor_decision``, ``decided_at``,
``production_model_id``, ``production_map50_95``, ``relative_drop``). Anything within the threshold
is promoted (no false alarm); the first candidate of a project becomes production.

:func:`run_monitor` is the long-running service task: it polls the registry for new candidates,
decides each, and keeps every decision in the task's ``decisions`` artifact and scalars.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from components.common import DEFAULT_PROJECT, ComponentError

if TYPE_CHECKING:
    from clearml import Model, Task

LOG = logging.getLogger(__name__)

CANDIDATE_TAG = "candidate"
PRODUCTION_TAG = "production"
ROLLED_BACK_TAG = "rolled-back"
RETIRED_TAG = "retired"
DECISION_TAGS = (PRODUCTION_TAG, ROLLED_BACK_TAG, RETIRED_TAG)
_EPS = 1e-9  # a candidate exactly at the threshold is within it (no false alarm on rounding)


class MonitorError(ComponentError):
    """Bad monitor input (unknown model, missing metrics, bad threshold)."""


# ---------------------------------------------------------------------- decision
def relative_drop(candidate: float, production: float) -> float:
    """How much worse ``candidate`` is than ``production``, relative (0.15 = 15% worse; < 0 better)."""
    if production <= 0:
        return 0.0 if candidate >= production else 1.0
    return (production - candidate) / production


def should_roll_back(candidate: float, production: float, threshold: float) -> bool:
    """True when ``candidate`` is more than ``threshold`` (relative) below ``production``."""
    return relative_drop(candidate, production) > threshold + _EPS


def query_tagged(project: str, tag: str) -> list[Model]:
    """Models of ``project`` carrying ``tag``, newest first (none while the project does not exist)."""
    from clearml import Model

    try:
        return Model.query_models(project_name=project, tags=[tag], include_archived=False)
    except ValueError as exc:  # the SDK raises when the project is not there (yet)
        if "No projects found" in str(exc):
            return []
        raise


def production_model(project: str = DEFAULT_PROJECT) -> Model | None:
    """The model tagged ``production`` in ``project`` (the newest if several), or ``None``."""
    found = query_tagged(project, PRODUCTION_TAG)
    return found[0] if found else None


def model_score(model: Model) -> float:
    """A registered model's ``map50_95`` metadata.

    Raises:
        MonitorError: the model has no such metadata (not registered by ``evaluate_register``).
    """
    value = model.get_metadata("map50_95")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MonitorError(
            f"model {model.id}: no numeric 'map50_95' metadata (register it with evaluate_register)"
        ) from None


def decide(
    candidate_model_id: str,
    project: str = DEFAULT_PROJECT,
    threshold: float = 0.10,
    task: Task | None = None,
) -> dict[str, Any]:
    """Promote or roll back one candidate (see the module docstring); idempotent per candidate.

    Returns:
        ``{"decision": "promoted" | "rolled_back" | "first", "production_model_id",
        "candidate_model_id", "candidate_map50_95", "production_map50_95", "relative_drop",
        "threshold", "decided_at"}``. ``production_model_id`` is the production model *after* the
        decision.
    """
    from clearml import Model

    if not 0 <= threshold < 1:
        raise MonitorError(f"threshold: must be in [0, 1), got {threshold!r}")
    try:
        candidate = Model(model_id=candidate_model_id)
        candidate.tags  # noqa: B018 - loads the model: an unknown id fails here, clearly
    except Exception as exc:
        raise MonitorError(f"candidate {candidate_model_id}: no such model in the registry ({exc})") from None
    previous = _recorded_decision(candidate)
    if previous is not None:
        return previous
    cand_score = model_score(candidate)
    production = production_model(project)
    now = datetime.now(UTC).isoformat()
    record: dict[str, Any] = {
        "candidate_model_id": candidate.id,
        "candidate_map50_95": cand_score,
        "threshold": threshold,
        "decided_at": now,
    }
    if production is None or production.id == candidate.id:
        _retag(candidate, add=[PRODUCTION_TAG], remove=[CANDIDATE_TAG, ROLLED_BACK_TAG])
        record.update(
            decision="first",
            production_model_id=candidate.id,
            production_map50_95=cand_score,
            relative_drop=0.0,
        )
    else:
        prod_score = model_score(production)
        drop = relative_drop(cand_score, prod_score)
        record.update(production_map50_95=prod_score, relative_drop=drop)
        if should_roll_back(cand_score, prod_score, threshold):
            _retag(candidate, add=[ROLLED_BACK_TAG], remove=[CANDIDATE_TAG])
            record.update(decision="rolled_back", production_model_id=production.id)
            message = (
                f"ALERT: candidate model {candidate.id} rolled back: mAP50-95 {cand_score:.4f} is "
                f"{drop:.1%} below production {production.id} ({prod_score:.4f}), more than the "
                f"{threshold:.0%} threshold; production stays on {production.id}"
            )
            LOG.warning(message)
            _alert(task, message)
        else:
            # promote first, then retire the old one: there is never a moment without production
            _retag(candidate, add=[PRODUCTION_TAG], remove=[CANDIDATE_TAG])
            _retag(production, add=[RETIRED_TAG], remove=[PRODUCTION_TAG])
            record.update(
                decision="promoted",
                production_model_id=candidate.id,
                previous_production_model_id=production.id,
            )
            LOG.info(
                "candidate %s promoted to production (mAP50-95 %.4f vs %.4f, %+.1f%%)",
                candidate.id,
                cand_score,
                prod_score,
                -100 * drop,
            )
    _record(candidate, record)
    return record


def _recorded_decision(candidate: Model) -> dict[str, Any] | None:
    """The decision stored on a candidate that was decided before (``None`` if undecided)."""
    tags = set(candidate.tags or [])
    raw = candidate.get_metadata("monitor_record")
    if raw and (tags & set(DECISION_TAGS)):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None
    return None


def _retag(model: Model, add: list[str], remove: list[str]) -> None:
    tags = [tag for tag in (model.tags or []) if tag not in remove]
    tags += [tag for tag in add if tag not in tags]
    model.tags = tags


def _record(candidate: Model, record: dict[str, Any]) -> None:
    """Keep the decision on the candidate itself (the rollback record travels with the model)."""
    candidate.set_metadata("monitor_decision", record["decision"], "str")
    candidate.set_metadata("decided_at", record["decided_at"], "str")
    candidate.set_metadata("production_model_id", record["production_model_id"], "str")
    candidate.set_metadata("monitor_record", json.dumps(record, sort_keys=True), "str")


def _alert(task: Task | None, message: str) -> None:
    """A ClearML text report on the monitor's task (or the current task), if there is one."""
    from clearml import Task

    task = task or Task.current_task()
    if task is not None:
        task.get_logger().report_text(message, level=logging.WARNING)


# ---------------------------------------------------------------------- service loop
def pending_candidates(project: str = DEFAULT_PROJECT) -> list[Model]:
    """Undecided candidates, oldest first."""
    found = query_tagged(project, CANDIDATE_TAG)
    undecided = [model for model in found if not (set(model.tags or []) & set(DECISION_TAGS))]
    return list(reversed(undecided))  # query_models returns the newest first


def run_monitor(
    project: str = DEFAULT_PROJECT,
    threshold: float = 0.10,
    poll_s: float = 10.0,
    max_decisions: int = 0,
    timeout_s: float = 0.0,
    task: Task | None = None,
) -> list[dict[str, Any]]:
    """Watch the registry and decide every new candidate until stopped.

    Args:
        project: ClearML project whose models are watched.
        threshold: relative mAP50-95 drop that triggers a rollback.
        poll_s: seconds between registry polls.
        max_decisions: stop after this many decisions (0: never).
        timeout_s: stop after this many seconds (0: never).
        task: the monitor's task (decisions go to its ``decisions`` artifact and scalars).

    Returns:
        The decisions taken, in order.
    """
    if poll_s <= 0:
        raise MonitorError(f"poll_s: must be > 0, got {poll_s!r}")
    decisions: list[dict[str, Any]] = []
    start = time.monotonic()
    LOG.info("monitor: watching project %r (threshold %.0f%%, poll %.0f s)", project, 100 * threshold, poll_s)
    while True:
        for candidate in pending_candidates(project):
            try:
                record = decide(candidate.id, project=project, threshold=threshold, task=task)
            except MonitorError as exc:
                LOG.warning("monitor: skipping candidate %s: %s", candidate.id, exc)
                continue
            decisions.append(record)
            _report(task, decisions)
            if max_decisions and len(decisions) >= max_decisions:
                return decisions
        if timeout_s and time.monotonic() - start >= timeout_s:
            return decisions
        time.sleep(poll_s)


def _report(task: Task | None, decisions: list[dict[str, Any]]) -> None:
    """Scalars and a text line for the last decision; the ``decisions`` artifact holds them all."""
    if task is None:
        return
    record, count = decisions[-1], len(decisions)
    logger = task.get_logger()
    logger.report_scalar("monitor", "candidate_map50_95", record["candidate_map50_95"], iteration=count)
    logger.report_scalar("monitor", "production_map50_95", record["production_map50_95"], iteration=count)
    logger.report_scalar(
        "monitor", "rolled_back", float(record["decision"] == "rolled_back"), iteration=count
    )
    logger.report_text(f"decision {count}: {json.dumps(record, sort_keys=True)}")
    # a dict travels as JSON (a list would be pickled): the rollback record of every decision
    task.upload_artifact(
        "decisions", artifact_object={"decisions": list(decisions)}, wait_on_upload=True, auto_pickle=False
    )


# ---------------------------------------------------------------------- task entry points
DEFAULTS: dict[str, Any] = {
    "project": DEFAULT_PROJECT,
    "threshold": 0.10,
    "poll_s": 10.0,
    "max_decisions": 0,
    "timeout_s": 0.0,
}


def create_monitor_task(project: str = DEFAULT_PROJECT, **params: Any) -> Task:
    """A draft monitor task (to enqueue on ``services``), parameters in section ``General``."""
    from components.common import create_component_task

    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise MonitorError(f"unknown monitor parameter {unknown[0]!r} (known: {', '.join(DEFAULTS)})")
    values = {**DEFAULTS, **params, "project": project}
    return create_component_task("monitor", values, project=project, task_name="monitor", task_type="monitor")


def run_monitor_task(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run the monitor as a ClearML task of this process (parameters connected, section ``General``).

    ``params`` overrides :data:`DEFAULTS` locally; on an agent the task's stored values win.
    """
    from components.common import init_component_task, publish_output

    values = {**DEFAULTS, **(params or {})}
    task, values = init_component_task("monitor", values, project=values["project"], task_type="monitor")
    decisions = run_monitor(task=task, **values)
    publish_output(task, {"decisions": decisions})
    return decisions


def main() -> None:
    """``python -m components.monitor``: the monitor as a (long-running) ClearML service task."""
    run_monitor_task()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
