"""The REST API as an ASGI app: URL parsing, authentication, the ClearML envelope, error mapping.

Every request ``{GET,POST,PUT} /[v<version>/]<service>.<action>`` with a JSON body (or
``application/json-lines`` for raw-body endpoints) is dispatched to the handler registered with
:func:`clearml_local.api.endpoint`; its return value becomes ``data`` of the envelope. Failures
become ClearML error envelopes (HTTP status == ``meta.result_code``): unknown endpoint 404,
malformed JSON / missing or mistyped field / unknown id 400, bad credentials 401. An unexpected
exception is logged with its traceback on the server and answered with a 500 envelope without one.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clearml_local import services
from clearml_local.api import ENDPOINTS, RAW_BODY_ENDPOINTS, ApiError, RequestContext
from clearml_local.auth import Authenticator
from clearml_local.jsonbody import check_raw, parse_object
from clearml_local.openapi import openapi_document
from clearml_local.settings import DEFAULT_MAX_REQUEST_BYTES, MAX_JSON_DEPTH
from clearml_local.store import Store

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/(?:api/)?(?:v(?P<version>\d+\.\d+)/)?(?P<name>[A-Za-z_]+\.[A-Za-z_]+)/?$")
#: Where the OpenAPI description of the endpoints is served (without credentials).
OPENAPI_PATH = "/openapi.json"
#: Endpoints answered without credentials.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "debug.ping", "server.info"})


def load_handlers() -> None:
    """Import every module that registers handlers (the events module only if it exists)."""
    services.load()
    try:
        importlib.import_module("clearml_local.events")
    except ModuleNotFoundError as exc:
        if exc.name != "clearml_local.events":
            raise


def init_optional_modules(store: Store) -> None:
    """Let optional modules (events) create their tables (``init_store(store)``)."""
    module = _optional("clearml_local.events")
    if module is not None and hasattr(module, "init_store"):
        module.init_store(store)


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def envelope(
    name: str,
    version: str | None,
    data: dict[str, Any] | None,
    code: int = 200,
    subcode: int = 0,
    message: str = "OK",
) -> Response:
    """The ClearML response envelope as an HTTP response with status ``code``."""
    trx = uuid.uuid4().hex
    body = {
        "meta": {
            "id": trx,
            "trx": trx,
            "endpoint": {"name": name, "requested_version": version, "actual_version": version or "1.0"},
            "result_code": code,
            "result_subcode": subcode,
            "result_msg": message,
            "error_stack": None,
            "error_data": {},
            "alarms": {},
        },
        "data": data if data is not None else {},
    }
    text = json.dumps(body, separators=(",", ":"), default=str)
    return Response(text, status_code=code, media_type="application/json")


def create_api_app(
    store: Store,
    authenticator: Authenticator,
    extra: dict[str, Any] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Starlette:
    """The REST API app over ``store``; ``extra`` is handed to handlers as ``ctx.extra``.

    A body larger than ``max_request_bytes`` is refused with 413 while it streams in; a JSON body
    nested deeper than :data:`~clearml_local.settings.MAX_JSON_DEPTH` with 400 before it is parsed.
    """
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
    load_handlers()
    init_optional_modules(store)
    settings = dict(extra or {})
    trace = os.environ.get("FLEETFL_SERVER_TRACE", "") not in ("", "0")

    async def dispatch(request: Request) -> Response:
        if request.url.path == OPENAPI_PATH:
            document = await run_in_threadpool(openapi_document)
            return Response(document, media_type="application/json")
        match = _PATH.match(request.url.path)
        if match is None:
            return envelope(request.url.path.strip("/"), None, None, 404, 0, "Invalid endpoint path")
        name, version = match["name"], match["version"]
        try:
            authorization = request.headers.get("authorization")
            if name == "auth.login":
                return envelope(name, version, authenticator.login(authorization))
            user = "" if name in PUBLIC_ENDPOINTS else authenticator.authenticate(authorization)
            handler = ENDPOINTS.get(name)
            if handler is None:
                raise ApiError(404, 0, f"Unable to find endpoint for name {name} and version {version}")
            # read only after the credentials were checked: a stranger cannot make it buffer a body
            raw = await _read_body(request, max_request_bytes)
            if name in RAW_BODY_ENDPOINTS:  # json-lines, parsed by the handler; checked here
                await run_in_threadpool(check_raw, raw, MAX_JSON_DEPTH)
                body = {}
            else:
                body = await run_in_threadpool(_parse_body, raw, request)
            ctx = RequestContext(
                store=store,
                user=user,
                endpoint=name,
                version=version,
                worker=request.headers.get("x-clearml-worker") or request.headers.get("x-trains-worker"),
                content_type=request.headers.get("content-type", "application/json"),
                raw_body=raw,
                extra=settings,
            )
            data = await run_in_threadpool(handler, ctx, body)
            if trace:  # endpoint and field names only: never values (they may hold secrets)
                log.info("%s v%s worker=%s keys=%s", name, version, ctx.worker, sorted(body))
            # Serialising a large reply (an unpaged get_all) is CPU work: off the event loop too.
            return await run_in_threadpool(envelope, name, version, data)
        except ApiError as exc:
            if trace:
                log.info("%s v%s -> %s/%s %s", name, version, exc.result_code, exc.subcode, exc.message)
            return envelope(name, version, None, exc.result_code, exc.subcode, exc.message)
        except Exception:
            log.exception("internal error in %s", name)
            return envelope(name, version, None, 500, 0, "Internal server error (see the server log)")

    routes = [Route("/{path:path}", dispatch, methods=["GET", "POST", "PUT"])]
    return Starlette(routes=routes)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, 0, f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, 0, f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(raw: bytes, request: Request) -> dict[str, Any]:
    """The JSON object body (query-string parameters fill in when there is no body)."""
    if raw.strip():
        return parse_object(raw, MAX_JSON_DEPTH)
    return {key: value for key, value in request.query_params.items()}
