"""Pure helpers that shape API documents for the templates (no I/O)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from clearml_local.store import metric_hash

#: The metric shown by default in the experiments table (what FleetFL's federate task reports).
DEFAULT_METRIC = "global/map50_95"

#: Task page tabs: (key, title, URL tail ClearML's web app uses for it).
TABS = (
    ("info", "Info", "info-output"),
    ("execution", "Execution", "execution"),
    ("configuration", "Configuration", "hyper-params"),
    ("scalars", "Scalars", "info-output/metrics/scalar"),
    ("plots", "Plots", "info-output/metrics/plots"),
    ("debug", "Debug samples", "info-output/debugImages"),
    ("console", "Console", "output/log"),
    ("artifacts", "Artifacts", "artifacts"),
    ("models", "Models", "models"),
    ("trials", "Trials", "trials"),
)

#: The first URL segment of a tail -> tab (ClearML spells some tails differently).
_TAIL_TABS = {
    "output": "console",
    "log": "console",
    "execution": "execution",
    "hyper-params": "configuration",
    "configuration": "configuration",
    "artifacts": "artifacts",
    "models": "models",
    "trials": "trials",
    "info": "info",
}


def tab_for_tail(tail: str) -> str:
    """The tab a task-page URL tail opens (``output/log`` -> console; unknown -> info)."""
    parts = [p for p in tail.split("/") if p]
    if not parts:
        return "info"
    if parts[0] == "info-output":
        rest = "/".join(parts[1:])
        if rest.startswith("metrics/plot"):
            return "plots"
        if rest.startswith("metrics"):
            return "scalars"
        if rest.startswith("debugImages"):
            return "debug"
        return "info"
    return _TAIL_TABS.get(parts[0], "info")


def split_metric(name: str) -> tuple[str, str]:
    """``"global/map50_95"`` -> ``("global", "map50_95")`` (the variant is after the last ``/``)."""
    metric, sep, variant = name.rpartition("/")
    return (metric, variant) if sep else (name, name)


def chosen_metrics(values: Iterable[str]) -> list[str]:
    """The ``metric`` query values (each comma-separated) -> at most 8 names; ``DEFAULT_METRIC`` if none.

    The experiments table shows them as columns; the Scalars and Compare charts put their titles first.
    """
    metrics = [m.strip() for raw in values for m in raw.split(",") if m.strip()]
    return metrics[:8] or [DEFAULT_METRIC]


def metric_query(metrics: list[str]) -> str:
    """``?metric=...`` carrying non-default metric columns to the next page ("" for the default)."""
    if metrics == [DEFAULT_METRIC]:
        return ""
    return "?" + urllib.parse.urlencode({"metric": ",".join(metrics)})


def chart_titles_first(metrics: list[str]) -> str:
    """The chart titles to draw first, comma-separated: those of the chosen metrics, in order."""
    return ",".join(dict.fromkeys(split_metric(m)[0] for m in metrics))


def metric_path(name: str) -> str:
    """The ``last_metrics`` path of a metric (for ``only_fields``/``order_by``)."""
    metric, variant = split_metric(name)
    return f"last_metrics.{metric_hash(metric)}.{metric_hash(variant)}"


def last_value(task: Mapping[str, Any], name: str) -> float | None:
    """The last reported value of ``metric/variant`` on ``task``, or ``None``."""
    metric, variant = split_metric(name)
    entry = ((task.get("last_metrics") or {}).get(metric_hash(metric)) or {}).get(metric_hash(variant))
    return entry.get("value") if entry else None


def task_counts(
    tasks: Iterable[Mapping[str, Any]], running: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """Per project id: ``{"total": n, "running": n}`` counted from two task lists."""
    counts: dict[str, dict[str, int]] = {}
    for key, found in (("total", tasks), ("running", running)):
        for task in found:
            entry = counts.setdefault(str(task.get("project") or ""), {"total": 0, "running": 0})
            entry[key] += 1
    return counts


def metric_summary(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every scalar the task reported with last/min/max, sorted by metric then variant."""
    rows = [
        entry
        for variants in (task.get("last_metrics") or {}).values()
        for entry in variants.values()
        if isinstance(entry, Mapping) and "value" in entry
    ]
    return sorted(rows, key=lambda e: (str(e.get("metric")), str(e.get("variant"))))


def fmt_number(value: Any) -> str:
    """A metric value for a table cell (4 decimals; thousands grouped, no decimals from 100,000)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, float) and abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:,.0f}"


def is_bytes(metric: str, variant: str) -> bool:
    """Whether a scalar counts bytes (FleetFL's ``bytes``/``sent``; the charts draw these in MB too)."""
    return "bytes" in metric.lower() or variant.lower().startswith("bytes_")


def fmt_metric(value: Any, metric: str, variant: str) -> str:
    """A scalar's value for the summary table: byte counters in MB, others as :func:`fmt_number`."""
    if is_bytes(str(metric), str(variant)) and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value / 1e6:,.2f} MB"
    return fmt_number(value)


def fmt_time(value: Any) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``""``."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def duration_s(task: Mapping[str, Any]) -> float | None:
    """Seconds from ``started`` to ``completed`` (or to ``last_update`` while running)."""
    start, end = task.get("started"), task.get("completed") or task.get("last_update")
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())


def fmt_duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``12s`` or ``""``."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def hyperparam_rows(task: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``[(section, [param, ...]), ...]`` sorted by section and name."""
    sections = task.get("hyperparams") or {}
    return [
        (section, [sections[section][name] for name in sorted(sections[section])])
        for section in sorted(sections)
        if isinstance(sections[section], Mapping)
    ]


def flat_params(task: Mapping[str, Any]) -> dict[str, str]:
    """``{"section/name": value}`` of a task's hyperparameters."""
    return {
        f"{section}/{p.get('name')}": str(p.get("value", ""))
        for section, params in hyperparam_rows(task)
        for p in params
    }


#: Tasks one compare view overlays at most.
MAX_COMPARED = 20


def compare_ids(values: Iterable[str]) -> list[str]:
    """Task ids from ``ids`` query values (repeated or comma-separated), at most :data:`MAX_COMPARED`."""
    return [i for raw in values for i in raw.split(",") if i][:MAX_COMPARED]


def param_diff(tasks: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{name, values: [...], differs}`` over the union of the tasks' hyperparameters."""
    flats = [flat_params(t) for t in tasks]
    names = sorted({name for flat in flats for name in flat})
    rows = []
    for name in names:
        values = [flat.get(name) for flat in flats]
        rows.append({"name": name, "values": values, "differs": len(set(values)) > 1})
    return sorted(rows, key=lambda r: (not r["differs"], r["name"]))


def files_link(url: str | None, files_host: str) -> str | None:
    """An object URL of the file server, rewritten to the UI's ``/files/`` proxy (else as is)."""
    if not url:
        return None
    host = files_host.rstrip("/")
    for spelling in (host, host.replace("127.0.0.1", "localhost")):
        if spelling and url.startswith(spelling + "/"):
            return "/files/" + url[len(spelling) + 1 :]
    return url


def _json_configuration(task: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The task's configuration object ``name`` parsed as a JSON object; ``{}`` if missing or not one."""
    raw = ((task.get("configuration") or {}).get(name) or {}).get("value")
    try:
        value = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def pipeline_dag(task: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """The controller's ``Pipeline`` configuration as layers of steps (parents before children).

    Each step: ``name``, ``parents``, ``status``, ``job_id`` and ``parameters``. A configuration
    that is missing or not JSON gives no layers.
    """
    steps = _json_configuration(task, "Pipeline")
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name in depth:
            return depth[name]
        node = steps.get(name)
        parents = [p for p in (node.get("parents") or []) if p in steps] if isinstance(node, dict) else []
        depth[name] = 0 if not parents or name in seen else 1 + max(level(p, seen | {name}) for p in parents)
        return depth[name]

    layers: dict[int, list[dict[str, Any]]] = {}
    for name, node in steps.items():
        if not isinstance(node, dict):
            continue
        layers.setdefault(level(name), []).append(
            {
                "name": name,
                "parents": [str(p) for p in node.get("parents") or []],
                "status": node.get("status") or "pending",
                "job_id": node.get("job_id") or node.get("executed"),
                "parameters": node.get("parameters") or {},
            }
        )
    return [layers[d] for d in sorted(layers)]


def dataset_lineage(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The versions in a dataset task's ``Dataset Struct`` configuration (what clearml writes).

    Each: ``job_id`` (the version's task), ``name``, ``version``, ``status``, ``parents`` (task ids),
    this version first, then its ancestors. A missing or malformed structure gives ``[]``.
    """
    nodes = _json_configuration(task, "Dataset Struct")
    ids = {key: node.get("job_id") for key, node in nodes.items() if isinstance(node, dict)}
    versions = [
        {
            "job_id": node.get("job_id"),
            "name": node.get("name"),
            "version": node.get("version"),
            "status": node.get("status"),
            "parents": [ids.get(str(p)) for p in node.get("parents") or [] if ids.get(str(p))],
        }
        for node in nodes.values()
        if isinstance(node, dict) and node.get("job_id")
    ]
    return sorted(versions, key=lambda v: v["job_id"] != task.get("id"))


def by_id(docs: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Documents keyed by their ``id``."""
    return {str(d.get("id")): d for d in docs}
