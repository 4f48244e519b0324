"""What every service needs: settings, database, hasher, token codec and clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from authdb.db.models import utcnow
from authdb.db.session_reader import SessionReader
from authdb.db.sign_in_store import SignInStore
from authdb.features import Features
from authdb.links import Links
from authdb.passwords import Hasher
from authdb.sealing import Sealer
from authdb.services.lockout import InFlight
from authdb.settings import Settings
from authdb.tokens import JWTCodec

if TYPE_CHECKING:
    from pydantic import BaseModel

    from authdb.services.hooks import Hooks
    from authdb.services.signing_keys import KeyRing


class PasswordValidator(Protocol):
    """An application's extra password rule, applied after authdb's own: returns the problem
    as a sentence ("Password must not contain the company name"), or None if it passes."""

    def __call__(self, password: str, *, username: str | None, email: str | None) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is on the other end of a request, for sessions and the audit log."""

    ip_address: str | None = None
    user_agent: str | None = None

    @property
    def stored_user_agent(self) -> str | None:
        """The user agent as sessions and audit rows store it: at most 512 characters (the
        columns' size), None when empty."""
        return (self.user_agent or "")[:512] or None


CLI_CLIENT = ClientInfo(ip_address=None, user_agent="authdb-cli")


@dataclass
class Core:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: Hasher
    # The per-request session check; see authdb.db.session_reader for why it is separate.
    session_reader: SessionReader
    # A password sign-in's read and common write; see authdb.db.sign_in_store for why.
    sign_in: SignInStore
    # The access-token codec on this process's current key set; the key ring replaces it.
    codec: JWTCodec | None = None
    keyring: KeyRing | None = None
    # The deployment's secret (AUTHDB_SECRET_KEY or the stored one); other keys derive from it.
    secret: str | None = None
    # Earlier secrets that still open values sealed at rest (AUTHDB_SECRET_KEY_FALLBACKS, and
    # the generated key once AUTHDB_SECRET_KEY replaces it).
    secret_fallbacks: tuple[str, ...] = ()
    clock: Callable[[], datetime] = field(default=utcnow)
    # The application's profile model (``Auth(profile=...)``), or None: no profile fields.
    profile_model: type[BaseModel] | None = None
    # The application's callbacks (``@auth.on``); None in processes without an ``Auth``.
    hooks: Hooks | None = None
    # The application's extra password rules, applied after authdb's own.
    password_validators: tuple[PasswordValidator, ...] = ()
    # Where the app mounted authdb's routes, for emailed links (``Auth.lifespan`` finds them).
    links: Links = field(default_factory=Links)
    # Failed logins this process is still writing, by lockout key (see lockout.InFlight).
    failures_in_flight: InFlight = field(default_factory=InFlight)
    # Which parts the app mounts (``Auth(features=...)``): a service offers nothing left out.
    features: Features = field(default_factory=Features)

    def sealer(self, purpose: str) -> Sealer:
        """A Sealer for ``purpose`` under the deployment secret and its fallbacks."""
        if self.secret is None:
            raise RuntimeError("authdb is not started: use auth.lifespan or await auth.startup()")
        return Sealer(self.secret, self.secret_fallbacks, purpose=purpose)

    @property
    def jwt(self) -> JWTCodec:
        if self.codec is None:
            raise RuntimeError("authdb is not started: use auth.lifespan or await auth.startup()")
        return self.codec
