"""FastAPI dependencies bound to one ``Auth``: the current user and friends."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import User
from authdb.db.outage import is_outage
from authdb.errors import AuthError, CSRFFailed, InactiveUser, NotAuthenticated, PermissionDenied
from authdb.http.client import ClientResolver
from authdb.http.cookies import read_session_cookie
from authdb.http.csrf import CSRF_COOKIE, CSRF_HEADER, SAFE_METHODS, CSRFTokens
from authdb.http.errors import outage_http_exception, to_http_exception
from authdb.mail import Mailer
from authdb.ratelimit import RateLimits
from authdb.services import sessions
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import Authenticated
from authdb.tokens import MAX_TOKEN_CHARS, hash_opaque_token


def _active(user: User) -> User:
    if user.disabled:
        raise to_http_exception(InactiveUser())
    return user


class AuthDeps:
    """Everything a route needs, and the dependencies an application uses."""

    def __init__(
        self, core: Core, limits: RateLimits, mailer: Mailer, token_url: str = "token"
    ) -> None:
        self.core = core
        self.limits = limits
        self.mailer = mailer
        self.client_resolver = ClientResolver(core.settings.trusted_proxies)
        self._csrf: CSRFTokens | None = None
        # auto_error off: without a bearer token, a browser's session cookie may stand in.
        bearer = OAuth2PasswordBearer(tokenUrl=token_url, auto_error=False)

        # One level of dependencies on top of current_session (not a chain): FastAPI's cost
        # grows with depth, and a route asking for two of them still authenticates once.
        Token = Annotated[str | None, Depends(bearer)]

        async def current_session(request: Request, token: Token) -> Authenticated:
            try:
                if token is not None:
                    if len(token) > MAX_TOKEN_CHARS:  # refused unread: a parse costs its length
                        raise NotAuthenticated
                    return await sessions.authenticate(core, token)
                cookie = read_session_cookie(request, core.settings)
                if cookie is None or "authorization" in request.headers:
                    raise _not_authenticated()
                return await self._cookie_session(request, cookie)
            except AuthError as exc:
                raise to_http_exception(exc) from None
            except Exception as exc:
                # The session check runs inside the host app's own routes too: a database
                # outage must be a 503 there as well, whatever handlers that app installed.
                if not is_outage(exc):
                    raise
                raise outage_http_exception(exc) from None

        Session = Annotated[Authenticated, Depends(current_session)]

        async def current_user(auth: Session) -> User:
            return auth.user

        async def current_active_user(auth: Session) -> User:
            return _active(auth.user)

        async def current_superuser(auth: Session) -> User:
            user = _active(auth.user)
            if not user.is_superuser:
                raise to_http_exception(PermissionDenied())
            return user

        async def client(request: Request) -> ClientInfo:
            return self.client_resolver(request)

        async def db_session() -> AsyncIterator[AsyncSession]:
            """An ``AsyncSession`` on authdb's engine for the application's own queries; the
            route commits what it wants kept (anything else is rolled back at the end)."""
            async with core.sessionmaker() as db:
                yield db

        self.current_session = current_session
        self.optional_session = self._optional_session
        self.current_user = current_user
        self.current_active_user = current_active_user
        self.current_superuser = current_superuser
        self.client = client
        self.db_session = db_session

    @property
    def csrf(self) -> CSRFTokens:
        """The CSRF token mint, keyed from the deployment secret (known once started)."""
        if self._csrf is None:
            if self.core.secret is None:
                raise RuntimeError("authdb is not started: use auth.lifespan")
            self._csrf = CSRFTokens(self.core.secret)
        return self._csrf

    async def _cookie_session(self, request: Request, cookie: str) -> Authenticated:
        """A session cookie in place of a bearer token: on unsafe methods only together with
        ``X-CSRF-Token`` matching the ``authdb_csrf`` cookie (403 otherwise)."""
        if request.method not in SAFE_METHODS and not self.csrf.check(
            request.cookies.get(CSRF_COOKIE),
            request.headers.get(CSRF_HEADER),
            hash_opaque_token(cookie),
        ):
            raise CSRFFailed
        return await sessions.authenticate_cookie(self.core, cookie)

    async def _optional_session(self, request: Request) -> Authenticated | None:
        """The browser's live cookie session, or None; pages check their own CSRF tokens.

        A disabled account is treated as signed out.
        """
        cookie = read_session_cookie(request, self.core.settings)
        if cookie is None:
            return None
        try:
            auth = await sessions.authenticate_cookie(self.core, cookie)
        except NotAuthenticated:
            return None
        return None if auth.user.disabled else auth


def _not_authenticated() -> HTTPException:
    # The words and header of FastAPI's OAuth2PasswordBearer when no credentials came at all.
    return HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
