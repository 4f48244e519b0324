"""The standalone service that ``authdb serve`` runs: the library's pieces, nothing else."""

from __future__ import annotations

from fastapi import FastAPI

from authdb.auth import Auth
from authdb.http.errors import install_error_handlers
from authdb.http.middleware import install_middleware
from authdb.settings import Settings


def create_app(settings: Settings | None = None, *, auth: Auth | None = None) -> FastAPI:
    """Build the authdb service application."""
    auth = auth or Auth(settings)
    app = FastAPI(title="authdb", version="0.1.0", lifespan=auth.lifespan)
    app.state.auth = auth
    install_error_handlers(app)
    install_middleware(app, auth.settings)
    app.include_router(auth.ops_router)
    app.include_router(auth.router)
    return app
