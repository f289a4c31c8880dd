"""Login sessions of the web UI: the server's own key pair, a signed HttpOnly cookie, a CSRF token.

* ``POST /login`` with ``access_key`` and ``secret_key`` (compared in constant time with the
  server's credentials) opens a session: a random id, its expiry (kept here, on the server) and a
  random CSRF token. The cookie holds ``<id>.<HMAC(id)>`` keyed with a key derived from the server's
  signing key, so a forged or altered cookie is refused before any lookup.
* Every state-changing request must carry the session's CSRF token (form field ``csrf_token`` or
  header ``X-CSRF-Token``); it is compared in constant time.

Sessions live in memory: restarting the server logs everyone out. Secrets never reach a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from clearml_local.auth import Credentials

COOKIE_NAME = "fleetfl_session"
#: How long a session lasts after login (seconds).
SESSION_TTL_S = 12 * 3600
#: Sessions kept at most (the oldest are dropped first), so repeated logins cannot grow memory.
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Session:
    """One logged-in browser."""

    session_id: str
    csrf_token: str
    expires_at: float


class SessionStore:
    """Opens, finds and closes sessions for one :class:`~clearml_local.auth.Credentials`."""

    def __init__(self, credentials: Credentials, ttl_s: float = SESSION_TTL_S) -> None:
        self._credentials = credentials
        self._key = hashlib.sha256(b"fleetfl-web-session\0" + credentials.signing_key.encode()).digest()
        self._ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def check_keys(self, access_key: str, secret_key: str) -> bool:
        """Whether the pair is the server's (constant-time comparisons)."""
        ok_key = hmac.compare_digest(access_key.encode(), self._credentials.access_key.encode())
        ok_secret = hmac.compare_digest(secret_key.encode(), self._credentials.secret_key.encode())
        return ok_key and ok_secret

    def open(self) -> tuple[Session, str]:
        """A new session and the cookie value that names it."""
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time() + self._ttl_s)
        with self._lock:
            self._prune()
            self._sessions[session.session_id] = session
        return session, f"{session.session_id}.{self._sign(session.session_id)}"

    def find(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, or ``None`` (missing, forged, unknown or expired)."""
        if not cookie or "." not in cookie:
            return None
        session_id, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(session_id).encode()):
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= time.time():
                del self._sessions[session_id]
                return None
        return session

    def close(self, session: Session) -> None:
        """End a session (logout)."""
        with self._lock:
            self._sessions.pop(session.session_id, None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """Whether ``token`` is the session's CSRF token (constant-time)."""
        return bool(token) and hmac.compare_digest(token.encode(), session.csrf_token.encode())

    def _sign(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()

    def _prune(self) -> None:
        now = time.time()
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
