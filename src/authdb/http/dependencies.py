"""FastAPI dependencies bound to one ``Auth``: the current user and friends."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from authdb.db.models import User
from authdb.db.outage import is_outage
from authdb.errors import AuthError, InactiveUser, NotAuthenticated, PermissionDenied
from authdb.http.client import ClientResolver
from authdb.http.errors import outage_http_exception, to_http_exception
from authdb.mail import Mailer
from authdb.ratelimit import RateLimits
from authdb.services import sessions
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import Authenticated

# Our access tokens are a few hundred characters; a mounted app has no header limit of its own.
MAX_BEARER_CHARS = 8 * 1024


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
        bearer = OAuth2PasswordBearer(tokenUrl=token_url)

        # One level of dependencies on top of current_session (not a chain): FastAPI's cost
        # grows with depth, and a route asking for two of them still authenticates once.
        Token = Annotated[str, Depends(bearer)]

        async def current_session(token: Token) -> Authenticated:
            if len(token) > MAX_BEARER_CHARS:  # refused unread: a JWT parse costs its length
                raise to_http_exception(NotAuthenticated())
            try:
                return await sessions.authenticate(core, token)
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

        self.current_session = current_session
        self.current_user = current_user
        self.current_active_user = current_active_user
        self.current_superuser = current_superuser
        self.client = client
