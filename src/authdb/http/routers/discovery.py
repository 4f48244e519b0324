"""``/.well-known/jwks.json`` (RFC 7517) and ``/.well-known/oauth-authorization-server``
(RFC 8414): what another service needs to verify authdb's tokens without its database."""

from fastapi import APIRouter, Request, Response

from authdb import links
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import AuthRoute
from authdb.http.routers.tokens import GRANT_TYPES
from authdb.http.schemas import AuthorizationServerMetadata, JWKSet

# Verifiers cache the set themselves; a shared cache must ask again, or a rotation would be
# hidden from them for its lifetime.
_REVALIDATE = {"Cache-Control": "no-cache"}


_METADATA_PATH = "/.well-known/oauth-authorization-server"


def _base_url(deps: AuthDeps, request: Request) -> str:
    """``PUBLIC_URL`` + the path this document was asked at, less its own name: the mount
    point and router prefix, so each of several mounts names its own endpoints. Never the
    Host header.

    ``PUBLIC_URL`` may already end with the app's root path (``serve --root-path /auth``
    with ``PUBLIC_URL=https://example.com/auth``, as the emailed links need): that part is
    not added twice.
    """
    root = str(request.scope.get("root_path", "")).rstrip("/")
    path = str(request.scope.get("path", _METADATA_PATH))
    if root and not path.startswith(root + "/"):
        path = root + path  # an ASGI server that reports the path below its root_path
    return links.url(deps.core.settings.public_url, path).removesuffix(_METADATA_PATH)


def build(deps: AuthDeps) -> APIRouter:
    router = APIRouter(tags=["discovery"], route_class=AuthRoute)

    @router.get("/.well-known/jwks.json", name="authdb_jwks", response_model=JWKSet)
    async def jwks(response: Response) -> JWKSet:
        """The public keys of every signing key whose tokens can still be valid: the current
        one and those rotated out less than an access-token lifetime ago. Empty under HS256,
        whose tokens only the secret key's holders can verify."""
        response.headers.update(_REVALIDATE)
        return JWKSet(keys=[dict(jwk) for jwk in deps.core.jwt.keys.jwks])

    @router.get(
        _METADATA_PATH,
        name="authdb_oauth_metadata",
        response_model=AuthorizationServerMetadata,
        response_model_exclude_none=True,
    )
    async def metadata(request: Request, response: Response) -> AuthorizationServerMetadata:
        """Authorization server metadata (RFC 8414). ``issuer`` is ``AUTHDB_JWT_ISSUER``, the
        ``iss`` of every access token; the endpoints are absolute URLs under ``PUBLIC_URL``."""
        response.headers.update(_REVALIDATE)
        base = _base_url(deps, request)
        return AuthorizationServerMetadata(
            issuer=deps.core.settings.jwt_issuer,
            token_endpoint=f"{base}/token",
            jwks_uri=f"{base}/.well-known/jwks.json",
            revocation_endpoint=f"{base}/revoke",
            grant_types_supported=list(GRANT_TYPES),
            # No authorization endpoint: the password grant and its extensions only.
            response_types_supported=[],
            # Public clients: a client id or secret is neither needed nor checked.
            token_endpoint_auth_methods_supported=["none"],
            revocation_endpoint_auth_methods_supported=["none"],
        )

    return router
