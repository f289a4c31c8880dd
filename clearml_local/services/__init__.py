"""Endpoint handlers, one module per ClearML service (each registers with ``api.endpoint``)."""

from __future__ import annotations

import importlib

#: Handler modules, imported by :func:`load`.
MODULES: tuple[str, ...] = ("misc", "projects", "tasks", "queues", "workers", "models")


def load() -> None:
    """Import every handler module (idempotent: registration happens once per process)."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
