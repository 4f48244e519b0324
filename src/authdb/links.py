"""Where the application mounted authdb's routes, for the URLs authdb hands out.

Emailed links (verify, reset, the account page in new-device alerts) and the token URL in the
OpenAPI security scheme must point where the app included ``auth.router`` and
``auth.pages_router`` (``prefix="/auth"``), not where the standalone service has them.
``Auth.lifespan`` finds those paths by route name in the app it starts with (``discover``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.routing import BaseRoute, Mount, NoMatchFound
from starlette.types import ASGIApp

# Route names looked up in the app (see the routers and pages).
TOKEN_ROUTE = "authdb_token"
_VERIFY_PAGE = "authdb_page_verify"
_RESET_PAGE = "authdb_page_reset_password"
_ACCOUNT_PAGE = "authdb_page_account"


@dataclass(frozen=True, slots=True)
class Links:
    """Paths below the application's root (``PUBLIC_URL``'s path is added by ``url``).

    The defaults are the standalone service's: everything at the root.
    """

    verify: str = "/verify"
    reset: str = "/reset-password"
    # The account page; None when the hosted pages are not mounted.
    account: str | None = "/account"
    token: str = "/token"


def route_path(app: ASGIApp, name: str) -> str | None:
    """The path ``app`` serves route ``name`` at (prefixes and mounts, named or not,
    included), or None when it has no such route (or cannot say: not a Starlette app)."""
    url_path_for = getattr(app, "url_path_for", None)
    if url_path_for is None:
        return None
    for qualified in _qualified_names(getattr(app, "routes", []), name):
        try:
            return str(url_path_for(qualified))
        except NoMatchFound:
            continue
    return None


def _qualified_names(routes: list[BaseRoute], name: str, depth: int = 0) -> Iterator[str]:
    """``name``, then ``mount:name`` for each named mount (Starlette needs the mount's name
    to reach a route inside it), nested mounts included."""
    yield name
    if depth > 8:  # mounts nest a few levels at most; a cycle must not recurse forever
        return
    for route in routes:
        if isinstance(route, Mount) and route.name:
            for inner in _qualified_names(route.routes, name, depth + 1):
                yield f"{route.name}:{inner}"


def has_mounts(app: ASGIApp) -> bool:
    """Whether ``app`` has sub-applications mounted (where authdb's routes may hide)."""
    return any(isinstance(route, Mount) for route in getattr(app, "routes", []))


def discover(app: ASGIApp) -> Links:
    """The paths of authdb's routes in ``app``.

    A link opens the hosted page when the app mounted ``auth.pages_router``; otherwise it
    names the same path under the API router's prefix, as the service did before pages.
    """
    token = route_path(app, TOKEN_ROUTE)
    api_prefix = token.removesuffix("/token") if token is not None else ""
    return Links(
        verify=route_path(app, _VERIFY_PAGE) or f"{api_prefix}/verify",
        reset=route_path(app, _RESET_PAGE) or f"{api_prefix}/reset-password",
        account=route_path(app, _ACCOUNT_PAGE),
        token=token or "/token",
    )


def public_path(public_url: str, path: str) -> str:
    """``path`` (below the app's root) as a path on ``PUBLIC_URL``'s host: with its path
    (the root path a proxy strips) in front, unless ``path`` already starts with it (an app
    that has the prefix in its own routes)."""
    base = urlsplit(public_url).path.rstrip("/")
    if base and (path == base or path.startswith(base + "/")):
        return path
    return base + path


def url(public_url: str, path: str) -> str:
    """The absolute URL of ``path`` (below the app's root) on ``PUBLIC_URL``."""
    parts = urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}{public_path(public_url, path)}"
