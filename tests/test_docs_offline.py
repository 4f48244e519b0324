"""``/docs`` and ``/redoc`` load no asset from another origin and run under a strict CSP
(issue 9, item 15)."""

from __future__ import annotations

import glob
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import Harness

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "authdb"
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


class _Page(HTMLParser):
    """Every URL a page refers to, and the text of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[tuple[str | None, str]] = []  # (src, inline text)
        self.handlers: list[str] = []  # on* attributes: inline script too
        self._in_script: str | None = None
        self._script_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name in ("src", "href", "data-openapi-url", "action", "srcset") and value:
                self.urls.append(value)
            if name.startswith("on"):
                self.handlers.append(name)
        if tag == "script":
            self._in_script = values.get("src") or ""
            self._script_text = ""

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            self._script_text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_script is not None:
            self.scripts.append((self._in_script or None, self._script_text))
            self._in_script = None


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _directives(csp: str) -> dict[str, list[str]]:
    parts = (directive.split() for directive in csp.split(";") if directive.strip())
    return {words[0]: words[1:] for words in parts}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_load_only_same_origin_assets_under_a_strict_csp(
    harness: Harness, path: str
) -> None:
    response = await harness.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = _parse(response.text)

    # No inline script: every <script> has a src and no body, and no on* handler attributes.
    assert page.scripts and all(src and not text.strip() for src, text in page.scripts)
    assert page.handlers == []
    # Every URL is a path on this origin: no scheme, no host, no protocol-relative //.
    assert page.urls
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert httpx.URL(url).host == "", url

    csp = _directives(response.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    for sources in csp.values():
        assert not any(s.startswith(("http", "*", "'unsafe-eval'")) for s in sources), csp
    assert "'unsafe-inline'" not in csp["script-src"]

    # Every referenced asset is served, with a content type a browser will run under nosniff.
    for url in page.urls:
        asset = await harness.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        suffix = Path(httpx.URL(url).path).suffix
        if suffix in CONTENT_TYPES:
            media = asset.headers["content-type"].split(";")[0]
            assert media in CONTENT_TYPES[suffix], (url, media)
        elif url.endswith("openapi.json"):
            assert asset.json()["openapi"].startswith("3.")
        else:
            raise AssertionError(f"unexpected reference {url}")


async def test_the_init_scripts_and_ui_bundles_come_from_the_package(harness: Harness) -> None:
    for name in ("swagger-init.js", "redoc-init.js", "swagger-ui/swagger-ui-bundle.js"):
        served = await harness.client.get(f"/static/docs/{name}")
        assert served.status_code == 200
        assert served.content == (PACKAGE / "static" / "docs" / name).read_bytes()
        # Revalidated with the ETag rather than never stored: 1-2 MB per visit otherwise.
        assert served.headers["cache-control"] == "no-cache"
        again = await harness.client.get(
            f"/static/docs/{name}", headers={"If-None-Match": served.headers["etag"]}
        )
        assert again.status_code == 304
    for missing in ("/static/docs/nope.js", "/static/docs/%2e%2e/%2e%2e/settings.py"):
        response = await harness.client.get(missing)
        assert response.status_code == 404, missing
        assert response.json() == {"detail": "Not Found"}


async def test_docs_behind_a_path_prefix_point_at_the_prefixed_urls(harness: Harness) -> None:
    app = harness.client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, root_path="/auth")
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        response = await client.get("/auth/docs")
        assert response.status_code == 200
        page = _parse(response.text)
        assert all(url.startswith("/auth/") for url in page.urls), page.urls
        assert "/auth/openapi.json" in page.urls
        for url in page.urls:
            assert (await client.get(url)).status_code == 200, url


async def test_swagger_authorize_uses_the_password_flow_at_the_token_endpoints_path(
    harness: Harness,
) -> None:
    doc = (await harness.client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    # An absolute path (PUBLIC_URL's path, then the mount point): see tests/test_mounting.py.
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/token"
    init = (await harness.client.get("/static/docs/swagger-init.js")).text
    assert 'getAttribute("data-openapi-url")' in init
    assert "validatorUrl: null" in init  # the validator badge is an image from elsewhere


def test_vendored_uis_ship_with_their_licences() -> None:
    docs = PACKAGE / "static" / "docs"
    assert "Apache License" in (docs / "swagger-ui" / "LICENSE").read_text()
    assert (docs / "swagger-ui" / "NOTICE").is_file()
    assert "MIT License" in (docs / "redoc" / "LICENSE").read_text()
    bundles = ("swagger-ui/swagger-ui-bundle.js", "redoc/redoc.standalone.js")
    for bundle in bundles:
        assert (docs / f"{bundle}.LICENSE.txt").is_file()
        # The bundles must not need another origin at run time to draw the page.
        assert "cdn.jsdelivr.net" not in (docs / bundle).read_text(errors="replace")


def test_package_data_includes_every_static_file() -> None:
    pyproject = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["authdb"]
    shipped = {
        path
        for pattern in patterns
        for path in glob.glob(pattern, root_dir=PACKAGE, recursive=True)
        if (PACKAGE / path).is_file()
    }
    static = {
        str(path.relative_to(PACKAGE)) for path in (PACKAGE / "static").rglob("*") if path.is_file()
    }
    assert static and static <= shipped, sorted(static - shipped)


def test_no_bundle_asks_a_cdn_for_anything() -> None:
    # ReDoc's footer logo pointed at cdn.redoc.ly; the vendored copy is patched (see README).
    static = PACKAGE / "static" / "docs"
    for bundle in static.rglob("*.js"):
        text = bundle.read_text(encoding="utf-8")
        assert "cdn." not in text.lower(), bundle.name
