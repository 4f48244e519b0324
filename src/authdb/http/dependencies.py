"""FastAPI dependencies bound to one ``Auth``: the current user and friends."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from authdb.db.models import User
from authdb.errors import AuthError, InactiveUser, PermissionDenied
from authdb.http.client import ClientResolver
from authdb.http.errors import to_http_exception
from authdb.mail import Mailer
from authdb.ratelimit import RateLimits
from authdb.services import sessions
from authdb.services.core import ClientInfo, Core
from authdb.services.sessions import Authenticated


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

        # Each dependency authenticates straight from the bearer token: a chain of
        # dependencies costs FastAPI a measurable share of a GET /users/me.
        Token = Annotated[str, Depends(bearer)]

        async def current_session(token: Token) -> Authenticated:
            try:
                return await sessions.authenticate(core, token)
            except AuthError as exc:
                raise to_http_exception(exc) from None

        async def current_user(token: Token) -> User:
            return (await current_session(token)).user

        async def current_active_user(token: Token) -> User:
            return _active((await current_session(token)).user)

        async def current_superuser(token: Token) -> User:
            user = _active((await current_session(token)).user)
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
