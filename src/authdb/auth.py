"""``Auth``: wires settings, database, services and routers together for one application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.types import ASGIApp

from authdb import extras, links, settings_env
from authdb.db import migrate
from authdb.db.engine import PoolBudget, async_url, create_engine, create_sessionmaker, is_sqlite
from authdb.db.schema import check_user_not_subclassed
from authdb.db.session_cache import create_reader, effective_cache_size, watch_commits
from authdb.db.sign_in_store import create_sign_in_store
from authdb.features import Features
from authdb.http import pages
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import APP_EXCEPTION_HANDLERS
from authdb.http.routers import accounts, admin, discovery, events, me, mfa, ops, passkeys, tokens
from authdb.mail import EmailSender, Mailer
from authdb.passwords import Hasher
from authdb.ratelimit import RateLimits
from authdb.services.core import Core, PasswordValidator
from authdb.services.hooks import C, Hooks
from authdb.services.profile import configured_profile_model
from authdb.services.signing_key import load_fallback_keys, load_signing_key
from authdb.services.signing_keys import KeyRing
from authdb.services.user_service import UserService
from authdb.settings import Settings

_App = TypeVar("_App", bound=Starlette)
_State = TypeVar("_State", None, Mapping[str, Any])

log = logging.getLogger("authdb")


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
        check_user_not_subclassed()  # again at startup, for models imported after Auth()
        self.settings = settings or Settings()
        self.features = Features.from_mapping(features)
        self.hooks = Hooks()
        settings_env.log_unknown(self.settings)  # a mistyped AUTHDB_ variable gets a word
        # A setting whose extra is missing fails here, naming the pip install, not at a click.
        extras.check(self.settings)
        url = self.settings.database_url
        sqlite = is_sqlite(async_url(url))
        # AUTHDB_DATABASE_POOL_SIZE caps everything this process holds, LISTEN included.
        pgbouncer = self.settings.database_pgbouncer
        pool_size = self.settings.database_pool_size
        cache_size = effective_cache_size(self.settings, sqlite=sqlite)
        listener = cache_size > 0 and not sqlite
        budget = PoolBudget.split(pool_size, sqlite=sqlite, listener=listener)
        engine = create_engine(url, pool_size=budget.engine, pgbouncer=pgbouncer)
        sessionmaker = create_sessionmaker(engine)
        self.hooks.bind(sessionmaker)  # this Auth's sessions call this Auth's callbacks
        reader = create_reader(
            async_url(url), pool_size=budget.reader, pgbouncer=pgbouncer, cache_size=cache_size
        )
        watch_commits(sessionmaker, reader.cache)  # a change made here empties it at commit
        self.core = Core(
            settings=self.settings,
            engine=engine,
            sessionmaker=sessionmaker,
            hasher=Hasher.from_settings(self.settings),
            session_reader=reader,
            sign_in=create_sign_in_store(
                async_url(url),
                reader.reader,
                own_connection=budget.sign_in == 1,
                pgbouncer=pgbouncer,
            ),
            # AUTHDB_PROFILE_MODEL serves the standalone service; an explicit model wins.
            profile_model=profile or configured_profile_model(self.settings),
            hooks=self.hooks,
            password_validators=tuple(password_validators),
            features=self.features,
        )
        # SQLite is embedded, so it is ours to migrate; a shared server is the operator's.
        self.auto_migrate = sqlite if auto_migrate is None else auto_migrate
        # Log that the secret key is a generated one; `authdb serve` said so once already.
        self.warn_generated_key = True
        self.limits = RateLimits(self.settings)
        self.mailer = Mailer(self.settings, sender=email_sender)
        # The service's layout until the lifespan finds where the app mounted the router.
        token_url = links.public_path(self.settings.public_url, links.Links().token)
        self.deps = AuthDeps(self.core, self.limits, self.mailer, token_url)
        self.current_session = self.deps.current_session
        self.current_user = self.deps.current_user
        self.current_active_user = self.deps.current_active_user
        self.current_superuser = self.deps.current_superuser
        self.db_session = self.deps.db_session
        self.router = _api_router(self.deps, self.features)
        self.ops_router = ops.build(self.core)
        # The account services for application code: the API's and the CLI's functions.
        self.users = UserService(self.core)
        # Left out: an empty router, so that including it still works.
        self.pages_router = (
            pages.build(self.deps, self.features) if self.features.pages else APIRouter()
        )

    @property
    def exception_handlers(self) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
        """``FastAPI(exception_handlers=auth.exception_handlers)``: authdb's errors raised in
        the application's own routes (``auth.users``: NotFound, Conflict, InvalidInput...)
        answer as in authdb's routes (404, 409, 422 with ``detail``) instead of 500. Handlers
        must be given before the app starts: Starlette fixes them at its first request."""
        return dict(APP_EXCEPTION_HANDLERS)

    @property
    def engine(self) -> AsyncEngine:
        """authdb's SQLAlchemy engine (its pool and SQLite settings), for the application's
        own start-up checks and scripts; routes use the ``db_session`` dependency."""
        return self.core.engine

    def on(self, event: str) -> Callable[[C], C]:
        """Decorator: ``@auth.on("user_registered")`` registers ``async def f(user, client)``,
        called after the change commits (names in ``authdb.services.hooks.EVENTS``).
        Raises ValueError for an unknown event name."""
        return self.hooks.on(event)

    async def startup(self, *, issue_tokens: bool = True) -> None:
        """Check (or, on SQLite, bring up) the schema and load the secret and signing keys.

        ``issue_tokens=False`` (the CLI) loads no signing key: such a process neither signs
        nor verifies tokens, and must not make keys just by starting.

        Raises ``authdb.mail.TemplateProblem`` first if an email template cannot be rendered
        (a typo in AUTHDB_TEMPLATES_DIR), naming the file and the reason.
        """
        self.mailer.check_templates()
        check_user_not_subclassed()
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
        """Wait for event callbacks still running (cancelled after 10 s), then close."""
        await self.hooks.drain()
        if self.core.keyring is not None:
            await self.core.keyring.stop()
            self.core.keyring = None
        await self.core.session_reader.close()
        await self.core.sign_in.close()
        self.core.hasher.close()
        await self.core.engine.dispose()

    @asynccontextmanager
    async def lifespan(self, app: Starlette | None = None) -> AsyncIterator[None]:
        """Pass as ``FastAPI(lifespan=auth.lifespan)``; an app with a lifespan of its own uses
        ``lifespan_with``. Starts authdb (see ``startup``) and, given the app, points the
        OpenAPI token URL and emailed links at where it mounted authdb (``follow_mounts``)."""
        if app is not None:
            self.follow_mounts(app)
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    def lifespan_with(
        self, app_lifespan: Callable[[_App], AbstractAsyncContextManager[_State]]
    ) -> Callable[[_App], AbstractAsyncContextManager[_State]]:
        """``FastAPI(lifespan=auth.lifespan_with(my_lifespan))`` for an app with its own lifespan.

        authdb starts first, so ``my_lifespan`` can already use ``auth.users`` and the
        database; it stops after ``my_lifespan`` has finished. What ``my_lifespan`` yields
        (None, or a state mapping for ``request.state``) is the app's lifespan state. An
        exception from either start-up stops the app from starting, as usual.
        """

        @asynccontextmanager
        async def lifespan(app: _App) -> AsyncIterator[_State]:
            async with self.lifespan(app), app_lifespan(app) as state:
                yield state

        return lifespan

    def follow_mounts(self, app: ASGIApp) -> None:
        """Point the OpenAPI security scheme's token URL and the emailed links (verify, reset,
        account) at the paths where ``app`` serves authdb's routes and pages, under any
        ``include_router`` prefix or unnamed mount; ``PUBLIC_URL``'s path (the root path a
        proxy strips) goes in front.

        ``lifespan`` calls it; call it yourself only if you start authdb another way
        (``await auth.startup()``), once the routers are included. If ``auth.router`` is
        included twice, the first place counts.
        """
        found = links.discover(app)
        self.core.links = found
        if links.route_path(app, links.TOKEN_ROUTE) is None:
            if links.has_mounts(app):
                log.warning(
                    "auth.router's token route is not found in the app (mounted where authdb "
                    "cannot see it?): the OpenAPI token URL and emailed links keep the "
                    "standalone service's paths (/token, /verify, /reset-password)"
                )
            return  # the app serves no token endpoint of ours: nothing to point at
        # An absolute path: Swagger UI resolves a relative one against the OpenAPI "servers"
        # entry, and FastAPI's (the root path) has no trailing slash.
        self.deps.token_url = links.public_path(self.settings.public_url, found.token)
        if isinstance(app, FastAPI):
            app.openapi_schema = None  # generated before start-up: it has the old URL


def _api_router(deps: AuthDeps, features: Features) -> APIRouter:
    """``auth.router``: the API, less the parts ``features`` leaves out.

    ``mfa`` off removes the routes that manage MFA (``/users/me/mfa/...``), not its check:
    an account that has MFA on still needs its second factor to sign in, and an admin can
    still turn it off (``DELETE /users/{id}/mfa``, with ``admin``).
    """
    router = APIRouter()
    builds = [me.build, tokens.build, discovery.build, events.build]
    if features.mfa:
        builds.append(mfa.build)
    if features.passkeys:
        builds.append(passkeys.build)
    builds.append(accounts.build)
    if features.admin:
        builds.append(admin.build)  # last: /users/me must be matched before /users/{id}
    for build in builds:
        part = build(deps)
        if build is accounts.build and not features.register:
            _drop(part, "/register")
        router.include_router(part)
    return router


def _drop(router: APIRouter, path: str) -> None:
    """Remove ``router``'s API routes at ``path`` (before it is included anywhere)."""
    router.routes[:] = [
        r for r in router.routes if not (isinstance(r, APIRoute) and r.path == path)
    ]
