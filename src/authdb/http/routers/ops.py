"""Liveness and readiness probes, and the Prometheus metrics when enabled."""

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from authdb import metrics
from authdb.db.models import AuthSession
from authdb.http.openapi import ProbeStatus
from authdb.services.core import Core

log = logging.getLogger("authdb.metrics")
# A scrape does not wait longer than this for the live-session count.
_COUNT_SECONDS = 5


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

    if core.settings.metrics_enabled:
        _add_metrics(router, core)
    return router


def _add_metrics(router: APIRouter, core: Core) -> None:
    """``GET /metrics``: unauthenticated, for scrapers; the reverse proxy must not expose it.
    Without the setting the path does not exist (404). Raises MissingExtra."""
    metrics.enable()

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Every worker's metrics added up, in the Prometheus text format."""
        # Counted here rather than kept in a gauge: right across workers and restarts alike.
        query = select(func.count()).select_from(AuthSession)
        live: int | None = None
        try:
            async with asyncio.timeout(_COUNT_SECONDS), core.sessionmaker() as db:
                live = await db.scalar(query.where(AuthSession.live_at(core.clock()))) or 0
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # During an outage the counters matter most: serve them, without the gauge.
            log.warning("metrics: live sessions not counted: %s", type(exc).__name__)
        return Response(metrics.render(live), media_type=metrics.CONTENT_TYPE)
