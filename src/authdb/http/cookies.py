"""The browser's cookies (session, pre-session, MFA sign-in, CSRF): names and attributes in one
place.

On an https ``PUBLIC_URL`` the session cookie is ``__Host-authdb_session``: the prefix makes
browsers refuse it unless it is ``Secure``, host-only and ``Path=/`` (RFC 6265bis 4.1.3.2), so
a sibling subdomain cannot plant or shadow it. Over plain http (development) it is
``authdb_session``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import Response

from authdb.http.csrf import CSRF_COOKIE
from authdb.services.mfa import CHALLENGE_LIFETIME
from authdb.services.sessions import BrowserSession
from authdb.settings import Settings

SESSION_COOKIE = "authdb_session"
# Before sign-in, the CSRF token is bound to this random per-browser value. On https its
# ``__Host-`` name cannot be planted by a sibling subdomain, unlike ``authdb_csrf``, which the
# spec names for JavaScript to read.
PRESESSION_COOKIE = "authdb_presession"
# Between the password and the second factor of a page sign-in: the ``mfa_token``. A cookie,
# never the URL or the page, so that it stays out of history, logs and Referer headers.
MFA_COOKIE = "authdb_mfa"
MFA_COOKIE_MAX_AGE = int(CHALLENGE_LIFETIME.total_seconds())


def is_https(settings: Settings) -> bool:
    return settings.public_url.startswith("https://")


def host_only(name: str, settings: Settings) -> str:
    """``name`` with the ``__Host-`` prefix on an https PUBLIC_URL."""
    return f"__Host-{name}" if is_https(settings) else name


def attributes(settings: Settings, *, httponly: bool = True) -> dict[str, Any]:
    """The attributes of every authdb cookie."""
    # Every authdb cookie: the whole site, Secure on https, not sent on cross-site posts.
    return {"path": "/", "secure": is_https(settings), "httponly": httponly, "samesite": "lax"}


def session_cookie_name(settings: Settings) -> str:
    """``__Host-authdb_session`` on https, ``authdb_session`` otherwise."""
    return host_only(SESSION_COOKIE, settings)


def read_session_cookie(request: HTTPConnection, settings: Settings) -> str | None:
    return request.cookies.get(session_cookie_name(settings))


def presession_cookie_name(settings: Settings) -> str:
    return host_only(PRESESSION_COOKIE, settings)


def read_presession_cookie(request: HTTPConnection, settings: Settings) -> str | None:
    return request.cookies.get(presession_cookie_name(settings))


def set_presession_cookie(response: Response, settings: Settings, value: str) -> None:
    response.set_cookie(presession_cookie_name(settings), value, **attributes(settings))


def mfa_cookie_name(settings: Settings) -> str:
    """``__Host-authdb_mfa`` on https, ``authdb_mfa`` otherwise."""
    return host_only(MFA_COOKIE, settings)


def read_mfa_cookie(request: HTTPConnection, settings: Settings) -> str | None:
    return request.cookies.get(mfa_cookie_name(settings))


def set_mfa_cookie(response: Response, settings: Settings, mfa_token: str) -> None:
    # It lives no longer than the challenge it names (5 minutes).
    response.set_cookie(
        mfa_cookie_name(settings), mfa_token, max_age=MFA_COOKIE_MAX_AGE, **attributes(settings)
    )


def clear_mfa_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(mfa_cookie_name(settings), **attributes(settings))


def set_session_cookie(response: Response, settings: Settings, session: BrowserSession) -> None:
    response.set_cookie(
        session_cookie_name(settings),
        session.cookie,
        max_age=session.max_age,
        **attributes(settings),
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(session_cookie_name(settings), **attributes(settings))


def set_csrf_cookie(response: Response, settings: Settings, token: str) -> None:
    # Readable by same-origin JavaScript on purpose: it sends the value back as X-CSRF-Token.
    # A session cookie (no Max-Age): a new one is minted whenever it is missing.
    response.set_cookie(CSRF_COOKIE, token, **attributes(settings, httponly=False))
