"""The endpoint registry and request plumbing shared by every ``<service>.<action>`` handler.

A handler is a plain function ``handler(ctx: RequestContext, body: dict) -> dict`` registered with
:func:`endpoint`; it returns the ``data`` part of the ClearML envelope and signals failures by raising
:class:`ApiError` (the app turns it into ``meta.result_code/result_subcode/result_msg``). Handlers
run in a worker thread, never in the event loop, so they may block on SQLite.

Example::

    @endpoint("tasks.ping")
    def ping(ctx: RequestContext, body: dict) -> dict:
        require_str(body, "task")
        return {}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clearml_local.store import Store

#: The API version the server claims (the SDK uses the highest schema not above it).
API_VERSION = "2.31"
#: The server version the server claims (>= 1.16.3 unlocks the SDK's newer calls).
SERVER_VERSION = "1.17.0"

Handler = Callable[["RequestContext", dict[str, Any]], dict[str, Any]]

#: Every registered endpoint, by full name (``service.action``).
ENDPOINTS: dict[str, Handler] = {}


class ApiError(Exception):
    """A ClearML-style API error: HTTP status ``result_code``, ``subcode`` and a clear message.

    Codes follow clearml-server's: 400 bad request (subcodes e.g. 11 validation error, 12 missing
    field, 100 invalid task id, 110 invalid task status, 201 invalid model id, 401 invalid project id,
    701 invalid queue id, 1001 invalid worker id), 401 unauthorized, 404 unknown endpoint.
    """

    def __init__(self, result_code: int, subcode: int, message: str) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.subcode = subcode
        self.message = message


# Frequently used errors (names mirror clearml-server's error catalogue).
def bad_request(message: str, subcode: int = 0) -> ApiError:
    """A generic 400 error."""
    return ApiError(400, subcode, message)


def validation_error(message: str) -> ApiError:
    """400/12: a field has the wrong type or value."""
    return ApiError(400, 12, f"Validation error: {message}")


def missing_field(name: str) -> ApiError:
    """400/12: a required field is missing."""
    return ApiError(400, 12, f"Validation error (missing required field(s)): {name}")


def not_found(kind: str, subcode: int, ident: Any) -> ApiError:
    """400/<subcode>: an unknown id (``kind`` names the object, e.g. ``task``)."""
    return ApiError(400, subcode, f"Invalid {kind} id: id={ident}")


SUBCODE_INVALID_TASK_ID = 100
SUBCODE_INVALID_TASK_STATUS = 110
SUBCODE_INVALID_MODEL_ID = 201
SUBCODE_INVALID_PROJECT_ID = 401
SUBCODE_INVALID_QUEUE_ID = 701
SUBCODE_INVALID_WORKER_ID = 1001


@dataclass
class RequestContext:
    """What a handler knows about the request besides its JSON body.

    Attributes:
        store: the server's :class:`~clearml_local.store.Store`.
        user: id of the authenticated user (from the Bearer token).
        endpoint: full endpoint name, e.g. ``events.add_batch``.
        version: the requested API version (``"2.23"``), or ``None`` if the URL had none.
        worker: value of the ``X-ClearML-Worker`` header, if any.
        content_type: the request's ``Content-Type`` (``application/json-lines`` for add_batch).
        raw_body: the undecoded request body (json-lines endpoints parse it themselves).
        extra: room for server-wide settings (e.g. ``files_host``); read with ``.get``.
    """

    store: Store
    user: str
    endpoint: str = ""
    version: str | None = None
    worker: str | None = None
    content_type: str = "application/json"
    raw_body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


def endpoint(name: str, *, raw_body: bool = False) -> Callable[[Handler], Handler]:
    """Register ``handler`` as endpoint ``name`` (``service.action``).

    Args:
        name: the endpoint's full name.
        raw_body: the handler parses ``ctx.raw_body`` itself (e.g. json-lines); the app then passes
            ``body={}`` instead of failing on a body that is not one JSON object.
    """

    def register(handler: Handler) -> Handler:
        if name in ENDPOINTS:
            raise RuntimeError(f"endpoint {name} registered twice")
        ENDPOINTS[name] = handler
        if raw_body:
            RAW_BODY_ENDPOINTS.add(name)
        return handler

    return register


#: Endpoints whose body the handler parses from ``ctx.raw_body``.
RAW_BODY_ENDPOINTS: set[str] = set()


# --- body field helpers (raise 400/12 with the field's name) ---------------------------------------
_MISSING = object()


def _typed(body: dict[str, Any], name: str, types: type | tuple[type, ...], required: bool, default: Any):
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise missing_field(name)
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise validation_error(f"field '{name}' must be {_type_name(types)}, got bool")
    if not isinstance(value, types):
        raise validation_error(f"field '{name}' must be {_type_name(types)}, got {type(value).__name__}")
    return value


def _type_name(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    mapping = {"str": "a string", "int": "an integer", "float": "a number", "dict": "an object"}
    mapping |= {"list": "an array", "bool": "a boolean"}
    return " or ".join(mapping.get(n, n) for n in names)


def require_str(body: dict[str, Any], name: str) -> str:
    """The non-empty string field ``name`` (400/12 when missing or mistyped)."""
    value = _typed(body, name, str, True, None)
    if not value:
        raise missing_field(name)
    return value


def opt_str(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """The optional string field ``name``."""
    return _typed(body, name, str, False, default)


def opt_int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """The optional integer field ``name`` (integral floats are accepted)."""
    value = body.get(name)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _typed(body, name, int, False, default)


def opt_bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """The optional boolean field ``name``."""
    return _typed(body, name, bool, False, default)


def opt_dict(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The optional object field ``name``."""
    return _typed(body, name, dict, False, None)


def opt_list(body: dict[str, Any], name: str) -> list[Any] | None:
    """The optional array field ``name``."""
    return _typed(body, name, list, False, None)


def str_list(body: dict[str, Any], name: str, required: bool = False) -> list[str]:
    """A list of strings (a single string is accepted as a one-item list, like the real server)."""
    value = body.get(name)
    if value is None:
        if required:
            raise missing_field(name)
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise validation_error(f"field '{name}' must be an array of strings")
    return value


def id_list(body: dict[str, Any], name: str, allow_null: bool = False) -> list[Any] | None:
    """An id filter: ``None`` when absent, a string as a one-item list, or an array of strings
    (``null`` items too where ``allow_null``: e.g. ``project: [null]``, the root); 400/12 otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) or (allow_null and v is None) for v in value):
        return value
    raise validation_error(f"field '{name}' must be a string or an array of strings")
