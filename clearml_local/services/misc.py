"""Small services the SDK and agent touch: debug, server, users, auth (besides login)."""

from __future__ import annotations

from typing import Any

from clearml_local.api import API_VERSION, SERVER_VERSION, RequestContext, endpoint, str_list

_USER_NAME = "FleetFL"


def _user(user_id: str) -> dict[str, Any]:
    return {
        "id": user_id,
        "name": _USER_NAME,
        "given_name": "FleetFL",
        "family_name": "",
        "company": {"id": "fleetfl", "name": "FleetFL"},
        "role": "admin",
        "created": "2026-01-01T00:00:00.000000+00:00",
    }


@endpoint("debug.ping")
def ping(ctx: RequestContext, body: dict) -> dict:
    """Liveness check (no credentials needed)."""
    return {"msg": "ClearML server (FleetFL embedded)"}


@endpoint("server.info")
def server_info(ctx: RequestContext, body: dict) -> dict:
    """Server version information (no credentials needed)."""
    return {"version": SERVER_VERSION, "build": "fleetfl", "commit": "", "api_version": API_VERSION}


@endpoint("users.get_current_user")
def get_current_user(ctx: RequestContext, body: dict) -> dict:
    """The one user, as clearml-server describes it."""
    return {"user": _user(ctx.user), "getting_started": {}, "settings": {}}


@endpoint("users.get_by_id")
def users_get_by_id(ctx: RequestContext, body: dict) -> dict:
    """The one user (any id resolves to it: the server is single-user)."""
    return {"user": _user(ctx.user)}


@endpoint("users.get_all")
def users_get_all(ctx: RequestContext, body: dict) -> dict:
    """The list of users: the single user."""
    ids = str_list(body, "id")
    return {"users": [] if ids and ctx.user not in ids else [_user(ctx.user)]}


@endpoint("users.get_vaults")
def get_vaults(ctx: RequestContext, body: dict) -> dict:
    """Configuration vaults are not supported: none."""
    return {"enabled": False, "vaults": []}


@endpoint("auth.get_credentials")
def get_credentials(ctx: RequestContext, body: dict) -> dict:
    """The access key in use (never the secret)."""
    creds = ctx.extra.get("credentials")
    keys = [{"access_key": creds.access_key}] if creds is not None else []
    return {"credentials": keys}
