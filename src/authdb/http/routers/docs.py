"""``/docs`` (Swagger UI) and ``/redoc``, with their assets served from the package.

The pages load nothing from another origin and hold no inline script (their start-up code is
a static file beside the vendored UIs, see ``authdb/static/docs/README.md``), so they work
offline and under the strict Content-Security-Policy sent with them.
"""

from __future__ import annotations

import os
from html import escape

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS_PATH = "/static/docs"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        # Both UIs set element styles from script (React style props, styled-components).
        "style-src 'self' 'unsafe-inline'",
        # Swagger UI's icons are data: URIs in its stylesheet.
        "img-src 'self' data:",
        "font-src 'self'",
        # The OpenAPI document, and Swagger UI's "Try it out" and "Authorize" requests.
        "connect-src 'self'",
        # ReDoc builds its search index in a worker made from a blob.
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_SWAGGER_UI = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/swagger-ui/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/swagger-ui/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""

_REDOC = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - ReDoc</title>
<link rel="icon" type="image/png" href="{assets}/swagger-ui/favicon-32x32.png">
</head>
<body>
<div id="redoc" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/redoc/redoc.standalone.js"></script>
<script src="{assets}/redoc-init.js"></script>
</body>
</html>
"""


class _Assets(StaticFiles):
    """The vendored files; a browser may keep them but asks again (ETag) before reuse."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def _page(template: str, request: Request) -> HTMLResponse:
    app = request.app
    # Behind a proxy that strips a prefix, every URL of the page must carry it.
    root = request.scope.get("root_path", "").rstrip("/")
    html = template.format(
        title=escape(app.title),
        assets=escape(root + ASSETS_PATH),
        openapi_url=escape(root + (app.openapi_url or "")),
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


def build() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Interactive API documentation (Swagger UI)."""
        return _page(_SWAGGER_UI, request)

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        """API reference (ReDoc)."""
        return _page(_REDOC, request)

    return router


def install(app: FastAPI) -> None:
    """Serve the pages and their assets; the app must be made with ``docs_url=None`` and
    ``redoc_url=None`` so that FastAPI's CDN-loading pages are not there too."""
    app.include_router(build())
    app.mount(ASSETS_PATH, _Assets(packages=[("authdb", "static/docs")]), name="docs-assets")
