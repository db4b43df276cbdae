"""The dashboard's protections: who may see it, forged requests, and the
headers that keep a page from being framed, leaking its address or running
scripts it did not ship.

- **auth**: a callable on the request (sync or async) returning true to let it
  through; :class:`BasicAuth` is one (``kiq web`` uses it with
  ``KIQ_WEB_USER``/``KIQ_WEB_PASSWORD``).
- **CSRF**: every form carries a token, an HMAC of a random per-browser cookie
  under the app's secret; a POST without the matching token is refused (403).
  The cookie is ``SameSite=Strict`` and ``HttpOnly`` as a second wall.
- **headers**: a Content-Security-Policy allowing only the package's own
  script, styles and images (no inline script), ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer``, ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Auth", "BasicAuth", "CSRF_COOKIE", "CSRF_FIELD", "Csrf", "SecurityMiddleware"]

#: Decides whether a request may see the dashboard.
Auth = Callable[[Request], bool | Awaitable[bool]]

CSRF_COOKIE = "kiq_csrf"
#: The form field holding the token (Sidekiq's name for it).
CSRF_FIELD = "authenticity_token"

HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


class BasicAuth:
    """HTTP Basic authentication against one user name and password."""

    realm = "kiq"

    def __init__(self, user: str, password: str) -> None:
        if not user or not password:
            raise ValueError("BasicAuth needs a user name and a password")
        self._expected = hashlib.sha256(f"{user}:{password}".encode()).digest()

    def __call__(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        # Compare digests so the time taken says nothing about the password.
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._expected)


class Csrf:
    """Issues and checks CSRF tokens bound to a per-browser cookie."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_hex(16)

    def token(self, cookie: str) -> str:
        return hmac.new(self._secret, cookie.encode(), hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token) and hmac.compare_digest(self.token(cookie or ""), token or "")


class SecurityMiddleware:
    """Adds the security headers to every response and runs the auth hook first."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        if self.auth is not None and not await _allowed(self.auth, Request(scope, receive)):
            headers: dict[str, Any] = {}
            realm = getattr(self.auth, "realm", None)
            if realm:
                headers["WWW-Authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
            response: Response = PlainTextResponse("authentication required", status_code=401, headers=headers)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def _allowed(auth: Auth, request: Request) -> bool:
    result = auth(request)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
