"""Helpers shared by the service modules: loading documents or failing with the right error."""

from __future__ import annotations

from typing import Any

from clearml_local.api import (
    SUBCODE_INVALID_MODEL_ID,
    SUBCODE_INVALID_PROJECT_ID,
    SUBCODE_INVALID_QUEUE_ID,
    SUBCODE_INVALID_TASK_ID,
    ApiError,
    not_found,
)
from clearml_local.store import Store, Transaction

_SUBCODES = {
    "tasks": ("task", SUBCODE_INVALID_TASK_ID),
    "projects": ("project", SUBCODE_INVALID_PROJECT_ID),
    "queues": ("queue", SUBCODE_INVALID_QUEUE_ID),
    "models": ("model", SUBCODE_INVALID_MODEL_ID),
}

HIDDEN_TAG = "hidden"
ARCHIVED_TAG = "archived"


def load(store: Store, collection: str, doc_id: str) -> dict[str, Any]:
    """The committed document (read-only) or a 400 "invalid <kind> id" error."""
    doc = store.get(collection, doc_id)
    if doc is None:
        kind, subcode = _SUBCODES[collection]
        raise not_found(kind, subcode, doc_id)
    return doc


def load_for_update(tx: Transaction, collection: str, doc_id: str) -> dict[str, Any]:
    """A mutable copy of the document inside ``tx``, or a 400 "invalid <kind> id" error."""
    doc = tx.get(collection, doc_id)
    if doc is None:
        kind, subcode = _SUBCODES[collection]
        raise not_found(kind, subcode, doc_id)
    return doc


def not_hidden(doc: dict[str, Any]) -> bool:
    """Whether the object lacks the ``hidden`` system tag."""
    return HIDDEN_TAG not in (doc.get("system_tags") or ())


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields whose value changed (the ``fields`` part of update responses)."""
    return {k: v for k, v in after.items() if before.get(k) != v}


def conflict(message: str, subcode: int) -> ApiError:
    """A 400 error with a domain-specific subcode."""
    return ApiError(400, subcode, message)
