"""``authdb`` commands: serve, migrate, createuser, changepassword, sessions, audit, users, keys."""

from __future__ import annotations

import asyncio
import atexit
import os
from typing import Annotated

import typer

from authdb import metrics, settings_env
from authdb.auth import Auth
from authdb.cli import audit as audit_cli
from authdb.cli import keys as keys_cli
from authdb.cli import summary
from authdb.cli import users as users_cli
from authdb.cli.common import (
    existing_database_settings,
    fail,
    read_password,
    run,
    settings,
    warn_unknown_settings,
)
from authdb.cli.config import config as config_command
from authdb.cli.config import print_version
from authdb.cli.doctor import doctor
from authdb.db import migrate as migrations
from authdb.db.engine import async_url, create_engine, is_sqlite
from authdb.extras import MissingExtra
from authdb.logs import json_line, uvicorn_log_config
from authdb.mail import TemplateProblem, check_templates
from authdb.services import provisioning, sessions
from authdb.services.core import CLI_CLIENT

app = typer.Typer(
    help="authdb: database-backed user authentication for FastAPI.", no_args_is_help=True
)
app.add_typer(users_cli.app, name="users")
app.add_typer(keys_cli.app, name="keys")
sessions_app = typer.Typer(help="Session maintenance.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(audit_cli.app, name="audit")
app.command()(doctor)
app.command("config")(config_command)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """authdb: database-backed user authentication for FastAPI."""
    warn_unknown_settings()


def _root_path(value: str) -> str:
    """``/auth`` (a trailing slash dropped); empty means none."""
    value = value.rstrip("/")
    if value and (
        not value.startswith("/")
        or "//" in value
        or any(not ch.isprintable() or ch.isspace() or ch in "?#%\\" for ch in value)
    ):
        raise typer.BadParameter(f"{value!r} is not a path such as /auth")
    return value


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log", help="Log every request (security events always go to the audit table)."
        ),
    ] = False,
    root_path: Annotated[
        str,
        typer.Option(
            help="The path prefix a reverse proxy strips before passing requests on, e.g. /auth.",
            callback=_root_path,
        ),
    ] = "",
) -> None:
    """Run the authdb service (SQLite is migrated first; other databases must be current)."""
    import uvicorn

    config = settings()
    try:  # before any database work: a template typo must not cost a migration first
        check_templates(config)
    except TemplateProblem as exc:
        fail(f"cannot start: {exc}")
    try:
        asyncio.run(_prepare_database(config.database_url, config.database_pgbouncer))
    except Exception as exc:
        fail(f"cannot start: {str(exc).splitlines()[0]}")
    public_url_derived = "public_url" not in config.model_fields_set
    if public_url_derived:
        # Links in emails and pages must reach this server: without AUTHDB_PUBLIC_URL, the
        # address it listens on (the workers read the variable from this environment).
        os.environ["AUTHDB_PUBLIC_URL"] = listening_url(host, port)
    lines, warnings = summary.serve_summary(
        config,
        host=host,
        port=port,
        workers=workers,
        public_url=listening_url(host, port) if public_url_derived else None,
        root_path=root_path,
    )
    if config.log_format == "json":  # a log shipper reads these lines too
        typer.echo(json_line("INFO", "\n".join(line.strip() for line in lines)))
        for warning in warnings:
            typer.echo(json_line("WARNING", warning), err=True)
    else:
        typer.echo("\n".join(lines))
        for warning in warnings:
            typer.echo(f"warning: {warning}", err=True)
    if config.metrics_enabled:
        _share_metrics(workers)
    uvicorn.run(
        "authdb.cli.main:_service_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,
        server_header=False,
        # httptools parses a huge request head in quadratic time, stalling every connection;
        # this protocol answers 431 once a head passes 64 KiB (see authdb.http.server).
        http="authdb.http.server:HeadLimitedProtocol",
        log_config=uvicorn_log_config(config.log_format),
        # Off by default: a line per request costs about a quarter of /users/me's throughput.
        access_log=access_log,
        root_path=root_path,
        # uvicorn's 5 s default kills a worker still importing on a busy host, then starts
        # another: a slow start, not a fault.
        timeout_worker_healthcheck=30,
    )


def _share_metrics(workers: int) -> None:
    """Metrics that add up across ``workers``: their files go to a fresh private directory,
    made before uvicorn starts them and removed when this process exits."""
    try:
        metrics.require()
    except MissingExtra as exc:
        fail(str(exc))
    if workers > 1:  # one process keeps its metrics in memory
        atexit.register(metrics.remove_multiprocess_dir, metrics.create_multiprocess_dir())


def listening_url(host: str, port: int) -> str:
    """``http://host:port`` for links to a server listening there; a wildcard address (all
    interfaces) becomes the loopback one, an IPv6 literal gets its brackets."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - a comparison, not a bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _service_app():  # type: ignore[no-untyped-def]
    from authdb.app import create_app

    # `serve` reported unknown variables already; each worker need not log them again.
    settings_env.mark_reported(settings_env.unknown_settings())
    auth = Auth(auto_migrate=False)
    auth.warn_generated_key = False  # serve's summary said it, once rather than per worker
    return create_app(auth=auth)


async def _prepare_database(database_url: str, pgbouncer: bool) -> None:
    engine = create_engine(database_url, pgbouncer=pgbouncer)
    try:
        if is_sqlite(async_url(database_url)):
            await migrations.upgrade(engine)
        elif not await migrations.is_up_to_date(engine):
            raise RuntimeError("the database schema is out of date: run `authdb migrate`")
    finally:
        await engine.dispose()


@app.command()
def migrate(
    database_url: Annotated[
        str | None, typer.Option(help="Database to upgrade (default: AUTHDB_DATABASE_URL).")
    ] = None,
) -> None:
    """Create or upgrade the schema; adopts a FastAPI-tutorial users table in place."""
    # Every setting is checked, even with --database-url: a bad one would fail the next command.
    config = settings(database_url)
    url = config.database_url

    async def _upgrade() -> str | None:
        engine = create_engine(url, pgbouncer=config.database_pgbouncer)
        try:
            await migrations.upgrade(engine)
            return await migrations.current_revision(engine)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(_upgrade())
    except Exception as exc:
        fail(f"migration failed: {str(exc).splitlines()[0]}")
    typer.echo(f"database is at revision {revision}")


@app.command()
def createuser(
    username: Annotated[str, typer.Option(help="Username.")],
    email: Annotated[str, typer.Option(help="Email address.")],
    full_name: Annotated[str | None, typer.Option(help="Full name.")] = None,
    superuser: Annotated[bool, typer.Option("--superuser", help="Make a superuser.")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a verified user."""
    existing_database_settings()
    password = read_password(password_stdin)
    user = run(
        lambda auth: provisioning.create_user(
            auth.core,
            username=username,
            email=email,
            password=password,
            full_name=full_name,
            is_superuser=superuser,
            is_verified=True,
            client=CLI_CLIENT,
        )
    )
    typer.echo(f"created user {user.username} (id {user.id})")


@app.command()
def changepassword(
    username: Annotated[str, typer.Argument(help="Username or email.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Set a user's password; all of their sessions end."""
    existing_database_settings()
    password = read_password(password_stdin)
    run(lambda auth: provisioning.set_password(auth.core, username, password, CLI_CLIENT))
    typer.echo(f"password changed for {username}")


@sessions_app.command("prune")
def sessions_prune() -> None:
    """Delete expired and revoked sessions."""
    count = run(lambda auth: sessions.prune(auth.core))
    typer.echo(f"pruned {count} sessions")


def main() -> None:
    app()
