"""Credentials and tokens of the embedded server (one user, one key pair).

* On first start :func:`load_or_create_credentials` generates an access key, a secret key and a
  token-signing key and writes them to ``<data>/credentials.json`` with mode 0600 (temp file +
  ``os.replace``; the file is never world-readable, not even briefly).
* ``auth.login`` takes HTTP Basic ``access_key:secret_key`` and returns a JWT (HS256, signed with the
  signing key) carrying the claims the ClearML SDK reads: ``api_version``, ``server_version``,
  ``feature_set``, ``env``, ``exp`` plus ``identity``.
* Every other call sends ``Authorization: Bearer <token>``; :meth:`Authenticator.verify_bearer`
  checks signature and expiry and returns the user id. Basic credentials are accepted on any call
  too, as clearml-server does. Failures raise :class:`~clearml_local.api.ApiError` 401, which makes
  the SDK log in again once.

Secrets never reach a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt

from clearml_local.api import API_VERSION, SERVER_VERSION, ApiError

CREDENTIALS_FILE = "credentials.json"
#: Token lifetime: 30 days (the SDK refreshes tokens close to expiry on its own).
TOKEN_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Credentials:
    """The server's single user and its keys."""

    access_key: str
    secret_key: str
    signing_key: str
    user_id: str = "fleetfl"
    user_name: str = "FleetFL"
    company_id: str = "fleetfl"

    def __repr__(self) -> str:  # never print the secrets
        return f"Credentials(access_key={self.access_key!r}, user_id={self.user_id!r})"


def load_or_create_credentials(data_dir: Path | str) -> Credentials:
    """Read ``<data_dir>/credentials.json``, creating it (mode 0600) on first use.

    Raises:
        ValueError: the file exists but is not valid credentials JSON.
    """
    path = Path(data_dir) / CREDENTIALS_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            return Credentials(**{k: raw[k] for k in ("access_key", "secret_key", "signing_key")})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid credentials file ({type(exc).__name__})") from None
    creds = Credentials(
        access_key=secrets.token_hex(10).upper(),
        secret_key=secrets.token_urlsafe(36),
        signing_key=secrets.token_urlsafe(48),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(creds), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return creds


def _unauthorized(message: str, subcode: int = 1) -> ApiError:
    return ApiError(401, subcode, message)


class Authenticator:
    """Issues and checks tokens for one :class:`Credentials`."""

    def __init__(self, credentials: Credentials, token_ttl_s: int = TOKEN_TTL_S) -> None:
        self.credentials = credentials
        self.token_ttl_s = token_ttl_s

    def check_basic(self, authorization: str | None) -> str:
        """Validate an ``Authorization: Basic ...`` header; return the user id or raise 401."""
        if not authorization or not authorization.lower().startswith("basic "):
            raise _unauthorized("Missing authorization credentials (Basic access_key:secret_key)", 10)
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _unauthorized("Malformed Basic authorization header", 20) from None
        access_key, _, secret_key = decoded.partition(":")
        ok_key = hmac.compare_digest(access_key.encode(), self.credentials.access_key.encode())
        ok_secret = hmac.compare_digest(secret_key.encode(), self.credentials.secret_key.encode())
        if not (ok_key and ok_secret):
            raise _unauthorized("Invalid access key or secret key", 20)
        return self.credentials.user_id

    def issue_token(self, user_id: str | None = None) -> str:
        """A signed JWT for ``user_id`` with the claims the SDK reads."""
        now = int(time.time())
        creds = self.credentials
        claims = {
            "identity": {
                "user": user_id or creds.user_id,
                "user_name": creds.user_name,
                "company": creds.company_id,
                "company_name": "FleetFL",
                "role": "admin",
            },
            "env": "fleetfl-embedded",
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "feature_set": "basic",
            "auth_type": "Bearer",
            "iat": now,
            "exp": now + self.token_ttl_s,
        }
        return jwt.encode(claims, creds.signing_key, algorithm="HS256")

    def login(self, authorization: str | None) -> dict[str, str]:
        """``auth.login``: Basic credentials -> ``{"token": ...}`` (raises 401)."""
        return {"token": self.issue_token(self.check_basic(authorization))}

    def verify_bearer(self, token: str) -> str:
        """Check a Bearer token's signature and expiry; return the user id or raise 401."""
        try:
            claims = jwt.decode(token, self.credentials.signing_key, algorithms=["HS256"])
        except jwt.ExpiredSignatureError:
            raise _unauthorized("Token expired", 21) from None
        except jwt.InvalidTokenError:
            raise _unauthorized("Invalid token", 22) from None
        user = (claims.get("identity") or {}).get("user")
        if not isinstance(user, str):
            raise _unauthorized("Invalid token", 22)
        return user

    def authenticate(self, authorization: str | None) -> str:
        """The user id for an ``Authorization`` header (Bearer token or Basic keys), or raise 401."""
        if authorization and authorization.lower().startswith("bearer "):
            return self.verify_bearer(authorization[7:].strip())
        if authorization and authorization.lower().startswith("basic "):
            return self.check_basic(authorization)
        raise _unauthorized("Unauthorized (missing credentials)", 10)
