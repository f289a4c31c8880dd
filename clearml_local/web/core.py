"""Plumbing shared by the web UI's routes: the app state, login checks, CSRF, rendering."""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from clearml_local.api import ApiError
from clearml_local.web import views
from clearml_local.web.gateway import Gateway, is_not_found
from clearml_local.web.session import COOKIE_NAME, Session, SessionStore

TEMPLATES_DIR = Path(__file__).with_name("templates")
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class WebState:
    """What every route needs: the API gateway, the sessions, the templates and the hosts."""

    gateway: Gateway
    sessions: SessionStore
    templates: Jinja2Templates
    files_host: str


def make_templates() -> Jinja2Templates:
    """The Jinja2 environment (autoescaping on) with the view helpers as filters."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.filters.update(
        number=views.fmt_number,
        metric_value=views.fmt_metric,
        time=views.fmt_time,
        duration=views.fmt_duration,
        urlquote=_quote,
    )
    env.globals.update(
        TABS=views.TABS, last_value=views.last_value, duration_s=views.duration_s, with_query=with_query
    )
    return templates


def with_query(query: Any, **changes: Any) -> str:
    """The query string ``query`` (a Starlette ``QueryParams``) with some keys replaced."""
    items = [(k, v) for k, v in query.multi_items() if k not in changes]
    items += [(k, str(v)) for k, v in changes.items() if v is not None and v != ""]
    return "?" + urllib.parse.urlencode(items)


def _quote(value: Any) -> str:
    return urllib.parse.quote(str(value), safe="")


def state(request: Request) -> WebState:
    """The app's :class:`WebState`."""
    return request.app.state.web


def current_session(request: Request) -> Session | None:
    """The request's live session, if its cookie names one."""
    return state(request).sessions.find(request.cookies.get(COOKIE_NAME))


def page(handler: Endpoint) -> Endpoint:
    """A page: without a session, a redirect to ``/login?next=<this page>``; API errors as pages."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        session = current_session(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
        request.state.session = session
        try:
            return await handler(request)
        except ApiError as exc:
            return error_page(request, exc)

    return wrapper


def data(handler: Endpoint) -> Endpoint:
    """A JSON read for the page scripts: 401 without a session; API errors as JSON."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        session = current_session(request)
        if session is None:
            return JSONResponse({"error": "not logged in"}, status_code=401)
        request.state.session = session
        try:
            return await handler(request)
        except ApiError as exc:
            status = 404 if is_not_found(exc) else 400
            return JSONResponse({"error": exc.message}, status_code=status)

    return wrapper


def action(handler: Endpoint) -> Endpoint:
    """A state-changing POST: 401 without a session, 403 without its CSRF token.

    The token comes from the form field ``csrf_token`` or the header ``X-CSRF-Token``. An API error
    (e.g. the state machine refusing) redirects back with the server's reason shown.
    """

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        session = current_session(request)
        if session is None:
            return PlainTextResponse("Not logged in: log in at /login", status_code=401)
        form = await request.form()
        token = request.headers.get("x-csrf-token") or form.get("csrf_token")
        if not state(request).sessions.csrf_ok(session, token if isinstance(token, str) else None):
            return PlainTextResponse("Missing or wrong CSRF token", status_code=403)
        request.state.session = session
        request.state.form = form
        try:
            return await handler(request)
        except ApiError as exc:
            if is_not_found(exc):
                return error_page(request, exc)
            return back(request, error=exc.message)

    return wrapper


def back(request: Request, *, notice: str | None = None, error: str | None = None, to: str | None = None):
    """303 to ``to`` (default: the form's ``next`` or the referring page) with a message."""
    target = to or safe_next(request.state.form.get("next")) or "/projects"
    path, _, query = target.partition("?")
    kept = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k not in ("notice", "error")]
    kept += [(k, v) for k, v in (("notice", notice), ("error", error)) if v]
    return RedirectResponse(f"{path}?{urllib.parse.urlencode(kept)}" if kept else path, status_code=303)


def safe_next(value: Any) -> str | None:
    """A local path to go back to (never another host: ``//evil`` and ``http://...`` are refused)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    return value


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A template with the session's CSRF token, the current path and any notice/error message."""
    session: Session | None = getattr(request.state, "session", None)
    context.update(
        request=request,
        csrf_token=session.csrf_token if session else "",
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        notice=request.query_params.get("notice"),
        error=context.get("error") or request.query_params.get("error"),
    )
    return state(request).templates.TemplateResponse(request, template, context, status_code=status)


def error_page(request: Request, exc: ApiError) -> HTMLResponse:
    """The 404 page for an unknown id, else a 400 page with the server's message."""
    if is_not_found(exc):
        return render(request, "not_found.html", status=404, message=exc.message)
    return render(request, "not_found.html", status=400, message=exc.message, title="Request refused")
