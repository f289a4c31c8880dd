"""FleetFL's execution queues: read their YAML definitions and create them on a ClearML server.

The definitions live in ``queues/queues.yaml`` (``services``, ``fl-server``, ``fl-clients``, ``hpo``);
a user file with the same shape can replace it. Creating is idempotent: a queue that exists (same
name) is reused, never duplicated. Everything goes through the public ClearML SDK (``APIClient``),
so it works the same on the embedded server and on a real ClearML server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_QUEUES_FILE = Path(__file__).with_name("queues.yaml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class QueueDefinitionError(ValueError):
    """A queues YAML file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class QueueSpec:
    """One queue: its name and what it is for."""

    name: str
    description: str = ""


def load_queue_specs(path: str | Path | None = None) -> list[QueueSpec]:
    """Read queue definitions (default: ``queues/queues.yaml``).

    Raises:
        QueueDefinitionError: missing file, bad YAML, missing/duplicate/invalid names, unknown keys.
    """
    path = Path(path) if path else DEFAULT_QUEUES_FILE
    if not path.is_file():
        raise QueueDefinitionError(f"{path}: queue definitions file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise QueueDefinitionError(f"{path}{where}: not valid YAML") from None
    entries = data.get("queues") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise QueueDefinitionError(f"{path}: expected a top-level 'queues:' list with at least one entry")
    specs: list[QueueSpec] = []
    for index, entry in enumerate(entries):
        specs.append(_spec(entry, f"{path}: queues[{index}]"))
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise QueueDefinitionError(f"{path}: queue {duplicates[0]!r} is defined more than once")
    return specs


def _spec(entry: Any, where: str) -> QueueSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise QueueDefinitionError(f"{where}: expected a mapping with 'name' (and 'description')")
    unknown = sorted(set(entry) - {"name", "description"})
    if unknown:
        raise QueueDefinitionError(f"{where}: unknown key {unknown[0]!r} (known: name, description)")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise QueueDefinitionError(
            f"{where}: name {name!r} must be 1-100 letters, digits, '-', '_' or '.' (not starting with one)"
        )
    description = entry.get("description") or ""
    if not isinstance(description, str):
        raise QueueDefinitionError(f"{where}: description must be text")
    return QueueSpec(name=name, description=description.strip())


def find_queue_id(name: str) -> str | None:
    """The id of the queue called exactly ``name``, or ``None``."""
    from clearml.backend_api.session.client import APIClient

    # the server treats ``name`` as a regex: anchor and escape it, then compare exactly
    found = APIClient().queues.get_all(name=f"^{re.escape(name)}$", only_fields=["id", "name"])
    for queue in found or []:
        if queue.name == name:
            return queue.id
    return None


def ensure_queue(name: str) -> tuple[str, bool]:
    """Create queue ``name`` unless it exists; return ``(queue id, created)``."""
    from clearml.backend_api.session.client import APIClient

    existing = find_queue_id(name)
    if existing:
        return existing, False
    try:
        reply = APIClient().queues.create(name=name)
    except Exception:
        # another process created it between the lookup and the create ("already exists", 400/709)
        created_elsewhere = find_queue_id(name)
        if created_elsewhere:
            return created_elsewhere, False
        raise
    return reply.id, True


def create_queues(specs: list[QueueSpec] | None = None) -> dict[str, dict[str, Any]]:
    """Create every defined queue that is missing (idempotent).

    Returns:
        ``{name: {"id": ..., "created": bool, "description": ...}}`` in definition order.
    """
    specs = load_queue_specs() if specs is None else specs
    result: dict[str, dict[str, Any]] = {}
    for spec in specs:
        queue_id, created = ensure_queue(spec.name)
        result[spec.name] = {"id": queue_id, "created": created, "description": spec.description}
    return result
