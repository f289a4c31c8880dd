"""FleetFL's web UI for the embedded server: login, experiments, a task's tabs, actions, compare,
pipelines, queues/workers, models and datasets.

Served by ``fleetfl server`` on the web port (default 127.0.0.1:8080, ``CLEARML_WEB_HOST``), so the
links the ClearML SDK and FleetFL print open here. Everything is read and changed through the API's
own endpoint handlers (:mod:`clearml_local.web.gateway`); pages need a login session and every
state-changing request its CSRF token (:mod:`clearml_local.web.session`). Plots are drawn by the
plotly.js that the installed ``plotly`` wheel ships (read from the wheel at run time, never copied).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from clearml_local.auth import Authenticator
from clearml_local.store import Store
from clearml_local.web import actions, data, pages
from clearml_local.web.core import WebState, current_session, make_templates, render
from clearml_local.web.gateway import Gateway
from clearml_local.web.session import COOKIE_NAME, SessionStore

STATIC_DIR = Path(__file__).with_name("static")
#: Sent with every answer: no framing, no third-party scripts, no sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def plotly_js_path() -> Path:
    """``plotly.min.js`` inside the installed ``plotly`` wheel (pinned: 5.24.1 ships plotly.js 2.35)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the plotly package is not installed (pip install plotly==5.24.1)")
    return Path(spec.origin).parent / "package_data" / "plotly.min.js"


async def plotly_js(request: Request) -> Response:
    path = plotly_js_path()
    if not path.is_file():
        return PlainTextResponse(f"plotly.min.js not found at {path}", status_code=404)
    return FileResponse(path, media_type="application/javascript")


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


class _LoggedInFiles:
    """The file server's objects (read-only) for logged-in browsers, under ``/files/``."""

    def __init__(self, files_app: ASGIApp, sessions: SessionStore) -> None:
        self.files_app = files_app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        if scope["method"] not in ("GET", "HEAD"):
            response: Response = PlainTextResponse("read-only", status_code=405)
        elif self.sessions.find(request.cookies.get(COOKIE_NAME)) is None:
            response = PlainTextResponse("Not logged in: log in at /login", status_code=401)
        else:
            await self.files_app(scope, receive, send)
            return
        await response(scope, receive, send)


def create_web_app(store: Store, authenticator: Authenticator, settings: dict[str, Any]) -> ASGIApp:
    """The web UI over ``store`` (``settings``: ``credentials``, ``files_host``, ``files_dir``...)."""
    credentials = authenticator.credentials
    extra = {k: v for k, v in settings.items() if k != "credentials"}
    sessions = SessionStore(credentials)
    web = WebState(
        gateway=Gateway(store, credentials.user_id, {"credentials": credentials, **extra}),
        sessions=sessions,
        templates=make_templates(),
        files_host=str(settings.get("files_host", "")),
    )
    routes: list[Any] = [
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
        *actions.ROUTES,
        *data.ROUTES,
        *pages.ROUTES,
    ]
    files_dir = settings.get("files_dir")
    if files_dir:
        from clearml_local.fileserver import create_file_app

        reader = create_file_app(Path(files_dir), lambda _token: False, public_read=True)
        routes.append(Mount("/files", app=_LoggedInFiles(reader, sessions)))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        request.state.session = current_session(request)
        message = f"No page at {request.url.path}" if status == 404 else str(getattr(exc, "detail", ""))
        return render(request, "not_found.html", status=status, message=message)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.web = web
    return _SecurityHeaders(app)
