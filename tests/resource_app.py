"""A user's other service: a standalone FastAPI app that trusts authdb's access tokens.

It has no database and no authdb settings; it knows only authdb's JWKS URL, read from the
environment, as a real deployment would configure it:

- ``RESOURCE_JWKS_URL`` (required): authdb's ``/.well-known/jwks.json``;
- ``RESOURCE_ISSUER`` / ``RESOURCE_AUDIENCE``: default ``authdb``, as authdb's defaults;
- ``RESOURCE_MIN_REFETCH_SECONDS`` / ``RESOURCE_MAX_AGE_SECONDS``: the verifier's cache
  limits (TokenVerifier's own defaults when unset).

Run it with ``python -m uvicorn tests.resource_app:app`` from the repository root.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from authdb.resource import AccessTokenClaims, TokenVerifier

JWKS_URL = os.environ["RESOURCE_JWKS_URL"]
ISSUER = os.environ.get("RESOURCE_ISSUER", "authdb")
AUDIENCE = os.environ.get("RESOURCE_AUDIENCE", "authdb")

# TokenVerifier's own defaults unless the environment says otherwise.
MIN_REFETCH_SECONDS = float(os.environ.get("RESOURCE_MIN_REFETCH_SECONDS", "30"))
MAX_AGE_SECONDS = float(os.environ.get("RESOURCE_MAX_AGE_SECONDS", "300"))


def _verifier(audience: str) -> TokenVerifier:
    return TokenVerifier(
        JWKS_URL,
        issuer=ISSUER,
        audience=audience,
        min_refetch_seconds=MIN_REFETCH_SECONDS,
        max_age_seconds=MAX_AGE_SECONDS,
    )


verifier = _verifier(AUDIENCE)
# The same authdb, but this route is for tokens meant for another audience (a billing API):
# authdb's tokens (audience "authdb") must not open it.
billing_verifier = _verifier("billing")

app = FastAPI(title="resource service")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/claims")
async def claims(token: Annotated[AccessTokenClaims, Depends(verifier)]) -> dict[str, Any]:
    """The verified claims, echoed back so the test can look at what the service got."""
    return dict(token)


@app.get("/orders")
async def orders(token: Annotated[AccessTokenClaims, Depends(verifier)]) -> list[str]:
    return [f"orders of user {token['sub']}"]


@app.get("/billing")
async def billing(
    token: Annotated[AccessTokenClaims, Depends(billing_verifier)],
) -> dict[str, Any]:
    return dict(token)
