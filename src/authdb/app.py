"""The standalone service that ``authdb serve`` runs: the library's pieces, nothing else."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from authdb import __version__
from authdb.auth import Auth
from authdb.http import methods, metrics_middleware
from authdb.http.errors import install_error_handlers
from authdb.http.middleware import install_middleware
from authdb.http.openapi import SERVICE_ERRORS
from authdb.http.routers import docs
from authdb.settings import Settings


def create_app(settings: Settings | None = None, *, auth: Auth | None = None) -> FastAPI:
    """Build the authdb service application."""
    auth = auth or Auth(settings)
    # FastAPI's own /docs and /redoc load their assets from a CDN: ours are served locally.
    # No trailing-slash redirects: Starlette builds their Location from the Host header (and
    # plain http behind a TLS proxy); authdb never builds a URL from a request's Host.
    app = FastAPI(
        title="authdb",
        version=__version__,
        lifespan=auth.lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.auth = auth
    install_error_handlers(app)
    methods.install(app)
    install_middleware(app, auth.settings)
    if auth.settings.metrics_enabled:  # outermost: it times and counts the others' answers too
        metrics_middleware.install(app)
    # The service's middleware can refuse any request (413, 431): every route says so.
    # The API first: routes are tried in order, and /users/me is what most requests ask for.
    # (Its /register, /verify and /logout step aside for the pages' form posts.)
    app.include_router(auth.router, responses=SERVICE_ERRORS)
    app.include_router(auth.ops_router, responses=SERVICE_ERRORS)
    if auth.settings.pages_enabled and auth.features.pages:
        app.include_router(auth.pages_router)

        @app.get("/", include_in_schema=False)
        async def home(request: Request) -> RedirectResponse:
            """A person opening the service's address lands on their account (or sign-in)."""
            # url_for, unlike app.url_path_for, keeps a --root-path a reverse proxy strips.
            account = request.url_for("authdb_page_account").path
            return RedirectResponse(account, status_code=303)

    docs.install(app)
    return app
