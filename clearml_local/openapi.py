"""An OpenAPI 3.1 description of the implemented endpoints, for fuzzers and curious clients.

ClearML's API is RPC over HTTP (``POST /v2.23/<service>.<action>`` with a JSON body), so each
endpoint the server implements becomes one ``POST`` path. The request body schema is the one the
ClearML SDK ships for API 2.23 (``clearml.backend_api.services.v2_23.<service>.<Action>Request._schema``,
JSON Schema draft 4 with local ``#/definitions/...``): the definitions move to
``components/schemas`` under ``<service>.<action>.<name>`` and the references follow. Endpoints the
SDK has no schema for (``debug.ping``, ``server.info``, calls only clearml-agent makes) take any
JSON object. The document describes what clients send, not what the server accepts: the server
answers every other body with a 400 envelope.

Served without credentials at ``/openapi.json``: it holds nothing but public SDK schemas and the list
of endpoint names.
"""

from __future__ import annotations

import importlib
import inspect
import json
from functools import cache
from typing import Any

from clearml_local.api import API_VERSION, ENDPOINTS, RAW_BODY_ENDPOINTS, SERVER_VERSION

#: The SDK schema version the request bodies come from (what clearml 2.1.12 talks).
SCHEMA_VERSION = "2.23"
_PUBLIC = frozenset({"auth.login", "debug.ping", "server.info"})


def sdk_request_schemas() -> dict[str, dict[str, Any]]:
    """``{"service.action": request JSON schema}`` from the installed SDK (empty without it)."""
    try:
        from clearml.backend_api.session import Request
    except ImportError:
        return {}
    package = "clearml.backend_api.services.v" + SCHEMA_VERSION.replace(".", "_")
    schemas: dict[str, dict[str, Any]] = {}
    for service in sorted({name.split(".")[0] for name in ENDPOINTS}):
        try:
            module = importlib.import_module(f"{package}.{service}")
        except ImportError:
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not (issubclass(cls, Request) and cls.__module__ == module.__name__):
                continue
            batched = getattr(cls, "_batched_request_cls", None)  # json-lines: one request a line
            schema = getattr(batched if isinstance(batched, type) else cls, "_schema", None)
            if getattr(cls, "_action", None) and isinstance(schema, dict):
                schemas[f"{cls._service}.{cls._action}"] = schema
    return schemas


def _relink(node: Any, prefix: str) -> Any:
    """A copy of ``node`` with ``#/definitions/x`` references pointing at ``components/schemas``."""
    if isinstance(node, dict):
        return {
            key: (
                f"#/components/schemas/{prefix}.{value.rsplit('/', 1)[-1]}"
                if key == "$ref" and isinstance(value, str) and value.startswith("#/definitions/")
                else _relink(value, prefix)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_relink(item, prefix) for item in node]
    return node


def _envelope() -> dict[str, Any]:
    meta = {
        "type": "object",
        "properties": {
            "result_code": {"type": "integer"},
            "result_subcode": {"type": "integer"},
            "result_msg": {"type": "string"},
        },
        "required": ["result_code", "result_subcode", "result_msg"],
    }
    return {
        "type": "object",
        "properties": {"meta": meta, "data": {"type": "object"}},
        "required": ["meta", "data"],
    }


@cache
def openapi_document() -> bytes:
    """The OpenAPI document as JSON bytes (built once per process)."""
    sdk = sdk_request_schemas()
    components: dict[str, Any] = {"Envelope": _envelope()}
    paths: dict[str, Any] = {}
    for name in sorted(ENDPOINTS):
        schema = sdk.get(name) or {"type": "object"}
        for key, definition in (schema.get("definitions") or {}).items():
            components[f"{name}.{key}"] = _relink(definition, name)
        body = _relink({k: v for k, v in schema.items() if k != "definitions"}, name)
        media = "application/json"
        if name in RAW_BODY_ENDPOINTS:
            media = "application/json-lines"
            body = {"type": "array", "items": body, "minItems": 1}  # one document a line
        reply = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}}
        paths[f"/v{SCHEMA_VERSION}/{name}"] = {
            "post": {
                "operationId": name,
                "requestBody": {"required": True, "content": {media: {"schema": body}}},
                "responses": {
                    "200": {"description": "OK", **reply},
                    "default": {"description": "error", **reply},
                },
                **({"security": []} if name in _PUBLIC else {}),
            }
        }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "FleetFL embedded ClearML server",
            "version": SERVER_VERSION,
            "description": f"ClearML REST API {API_VERSION}; bodies from the SDK's {SCHEMA_VERSION} schemas.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"bearer": []}, {"basic": []}],
    }
    return json.dumps(document, separators=(",", ":")).encode()
