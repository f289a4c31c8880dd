"""Helpers shared by the service modules: loading documents or failing with the right error."""

from __future__ import annotations

from typing import Any

from clearml_local.api import (
    SUBCODE_INVALID_MODEL_ID,
    SUBCODE_INVALID_PROJECT_ID,
    SUBCODE_INVALID_QUEUE_ID,
    SUBCODE_INVALID_TASK_ID,
    ApiError,
    endpoint,
    not_found,
    opt_bool,
    str_list,
    validation_error,
)
from clearml_local.store import Store, Transaction, utc_now

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


def upsert_metadata(store: Store, collection: str, doc_id: str, body: dict[str, Any], touch: bool) -> dict:
    """``<collection>.add_or_update_metadata``: upsert ``[{key, type, value}]`` items by key.

    ``replace_metadata`` drops the existing items first; ``touch`` also sets ``last_update``.
    """
    items = body.get("metadata")
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("key"), str) for i in items
    ):
        raise validation_error("field 'metadata' must be an array of objects with a string 'key'")
    with store.transaction() as tx:
        doc = load_for_update(tx, collection, doc_id)
        metadata = {} if opt_bool(body, "replace_metadata") else doc.get("metadata") or {}
        for item in items:
            metadata[item["key"]] = item
        doc["metadata"] = metadata
        if touch:
            doc["last_update"] = utc_now()
        tx.put(collection, doc)
    return {"updated": 1}


def register_archive_many(collection: str, set_archived) -> None:
    """Register ``<collection>.archive_many`` and ``<collection>.unarchive_many`` around
    ``set_archived(ctx, ids, archived)`` (each collection archives its own way)."""
    for archived, action in ((True, "archive"), (False, "unarchive")):

        def handler(ctx, body: dict, archived: bool = archived, action: str = action) -> dict:
            ids = str_list(body, "ids", required=True)
            set_archived(ctx, ids, archived)
            return {"succeeded": [{"id": i, f"{action}d": True} for i in ids], "failed": []}

        handler.__doc__ = f"{action.capitalize()} several {collection}."
        endpoint(f"{collection}.{action}_many")(handler)
