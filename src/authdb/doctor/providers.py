"""The sign-in providers of ``AUTHDB_OAUTH_PROVIDERS``, one check each (``oauth <name>``).

An OpenID Connect provider: its discovery document is fetched from
``{issuer}/.well-known/openid-configuration`` and read by the rules sign-in uses (it must name
the configured issuer exactly, and have https endpoints), and its JWKS must hold a key.
GitHub (a provider without an issuer): its REST API must answer ``/user`` (401 without a
token, as GitHub and GitHub Enterprise Server do).

Then, for both, the token endpoint is sent a made-up authorization code with the configured
client id and secret, exactly as a sign-in sends a real one: a provider refuses the client
first (``invalid_client``; GitHub's ``incorrect_client_credentials``) when the id or secret is
wrong, and the code otherwise (``invalid_grant``; ``bad_verification_code``). Nothing is
created at the provider. The real github.com is checked like any other provider: whether this
host can reach it (a firewall, a proxy) is exactly what the check is for.

Every message ends with the redirect URI to register at the provider:
``{AUTHDB_PUBLIC_URL}/oauth/{name}/callback``, the standalone service's. An application that
mounts authdb's pages under a prefix serves it under that prefix, which the doctor cannot see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from authdb.doctor.findings import Deployment, Verdict, error, ok, warn
from authdb.extras import MissingExtra, require_oauth
from authdb.links import url as public_url_of


def redirect_uri(deployment: Deployment, name: str) -> str:
    """The callback URL of provider ``name`` on AUTHDB_PUBLIC_URL (the standalone service's)."""
    return public_url_of(deployment.settings.public_url, f"/oauth/{name}/callback")


def provider_check(name: str) -> Callable[[Deployment], Awaitable[Verdict]]:
    """The check of the provider ``name``."""

    async def check(deployment: Deployment) -> Verdict:
        return await check_provider(deployment, name)

    return check


async def check_provider(deployment: Deployment, name: str) -> Verdict:
    """Reachable, what it claims to be, and the client's id and secret not refused."""
    register = f"redirect URI to register: {redirect_uri(deployment, name)}"
    try:
        require_oauth()
    except MissingExtra as exc:
        return error(f"{exc}; {register}")
    # The probes speak HTTP (the oauth extra): imported once it is known to be there.
    from authdb.doctor import provider_probes

    provider = deployment.settings.oauth[name]
    try:
        found, client = await provider_probes.probe(provider, redirect_uri(deployment, name))
    except provider_probes.Problem as exc:
        return error(f"{exc}; {register}")
    if client is not None:
        return warn(f"{found}, but {client}; {register}")
    return ok(f"{found}, client id and secret not refused; {register}")
