"""Request counts and durations for Prometheus, per route template: a pure-ASGI timer.

Installed only with ``AUTHDB_METRICS_ENABLED=true``, so that the request path costs nothing
otherwise.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authdb import metrics

if TYPE_CHECKING:  # imported by authdb.metrics.enable, once the multi-process mode is known
    from prometheus_client import Counter, Histogram

# The label of a request no route matched (404s, and refusals before routing: 413, 431).
# Never the raw path: anyone could then make a new series per request.
UNMATCHED = "unmatched"
# Methods outside these become "other": a method is a token a client may invent, too.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (``/users/{user_id}``), or UNMATCHED.

    Routing leaves the route in ``scope["route"]``. The service includes its routers without
    a prefix, so the route's own template is the whole one (FastAPI keeps included routes as
    they were declared, and a prefix given to ``include_router`` would be missing here).
    """
    template = getattr(scope.get("route"), "path_format", None)
    return template if isinstance(template, str) and template else UNMATCHED


class MetricsMiddleware:
    """Counts each request by method, route template and status, and times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Label sets are bounded (methods x routes x statuses): the children can be kept.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the application fails before answering

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "other"
        key = (method, route_template(scope), status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = metrics.request_children(*key)
        count, duration = children
        count.inc()
        duration.observe(seconds)


def install(app: FastAPI) -> None:
    """Time every request of ``app``; call after the other middleware, to be outermost and so
    see their answers (413, 431) too. Needs :func:`authdb.metrics.enable` to have run."""
    app.add_middleware(MetricsMiddleware)
