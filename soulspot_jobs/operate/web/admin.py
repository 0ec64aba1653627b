"""Who may act on the page: the holder of ``SOULSPOT_ADMIN_TOKEN``, and only from the page itself.

Reading needs nothing. Acting (every ``POST /actions/...``) needs the token, presented either

- by a script, as ``Authorization: Bearer <token>``: a header no other site can make a browser
  send (no CORS is offered), so no further check is needed; or
- by a browser, which signs in once (``POST /login`` with the token) and gets a session cookie:
  ``HttpOnly`` and ``SameSite=Strict``, so no other site's page can send it along. Each action
  form also carries a CSRF token tied to the session, and a request whose ``Origin`` names
  another site is refused, so that even a same-site page elsewhere on the host cannot act.

The cookie and the CSRF token are HMACs of the admin token: nothing is stored on the server, any
number of ``serve`` processes accept the same session, and changing the token signs everyone out.
With no token set the page is read-only and every action is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

#: Why nobody may act on a page served without ``SOULSPOT_ADMIN_TOKEN``.
READ_ONLY = "the page is read-only: SOULSPOT_ADMIN_TOKEN is not set"
#: Name of the session cookie of a signed-in operator.
SESSION_COOKIE = "soulspot_admin"
#: Name of the form field carrying the CSRF token.
CSRF_FIELD = "csrf_token"
#: Seconds a browser keeps the session cookie.
SESSION_SECONDS = 12 * 3600


class Refused(Exception):
    """An action refused before it ran: ``status`` 401 (no credentials) or 403 (not these)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Admin:
    """Checks credentials against ``token`` (``""``: nobody may act)."""

    token: str

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def session(self) -> str:
        """The session cookie's value for a signed-in operator."""
        return self._mac("session")

    def csrf(self) -> str:
        """The CSRF token that every action form of a signed-in page carries."""
        return self._mac("csrf")

    def accepts_token(self, presented: str) -> bool:
        return self.enabled and hmac.compare_digest(presented.encode(), self.token.encode())

    def signed_in(self, request: Request) -> bool:
        """Whether ``request`` comes from a browser that signed in with the current token."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return self.enabled and hmac.compare_digest(cookie.encode(), self.session().encode())

    def check(self, request: Request, form_csrf: str | None) -> None:
        """Raise :class:`Refused` unless ``request`` may act (see the module docstring)."""
        if not self.enabled:
            raise Refused(403, READ_ONLY)
        authorization = request.headers.get("authorization", "")
        if authorization:
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() != "bearer" or not self.accepts_token(presented.strip()):
                raise Refused(401, "wrong admin token")
            return
        if not self.signed_in(request):
            raise Refused(401, "sign in with SOULSPOT_ADMIN_TOKEN first")
        if not same_origin(request):
            raise Refused(403, "the request came from another site")
        if not hmac.compare_digest((form_csrf or "").encode(), self.csrf().encode()):
            raise Refused(403, "the form's CSRF token is missing or stale; reload the page")

    def _mac(self, purpose: str) -> str:
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from a page of another origin."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin with every cross-site POST; its absence means a same-origin
        # navigation in an older browser, or a client that is not a browser.
        return origin is None
    return origin == f"{request.url.scheme}://{request.url.netloc}"
