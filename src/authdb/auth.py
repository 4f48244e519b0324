"""``Auth``: wires settings, database, services and routers together for one application."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from authdb import settings_env
from authdb.db import migrate
from authdb.db.engine import PoolBudget, async_url, create_engine, create_sessionmaker, is_sqlite
from authdb.db.session_reader import create_reader
from authdb.features import Features
from authdb.http import pages
from authdb.http.dependencies import AuthDeps
from authdb.http.routers import accounts, admin, discovery, events, me, mfa, ops, passkeys, tokens
from authdb.mail import EmailSender, Mailer
from authdb.passwords import Hasher
from authdb.ratelimit import RateLimits
from authdb.services.core import Core, PasswordValidator
from authdb.services.hooks import C, Hooks
from authdb.services.signing_key import load_fallback_keys, load_signing_key
from authdb.services.signing_keys import KeyRing
from authdb.settings import Settings


class SchemaOutOfDate(RuntimeError):
    """The database needs ``authdb migrate`` before authdb can use it."""


class Auth:
    """Database-backed authentication for one FastAPI application.

    ``router`` holds the API, ``pages_router`` the hosted pages (include it before
    ``router``), ``lifespan`` opens and closes the database, and ``current_user`` /
    ``current_active_user`` / ``current_superuser`` are dependencies; they accept a bearer
    token, or the pages' session cookie with an ``X-CSRF-Token`` header on unsafe methods.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        auto_migrate: bool | None = None,
        profile: type[BaseModel] | None = None,
        features: Mapping[str, bool] | None = None,
        email_sender: EmailSender | None = None,
        password_validators: Sequence[PasswordValidator] = (),
    ):
        self.settings = settings or Settings()
        self.features = Features.from_mapping(features)
        self.hooks = Hooks()
        settings_env.log_unknown(self.settings)  # a mistyped AUTHDB_ variable gets a word
        url = self.settings.database_url
        sqlite = is_sqlite(async_url(url))
        # AUTHDB_DATABASE_POOL_SIZE caps everything this process holds: both pools together.
        budget = PoolBudget.split(self.settings.database_pool_size, sqlite=sqlite)
        pgbouncer = self.settings.database_pgbouncer
        engine = create_engine(url, pool_size=budget.engine, pgbouncer=pgbouncer)
        sessionmaker = create_sessionmaker(engine)
        self.core = Core(
            settings=self.settings,
            engine=engine,
            sessionmaker=sessionmaker,
            hasher=Hasher.from_settings(self.settings),
            session_reader=create_reader(
                async_url(url), pool_size=budget.reader, pgbouncer=pgbouncer
            ),
            profile_model=profile,
            hooks=self.hooks,
            password_validators=tuple(password_validators),
        )
        # SQLite is embedded, so it is ours to migrate; a shared server is the operator's.
        self.auto_migrate = sqlite if auto_migrate is None else auto_migrate
        # Log that the secret key is a generated one; `authdb serve` said so once already.
        self.warn_generated_key = True
        self.limits = RateLimits(self.settings)
        self.mailer = Mailer(self.settings, sender=email_sender)
        self.deps = AuthDeps(self.core, self.limits, self.mailer)
        self.current_session = self.deps.current_session
        self.current_user = self.deps.current_user
        self.current_active_user = self.deps.current_active_user
        self.current_superuser = self.deps.current_superuser
        self.db_session = self.deps.db_session
        self.router = APIRouter()
        # Order matters: /users/me must be matched before /users/{id}.
        for build in (
            tokens.build,
            discovery.build,
            me.build,
            events.build,
            mfa.build,
            passkeys.build,
            accounts.build,
            admin.build,
        ):
            self.router.include_router(build(self.deps))
        self.ops_router = ops.build(self.core)
        self.pages_router = pages.build(self.deps)

    def on(self, event: str) -> Callable[[C], C]:
        """Decorator: ``@auth.on("user_registered")`` registers ``async def f(user, client)``,
        called after the change commits (names in ``authdb.services.hooks.EVENTS``).
        Raises ValueError for an unknown event name."""
        return self.hooks.on(event)

    async def startup(self, *, issue_tokens: bool = True) -> None:
        """Check (or, on SQLite, bring up) the schema and load the secret and signing keys.

        ``issue_tokens=False`` (the CLI) loads no signing key: such a process neither signs
        nor verifies tokens, and must not make keys just by starting.
        """
        if self.auto_migrate:
            await migrate.upgrade(self.core.engine)
        elif not await migrate.is_up_to_date(self.core.engine):
            raise SchemaOutOfDate("the database schema is out of date: run `authdb migrate`")
        warn = issue_tokens and self.warn_generated_key
        self.core.secret = await load_signing_key(self.core, warn=warn)
        self.core.secret_fallbacks = await load_fallback_keys(self.core)
        if not issue_tokens:
            return
        keyring = KeyRing(self.core)
        await keyring.start()
        self.core.keyring = keyring

    async def shutdown(self) -> None:
        if self.core.keyring is not None:
            await self.core.keyring.stop()
            self.core.keyring = None
        await self.core.session_reader.close()
        await self.core.engine.dispose()

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI | None = None) -> AsyncIterator[None]:
        """Pass as ``FastAPI(lifespan=auth.lifespan)``."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()
