"""The cookie that binds a provider sign-in to the browser that started it.

``state`` alone proves nothing if an attacker can hand a victim's browser a callback URL
from the attacker's own flow (login CSRF: CVE-2025-68481 in fastapi-users). So the flow's
secrets (``state``, the PKCE ``code_verifier``, the OIDC ``nonce``) travel in a short-lived
HttpOnly cookie, sealed (AES-GCM) and bound to the provider's name, and the callback must
show the same ``state`` as that cookie (RFC 9700, section 4.7.1).
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from starlette.requests import HTTPConnection
from starlette.responses import Response

from authdb.http.cookies import attributes, host_only
from authdb.sealing import Sealer, Unsealable
from authdb.settings import Settings

COOKIE = "authdb_oauth"
# Long enough to sign in at the provider (and perhaps register there); no longer.
LIFETIME_SECONDS = 600
SEAL_PURPOSE = "authdb oauth flow"
MAX_COOKIE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Flow:
    """One sign-in at a provider, from the authorization request to the callback.

    ``link_user``: the signed-in user who asked to link the provider (None: a sign-in).
    ``expires_at``: seconds since the epoch.
    """

    provider: str
    state: str
    code_verifier: str
    nonce: str
    redirect_uri: str
    next: str
    link_user: int | None
    expires_at: int

    @classmethod
    def start(
        cls,
        provider: str,
        redirect_uri: str,
        now: datetime,
        *,
        next_: str = "",
        link_user: int | None = None,
    ) -> Flow:
        """A new flow with fresh random ``state``, ``nonce`` (256 bits each) and PKCE
        ``code_verifier`` (43 characters of RFC 7636's alphabet, section 4.1)."""
        return cls(
            provider=provider,
            state=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),
            nonce=secrets.token_urlsafe(32),
            redirect_uri=redirect_uri,
            next=next_,
            link_user=link_user,
            expires_at=int(now.timestamp()) + LIFETIME_SECONDS,
        )

    def seal(self, sealer: Sealer) -> str:
        sealed = sealer.seal(json.dumps(asdict(self)).encode(), _context(self.provider))
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    @classmethod
    def open(cls, sealer: Sealer, value: str, provider: str, now: datetime) -> Flow | None:
        """The flow in a cookie, if it is ours, for ``provider``, and unexpired; else None."""
        if len(value) > MAX_COOKIE_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain, _stale = sealer.open(raw, _context(provider))
            flow = cls(**json.loads(plain))
        except (ValueError, TypeError, Unsealable):
            return None
        if flow.provider != provider or flow.expires_at <= now.timestamp():
            return None
        return flow


def _context(provider: str) -> str:
    return f"oauth:{provider}"


def cookie_name(settings: Settings) -> str:
    """``__Host-authdb_oauth`` on https, ``authdb_oauth`` otherwise."""
    return host_only(COOKIE, settings)


def read(request: HTTPConnection, settings: Settings) -> str | None:
    return request.cookies.get(cookie_name(settings))


def set_cookie(response: Response, settings: Settings, value: str) -> None:
    # SameSite=Lax: the provider sends the browser back by a top-level GET, which Lax allows.
    response.set_cookie(
        cookie_name(settings), value, max_age=LIFETIME_SECONDS, **attributes(settings)
    )


def clear_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(cookie_name(settings), **attributes(settings))
