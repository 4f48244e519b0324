"""The servers authdb talks to besides its database: Redis (rate limits) and SMTP (email)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiosmtplib

from authdb.doctor.findings import (
    TIMEOUT_SECONDS,
    Deployment,
    Verdict,
    error,
    ok,
    reason,
    shown_url,
    warn,
)
from authdb.extras import MissingExtra, require_redis
from authdb.mail import smtp_tls_context
from authdb.ratelimit import RateLimits

# Schemes redis-py opens itself; sentinel and cluster URLs go through the rate limiter's own
# storage (``limits``), which knows how to reach them but not how to say why it could not.
_PLAIN_SCHEMES = {
    "redis": "redis",
    "rediss": "rediss",
    "valkey": "redis",
    "valkeys": "rediss",
    "redis+unix": "unix",
    "valkey+unix": "unix",
}


async def check_redis(deployment: Deployment) -> Verdict:
    """When ``AUTHDB_REDIS_URL`` is set: the ``redis`` package is there and PING is answered."""
    settings = deployment.settings
    if settings.redis_url is None:
        return ok("not set: each process keeps its own rate-limit counters")
    try:
        require_redis()
    except MissingExtra as exc:
        return error(str(exc))
    url = settings.redis_url.removeprefix("async+")
    shown = shown_url(url)
    parts = urlsplit(url)
    scheme = _PLAIN_SCHEMES.get(parts.scheme)
    if scheme is None:
        limits = RateLimits(settings)
        if await limits.storage.check():
            return ok(f"{shown} answers PING")
        return error(f"{shown} (AUTHDB_REDIS_URL) does not answer PING")
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = Redis.from_url(
        urlunsplit(parts._replace(scheme=scheme)),
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        await client.ping()
    except Exception as exc:
        return error(f"{shown} (AUTHDB_REDIS_URL) not reachable: {reason(exc)}")
    finally:
        await client.aclose()
    return ok(f"{shown} answers PING")


async def check_smtp(deployment: Deployment) -> Verdict:
    """When ``AUTHDB_SMTP_HOST`` is set: connect (over TLS with AUTHDB_SMTP_TLS=implicit),
    EHLO, STARTTLS if configured, log in if credentials are given, and quit (nothing is
    sent). Certificates are verified as when sending (AUTHDB_SMTP_CA_FILE, else the system's)."""
    settings = deployment.settings
    if settings.smtp_host is None:
        return warn("AUTHDB_SMTP_HOST unset: emails are written to the log, not sent")
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    mode = settings.smtp_tls_mode
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        # As authdb.mail sends: TLS exactly as configured, never STARTTLS "if offered".
        use_tls=mode == "implicit",
        start_tls=mode == "starttls",
        tls_context=smtp_tls_context(settings),
        timeout=min(settings.smtp_timeout_seconds, TIMEOUT_SECONDS),
    )
    done = ["TLS", "EHLO"] if mode == "implicit" else ["EHLO"]
    try:
        await smtp.connect()
        await smtp.ehlo()
        if mode == "starttls":
            done.append("STARTTLS")
        if settings.smtp_username and password is not None:
            await smtp.login(settings.smtp_username, password)
            done.append(f"login as {settings.smtp_username}")
        await smtp.quit()
    except Exception as exc:
        message = reason(exc)
        if password:
            message = message.replace(password, "***")
        names = "AUTHDB_SMTP_HOST, AUTHDB_SMTP_PORT"
        if mode != "none":
            names += ", AUTHDB_SMTP_TLS"
        return error(f"{where} ({names}): {message}")
    finally:
        smtp.close()
    return ok(f"{where} answers ({', '.join(done)})")
