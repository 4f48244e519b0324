"""Clients of other sign-in providers: OpenID Connect by issuer URL, and GitHub's OAuth 2.0
(SPEC, "Sign in with another provider").

``providers.Provider`` builds the authorization URL (PKCE S256 always, a ``nonce`` for OIDC)
and turns a callback's code into an ``Identity``; ``oidc`` finds a provider's endpoints and
keys (OpenID Connect Discovery 1.0) and validates its ID tokens (OpenID Connect Core 1.0,
section 3.1.3.7). The protocol work is Authlib's (the code exchange) and PyJWT's (signatures).

This package's root and ``identity`` import no HTTP library; ``oidc`` and ``providers`` need the
``oauth`` extra (httpx, Authlib) and are imported only where providers are configured.
"""

from authdb.oauth.identity import (
    CLIENT_REFUSED,
    Identity,
    ProviderDenied,
    ProviderFailed,
    error_code,
)

__all__ = ["CLIENT_REFUSED", "Identity", "ProviderDenied", "ProviderFailed", "error_code"]
