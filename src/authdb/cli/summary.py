"""What ``authdb serve`` tells its operator before it starts: the settings that matter, and a
warning for each choice that is probably a mistake in this deployment."""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from authdb.cli.config import version
from authdb.db.engine import async_url, is_sqlite, sqlite_path
from authdb.origins import is_loopback_host
from authdb.settings import Settings
from authdb.settings_env import mask_url

_LABEL_WIDTH = 13
# Listening on every interface: links derived from it name the loopback address instead.
_ALL_INTERFACES = ("0.0.0.0", "::", "")  # noqa: S104 - compared with, not bound


def describe_database(database_url: str, *, pgbouncer: bool = False) -> str:
    """``SQLite file /abs/path/authdb.db`` or ``PostgreSQL user@host:5432/db`` (no password)."""
    url = async_url(database_url)
    if is_sqlite(url):
        path = sqlite_path(database_url)
        return f"SQLite file {path if path is not None else url.database}"
    parsed = make_url(database_url.replace("postgres://", "postgresql://", 1))
    user = f"{parsed.username}@" if parsed.username else ""
    password_note = " (password set)" if parsed.password else ""
    bouncer = ", PgBouncer mode" if pgbouncer else ""
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    return f"PostgreSQL {user}{where}{password_note}{bouncer}"


def describe_mail(settings: Settings) -> str:
    """``SMTP host:port with STARTTLS`` or where mail goes without a server."""
    if settings.smtp_host is None:
        return "written to the log (AUTHDB_SMTP_HOST unset)"
    tls = {"starttls": " with STARTTLS", "implicit": " over TLS"}.get(settings.smtp_tls_mode, "")
    login = f", as {settings.smtp_username}" if settings.smtp_username else ""
    return f"SMTP {settings.smtp_host}:{settings.smtp_port}{tls}{login}"


def describe_rate_limits(settings: Settings) -> str:
    """Where the per-address and per-email counters live."""
    if settings.redis_url is None:
        return "in memory, per worker process"
    return (
        f"Redis {mask_url(settings.redis_url)} (shared), key prefix {settings.redis_key_prefix!r}"
    )


def describe_providers(settings: Settings) -> str:
    """The sign-in providers: ``Corp (issuer https://...), GitHub (https://github.com)``, or
    ``none (AUTHDB_OAUTH_PROVIDERS unset)``."""
    if not settings.oauth:
        return "none (AUTHDB_OAUTH_PROVIDERS unset)"
    shown = [
        f"{p.label} ({'issuer ' + p.issuer if p.issuer else p.github_url})"
        for p in settings.oauth.values()
    ]
    return ", ".join(shown)


def serve_summary(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    public_url: str | None = None,
    root_path: str = "",
) -> tuple[list[str], list[str]]:
    """The summary lines and the warnings (without ``warning:``) for ``serve``.

    ``public_url``: the URL ``serve`` derived from ``--host``/``--port`` when
    AUTHDB_PUBLIC_URL is unset (None when it is set).
    """
    links = public_url or settings.public_url
    origin = "from --host/--port; AUTHDB_PUBLIC_URL unset" if public_url else "AUTHDB_PUBLIC_URL"
    rows = [
        (
            "database",
            describe_database(settings.database_url, pgbouncer=settings.database_pgbouncer),
        ),
        ("mail", describe_mail(settings)),
        ("public URL", f"{links} ({origin})"),
        ("rate limits", describe_rate_limits(settings)),
        ("workers", str(workers)),
        ("pages", "on" if settings.pages_enabled else "off (AUTHDB_PAGES_ENABLED=false)"),
        ("metrics", "on, at /metrics" if settings.metrics_enabled else "off"),
        ("providers", describe_providers(settings)),
        ("log format", settings.log_format),
    ]
    if root_path:
        rows.insert(3, ("root path", f"{root_path} (the proxy in front strips it)"))
    lines = [f"authdb {version()} on http://{_host(host)}:{port}"]
    lines += [f"  {label + ':':<{_LABEL_WIDTH}}{value}" for label, value in rows]
    warnings = serve_warnings(
        settings, host=host, workers=workers, public_url=public_url, port=port
    )
    if root_path and public_url is not None:
        warnings.append(
            f"--root-path {root_path} without AUTHDB_PUBLIC_URL: emailed links will lack the "
            f"prefix; set AUTHDB_PUBLIC_URL to the proxy's address, ending in {root_path}"
        )
    return lines, warnings


def serve_warnings(
    settings: Settings,
    *,
    host: str,
    workers: int,
    public_url: str | None = None,
    port: int | None = None,
) -> list[str]:
    """Warnings for the choices that only suit development, each saying what to set."""
    warnings = []
    if settings.secret_key is None:
        warnings.append(
            "AUTHDB_SECRET_KEY is not set: tokens are signed with a key generated once and kept "
            "in the database; set AUTHDB_SECRET_KEY to manage the key yourself"
        )
    if workers > 1 and settings.redis_url is None:
        warnings.append(
            f"--workers {workers} without AUTHDB_REDIS_URL: each worker has its own rate-limit "
            f"budget, so a client may get up to {workers} times each limit; set "
            "AUTHDB_REDIS_URL to share them"
        )
    links = urlsplit(public_url or settings.public_url)
    if public_url is not None and host in _ALL_INTERFACES:
        warnings.append(
            f"AUTHDB_PUBLIC_URL is not set: links in emails point at {public_url}, which only "
            "this machine reaches; set AUTHDB_PUBLIC_URL to the address users open"
        )
    if public_url is None and port is not None and is_loopback_host(links.hostname):
        # A local PUBLIC_URL (set for development) on another port than this server's: the
        # links in emails and the passkeys' origin would lead to nothing, or to another server.
        linked = links.port or (443 if links.scheme == "https" else 80)
        if linked != port:
            warnings.append(
                f"AUTHDB_PUBLIC_URL {links.scheme}://{links.netloc} is on this machine but "
                f"not on --port {port}: emailed links and passkeys will not reach this server"
            )
    if links.scheme == "http" and not is_loopback_host(links.hostname):
        warnings.append(
            f"AUTHDB_PUBLIC_URL {links.scheme}://{links.netloc} is not https: passwords, tokens "
            "and session cookies would cross the network unencrypted"
        )
    return warnings


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
