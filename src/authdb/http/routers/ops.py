"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from authdb.http.openapi import ProbeStatus
from authdb.services.core import Core


def build(core: Core) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """200 while the process runs."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        responses={
            200: {"model": ProbeStatus},
            503: {"model": ProbeStatus, "description": "The database does not answer"},
        },
    )
    async def readyz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        try:
            async with core.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return router
