"""Checks of the settings themselves: secret key, public URL, cookies, proxies, extras."""

from __future__ import annotations

import ipaddress

from authdb import metrics, relying_party
from authdb.doctor.database import has_generated_key
from authdb.doctor.findings import (
    Deployment,
    Verdict,
    error,
    ok,
    public_host,
    warn,
)
from authdb.errors import PasskeysUnavailable
from authdb.extras import MissingExtra
from authdb.http.cookies import is_https, session_cookie_name
from authdb.mail import TemplateProblem, check_templates, unused_overrides
from authdb.origins import is_loopback_host

# A random key of 32 characters or more uses far more distinct characters than this; fewer
# means a pattern typed by hand ("aaaa...", "abab...").
MIN_DISTINCT_CHARACTERS = 10
# Words that put a key in a sample file or a tutorial, and so in every copy of it.
_PLACEHOLDERS = (
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "replaceme",
    "replace-me",
    "your-secret",
    "your_secret",
    "yoursecret",
    "secret-key",
    "secret_key",
    "secretkey",
    "placeholder",
    "insecure",
    "example",
    "password",
)
# Addresses a reverse proxy of this deployment can have; anything else is someone else's.
_PRIVATE_NETWORKS = [
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT, also used inside clouds
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
]


def weakness(key: str) -> str | None:
    """Why ``key`` is obviously weak (a placeholder, a pattern), or None. Its length is the
    settings' check (at least 32 characters)."""
    lowered = key.lower()
    for word in _PLACEHOLDERS:
        if word in lowered:
            return f"it contains {word!r}, as sample keys do"
    if len(set(key)) < MIN_DISTINCT_CHARACTERS:
        return f"it has fewer than {MIN_DISTINCT_CHARACTERS} distinct characters"
    for size in range(1, len(key) // 2 + 1):
        if len(key) % size == 0 and key[:size] * (len(key) // size) == key:
            return "it repeats a short pattern"
    return None


async def check_secret_key(deployment: Deployment) -> Verdict:
    """Set and not obviously weak; unset is a warning (the generated key is used)."""
    key = deployment.settings.secret_key
    if key is not None:
        why = weakness(key.get_secret_value())
        if why is not None:
            return error(f"AUTHDB_SECRET_KEY is weak: {why}; use `openssl rand -base64 48`")
        return ok("AUTHDB_SECRET_KEY set")
    generated = await has_generated_key(deployment.database)
    if generated:
        return warn("AUTHDB_SECRET_KEY unset; using the key generated and kept in the database")
    if generated is None:
        return warn("AUTHDB_SECRET_KEY unset; authdb uses a key generated and kept in the database")
    return warn("AUTHDB_SECRET_KEY unset and no key generated yet: authdb will make one")


async def check_public_url(deployment: Deployment) -> Verdict:
    """https, or http on a loopback host (development)."""
    url = deployment.settings.public_url
    if url.startswith("https://"):
        return ok(f"{url} (https)")
    if is_loopback_host(public_host(deployment.settings)):
        return ok(f"{url}: http on loopback, for development only")
    return error(
        f"AUTHDB_PUBLIC_URL {url} is not https outside loopback: passwords and tokens cross "
        "in clear"
    )


async def check_cookies(deployment: Deployment) -> Verdict:
    """The pages' cookies are ``Secure`` (authdb.http.cookies sets it on an https PUBLIC_URL)."""
    settings = deployment.settings
    if not settings.pages_enabled:
        return ok("none set: the pages are off (AUTHDB_PAGES_ENABLED=false)")
    name = session_cookie_name(settings)
    if is_https(settings):
        return ok(f"{name}: Secure, HttpOnly, SameSite=Lax")
    if is_loopback_host(public_host(settings)):
        return ok(f"{name} without Secure: http on loopback, for development only")
    return error(f"{name} would be sent without Secure: AUTHDB_PUBLIC_URL must be https")


def _is_private(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(
        network.version == private.version and network.subnet_of(private)  # type: ignore[arg-type]
        for private in _PRIVATE_NETWORKS
    )


async def check_trusted_proxies(deployment: Deployment) -> Verdict:
    """Only private networks: a trusted address may write any client address in
    ``X-Forwarded-For``. Public ones are a warning, not an error: a CDN's ranges are public,
    and a proxy that overwrites the header makes even ``0.0.0.0/0`` safe."""
    networks = [
        ipaddress.ip_network(item, strict=False) for item in deployment.settings.trusted_proxies
    ]
    if not networks:
        return ok("none: X-Forwarded-For is ignored, clients are the connections' peers")
    everyone = [str(n) for n in networks if n.prefixlen == 0]
    if everyone:
        return warn(
            f"{', '.join(everyone)} trusts every address: any client can forge X-Forwarded-For "
            "(and so its address for rate limits, lockouts and the audit log)"
        )
    public = [str(n) for n in networks if not _is_private(n)]
    if public:
        return warn(
            f"{', '.join(public)} not private: anyone there can forge X-Forwarded-For; "
            "list only your proxies"
        )
    return ok(", ".join(str(n) for n in networks) + " (private)")


async def check_passkeys(deployment: Deployment) -> Verdict:
    """On, or off and why: an IP-address PUBLIC_URL, the extra missing, http off loopback."""
    settings = deployment.settings
    host = public_host(settings)
    try:
        party = relying_party.relying_party(settings)
    except PasskeysUnavailable:
        return warn(
            f"off: AUTHDB_PUBLIC_URL's host {host} is an IP address; passkeys need a domain "
            "name (http://localhost:PORT for development)"
        )
    if not relying_party.is_installed():
        return warn("off: pip install 'authdb[passkeys]'")
    if not is_https(settings) and not is_loopback_host(host):
        return warn("off in browsers: WebAuthn needs https outside localhost")
    return ok(f"on: relying party {party.id}, origin {party.origin}")


async def check_metrics(deployment: Deployment) -> Verdict:
    """Off, or on with ``prometheus-client`` installed (the ``metrics`` extra)."""
    if not deployment.settings.metrics_enabled:
        return ok("off")
    try:
        metrics.require()
    except MissingExtra as exc:
        return error(str(exc))
    return ok("on: GET /metrics")


async def check_email_templates(deployment: Deployment) -> Verdict:
    """Every email template renders with its variables and every file of AUTHDB_TEMPLATES_DIR
    compiles (as ``Auth.startup`` checks); files that override nothing are a warning."""
    settings = deployment.settings
    try:
        check_templates(settings)
    except TemplateProblem as exc:
        return error(str(exc))
    if settings.templates_dir is None:
        return ok("authdb's own")
    unused = unused_overrides(settings)
    if unused:
        verb = "overrides" if len(unused) == 1 else "override"
        return warn(
            f"{', '.join(unused)} in AUTHDB_TEMPLATES_DIR {verb} none of authdb's templates "
            "and make no complete email of your own (NAME.subject.txt, NAME.txt, NAME.html)"
        )
    return ok(f"{settings.templates_dir}: every override renders")
