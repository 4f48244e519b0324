"""FastAPI dependencies bound to one ``Auth``: the current user and friends."""

from collections.abc import AsyncIterator, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.openapi.models import OAuth2, OAuthFlowPassword
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as OrmSession

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


def active(user: User) -> User:
    """``user``, unless disabled: then the HTTPException of InactiveUser (400)."""
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
        scheme = bearer.model
        assert isinstance(scheme, OAuth2) and scheme.flows.password is not None
        # What the OpenAPI security scheme shows; ``token_url`` moves it to the mount point.
        self._password_flow: OAuthFlowPassword = scheme.flows.password

        # One level of dependencies on top of current_session (not a chain): FastAPI's cost
        # grows with depth, and a route asking for two of them still authenticates once.
        Token = Annotated[str | None, Depends(bearer)]

        async def current_session(request: Request, token: Token) -> Authenticated:
            try:
                if token is not None:
                    if len(token) > MAX_TOKEN_CHARS:  # refused unread: a parse costs its length
                        raise NotAuthenticated
                    auth = await sessions.authenticate(core, token)
                else:
                    cookie = read_session_cookie(request, core.settings)
                    if cookie is None or "authorization" in request.headers:
                        raise _not_authenticated()
                    auth = await self._cookie_session(request, cookie)
                _share_user(request.scope, user=auth.user)
                return auth
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
            return active(auth.user)

        async def current_superuser(auth: Session) -> User:
            user = active(auth.user)
            if not user.is_superuser:
                raise to_http_exception(PermissionDenied())
            return user

        async def client(request: Request) -> ClientInfo:
            return self.client_resolver(request)

        async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
            """An ``AsyncSession`` on authdb's engine for the application's own queries; the
            route commits what it wants kept (anything else is rolled back at the end).

            The request's authenticated user (``current_user`` and friends) belongs to this
            session, so ``Todo(owner=user)`` and ``db.get(User, user.id)`` agree.
            """
            async with core.sessionmaker() as db:
                event.listen(db.sync_session, "before_flush", _refuse_user_changes)
                _share_user(request.scope, db=db)
                yield db

        self.current_session = current_session
        self.optional_session = self._optional_session
        self.current_user = current_user
        self.current_active_user = current_active_user
        self.current_superuser = current_superuser
        self.client = client
        self.db_session = db_session

    @property
    def token_url(self) -> str:
        """The ``tokenUrl`` of the OAuth2 password flow in the OpenAPI security scheme."""
        return self._password_flow.tokenUrl

    @token_url.setter
    def token_url(self, url: str) -> None:
        # The scheme's model is read whenever an OpenAPI document is generated: the app's
        # cached document must be dropped too (Auth.lifespan does).
        self._password_flow.tokenUrl = url

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


# Request-scope keys of the authenticated user and of the route's db_session, whichever
# dependency FastAPI resolves first; the second one puts the user into the session.
_USER_KEY = "authdb.user"
_DB_KEY = "authdb.db_session"


def _share_user(
    scope: MutableMapping[str, Any], *, user: User | None = None, db: AsyncSession | None = None
) -> None:
    """Make the request's user a member of the request's ``db_session`` (no query: the user
    is a detached row, and adding it makes it the session's copy of that row)."""
    if user is not None:
        scope[_USER_KEY] = user
        db = scope.get(_DB_KEY)
    else:
        scope[_DB_KEY] = db
        user = scope.get(_USER_KEY)
    if user is None or db is None:
        return
    key = inspect(user).key
    if inspect(user).detached and key is not None and key not in db.sync_session.identity_map:
        db.add(user)


class UserChangedOutsideAuthdb(RuntimeError):
    """An application's ``db_session`` tried to write a row of ``users`` itself."""


def _refuse_user_changes(session: OrmSession, _context: object, _instances: object) -> None:
    """Users change through ``auth.users`` (its rules, audit trail and events), never by
    setting attributes on the injected user and committing the application's session."""
    for user in (*session.new, *session.deleted, *session.dirty):
        if not isinstance(user, User):
            continue
        if user in session.dirty and not session.is_modified(user, include_collections=False):
            continue  # only attached (the request's user), or a relationship of the app's
        raise UserChangedOutsideAuthdb(
            f"the application's session would write user {user.id} itself; change users "
            "through auth.users (update, set_password, disable, delete)"
        )


def _not_authenticated() -> HTTPException:
    # The words and header of FastAPI's OAuth2PasswordBearer when no credentials came at all.
    return HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
