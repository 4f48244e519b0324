"""Placeholder: routes are added by the admin work."""

from fastapi import APIRouter

from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(route_class=AuthRoute)
    return router
