"""The ASGI application: configuration, rendering, and the POST gate every
action passes (read-only refusal, CSRF check, form parsing)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from kiq._kiq import ENCRYPTED_DATA, __version__
from kiq.api import Api
from kiq.errors import CodecError, ConfigError, ConnectionError, TimeoutError
from kiq.web import display
from kiq.web.security import CSRF_COOKIE, CSRF_FIELD, Auth, Csrf, SecurityMiddleware

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["Dashboard", "Refused", "create_app"]

T = TypeVar("T")

#: Largest form body accepted (bulk actions post one key per selected job).
MAX_FORM_BYTES = 1 << 20


class Refused(Exception):
    """A request the dashboard will not carry out (the message says why)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Dashboard:
    """What every page needs: data access, settings, templates, CSRF."""

    api: Api
    read_only: bool
    page_size: int
    scan_budget: int
    poll_interval: float
    csrf: Csrf
    env: jinja2.Environment

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a core call off the event loop (it waits on Redis, GIL released)."""
        return await run_in_threadpool(fn, *args, **kwargs)

    def render(self, request: Request, template: str, **context: Any) -> HTMLResponse:
        cookie = request.cookies.get(CSRF_COOKIE)
        fresh = None
        if not cookie:
            cookie = fresh = Csrf.new_cookie()
        context.setdefault("notice", None)
        context.update(
            root=root(request),
            request=request,
            read_only=self.read_only,
            csrf_field=CSRF_FIELD,
            csrf_token=self.csrf.token(cookie),
            version=__version__,
            poll_ms=int(self.poll_interval * 1000),
            encrypted_arg=ENCRYPTED_DATA,
        )
        response = HTMLResponse(self.env.get_template(template).render(context))
        if fresh:
            response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="strict", path=root(request) or "/")
        return response

    async def form(self, request: Request) -> dict[str, list[str]]:
        """The fields of a POST, once it passed the read-only and CSRF checks."""
        if self.read_only:
            raise Refused("this dashboard is read-only", 403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise Refused("expected a form post", 415)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused("form too large", 413)
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        token = fields[CSRF_FIELD][0] if fields.get(CSRF_FIELD) else None
        if not self.csrf.valid(request.cookies.get(CSRF_COOKIE), token):
            raise Refused("missing or wrong CSRF token: reload the page and try again", 403)
        return fields

    def back(self, request: Request, path: str, **query: Any) -> RedirectResponse:
        """Redirects (303) to a dashboard path after an action."""
        q = urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
        return RedirectResponse(f"{root(request)}{path}{'?' + q if q else ''}", status_code=303)


def root(request: Request) -> str:
    """Where the dashboard is mounted ("" at the top of the server)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def refused(request: Request, exc: Exception) -> Response:
    """A refusal, bad input (a malformed job key) or Redis away, as a short plain answer."""
    if isinstance(exc, Refused):
        status = exc.status
    elif isinstance(exc, ConnectionError | TimeoutError):
        status = 503
    else:
        status = 400
    return PlainTextResponse(str(exc), status_code=status)


def create_app(
    target: Kiq | Api | str | None = None,
    *,
    read_only: bool = False,
    auth: Auth | None = None,
    namespace: str | None = None,
    secret: bytes | None = None,
    poll_interval: float = 5.0,
    page_size: int = 25,
    scan_budget: int = 10_000,
) -> Starlette:
    """The dashboard as an ASGI app, to serve alone or mount under a prefix::

        app.mount("/kiq", kiq.web.create_app("redis://localhost:6379/0"))

    Args:
        target: a Redis URL (default ``$REDIS_URL``), a ``Kiq`` app (its
            connections and dead-set limits) or a ``kiq.api.Api``.
        read_only: show everything, offer and accept no action.
        auth: called with each request (sync or async); a false result
            answers 401. ``kiq.web.BasicAuth(user, password)`` is one.
        namespace: key prefix of a ``redis-namespace`` Sidekiq 6 app.
        secret: key of the CSRF tokens (default: random per app, so tokens
            do not survive a restart; give one when several workers serve).
        poll_interval: seconds between the dashboard's live updates.
        page_size: jobs per page (Sidekiq's 25).
        scan_budget: entries a filtered search examines per request before
            it stops and offers to continue.
    """
    if poll_interval <= 0 or page_size < 1 or scan_budget < 1:
        raise ValueError("poll_interval, page_size and scan_budget must be positive")
    api = target if isinstance(target, Api) else Api(target, namespace=namespace)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kiq.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(display.filters())
    dash = Dashboard(api, read_only, page_size, scan_budget, poll_interval, Csrf(secret), env)

    from kiq.web import actions, pages

    static = resources.files("kiq.web") / "static"
    routes: list[BaseRoute] = [
        Mount("/static", app=StaticFiles(directory=str(static)), name="static"),
        *pages.routes(dash),
        *actions.routes(dash),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityMiddleware, auth=auth)],
        exception_handlers={Refused: refused, CodecError: refused, ConfigError: refused, ConnectionError: refused,
                            TimeoutError: refused},
    )
