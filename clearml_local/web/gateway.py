"""The web UI's only way to read and change state: the API's own endpoint handlers.

Every call goes through ``clearml_local.api.ENDPOINTS[name]`` in a worker thread, so the UI has
exactly the API's semantics (validation, the task state machine, downsampling) and its errors
(:class:`~clearml_local.api.ApiError`, whose message the UI shows).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from clearml_local.api import (
    ENDPOINTS,
    SUBCODE_INVALID_MODEL_ID,
    SUBCODE_INVALID_PROJECT_ID,
    SUBCODE_INVALID_QUEUE_ID,
    SUBCODE_INVALID_TASK_ID,
    SUBCODE_INVALID_WORKER_ID,
    ApiError,
    RequestContext,
)
from clearml_local.store import Store

#: Subcodes of a 400 that mean "no such object" (the UI answers them with its 404 page).
NOT_FOUND_SUBCODES = frozenset(
    {
        SUBCODE_INVALID_TASK_ID,
        SUBCODE_INVALID_MODEL_ID,
        SUBCODE_INVALID_PROJECT_ID,
        SUBCODE_INVALID_QUEUE_ID,
        SUBCODE_INVALID_WORKER_ID,
    }
)


def is_not_found(error: ApiError) -> bool:
    """Whether an API error says an id does not exist."""
    return error.result_code == 400 and error.subcode in NOT_FOUND_SUBCODES


class Gateway:
    """Calls endpoint handlers as the server's user, with the server's settings."""

    def __init__(self, store: Store, user: str, extra: dict[str, Any]) -> None:
        self.store = store
        self.user = user
        self.extra = extra

    async def call(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``name``'s reply data (raises :class:`ApiError` as the API would answer it)."""
        handler = ENDPOINTS[name]
        ctx = RequestContext(store=self.store, user=self.user, endpoint=name, extra=self.extra)
        return await run_in_threadpool(handler, ctx, body)

    async def task(self, task_id: str) -> dict[str, Any]:
        """One task (404 page when unknown)."""
        return (await self.call("tasks.get_by_id", {"task": task_id}))["task"]

    async def tasks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``tasks.get_all`` with ``body``."""
        return (await self.call("tasks.get_all", body))["tasks"]
