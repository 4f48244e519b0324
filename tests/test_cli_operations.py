"""First run and settings: what `authdb serve` says it runs with, `config` and `--version`,
unknown variables, missing extras, settings errors that name the variable, and commands that
refuse to create a database in the wrong folder.

Commands run in-process through Typer's CliRunner (each is the real command, on a real
database); a subprocess only where a process matters: `serve`, and a fresh interpreter that
cannot import the optional drivers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner, Result

import authdb
from authdb import Auth, Settings, settings_env
from authdb.cli import app
from authdb.cli.summary import serve_summary
from authdb.extras import MissingExtra
from authdb.ratelimit import RateLimits
from authdb.settings_checks import InvalidSettings
from tests.cli import AUTHDB, FAST_HASHING, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, Mailbox, free_port

KEY = "operations-test-secret-key-0123456789-abcdef"
DB_PASSWORD = "db-pass-7f3a"
REDIS_PASSWORD = "redis-pass-91c2"
SMTP_PASSWORD = "smtp-pass-5d0e"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - passed to the summary, never bound


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``cli(args, **env)``: run `authdb ARGS` in-process, in ``tmp_path``, with only the
    AUTHDB_* variables given (and cheap hashing)."""
    import os

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("AUTHDB_"):
            monkeypatch.delenv(name)
    fast = {f"AUTHDB_{name.upper()}": str(value) for name, value in FAST_HASHING.items()}

    def _invoke(args: list[str], input: str | None = None, **env: str) -> Result:
        runner = CliRunner()
        return runner.invoke(app, args, input=input, env={**fast, **env}, catch_exceptions=False)

    return _invoke


def _error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _pg_tables(url: str) -> list[str]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    async def _names() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return [row["tablename"] for row in rows]
        finally:
            await conn.close()

    return asyncio.run(_names())


# --- --version and config -------------------------------------------------------------------


def test_version_prints_the_installed_version(cli: Any) -> None:
    result = cli(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"authdb {version('authdb')}\n"
    assert version("authdb") == authdb.__version__


def test_config_prints_each_setting_with_its_source_and_masks_secrets(
    cli: Any, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        f"AUTHDB_REDIS_URL=redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0\n"
        "AUTHDB_SECRET_KEY_FALLBACKS=old-secret-one,old-secret-two\n"
        "AUTHDB_SMTP_PORT=2525\n"
    )
    env = {
        "AUTHDB_DATABASE_URL": f"postgresql+asyncpg://app:{DB_PASSWORD}@127.0.0.1:5432/app",
        "AUTHDB_SECRET_KEY": KEY,
        "AUTHDB_SMTP_HOST": "127.0.0.1",
        "AUTHDB_SMTP_USERNAME": "mailer",
        "AUTHDB_SMTP_PASSWORD": SMTP_PASSWORD,
        "AUTHDB_SMTP_PORT": "587",  # the environment wins over .env
    }
    text = cli(["config"], **env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == len(Settings.model_fields)
    for line in (
        "AUTHDB_DATABASE_URL=postgresql+asyncpg://app:***@127.0.0.1:5432/app"
        "  (source: environment)",
        "AUTHDB_SECRET_KEY=********  (source: environment)",
        "AUTHDB_SECRET_KEY_FALLBACKS=********,********  (source: .env)",
        "AUTHDB_SMTP_PASSWORD=********  (source: environment)",
        "AUTHDB_SMTP_PORT=587  (source: environment)",
        "AUTHDB_REDIS_URL=redis://:***@127.0.0.1:6379/0  (source: .env)",
        "AUTHDB_ACCESS_TOKEN_EXPIRE_MINUTES=30  (source: default)",
        "AUTHDB_PAGES_ENABLED=true  (source: default)",
        "AUTHDB_TEMPLATES_DIR=  (source: default)",
    ):
        assert line in lines
    as_json = cli(["config", "--json"], **env)
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert set(document) == {f"AUTHDB_{name.upper()}" for name in Settings.model_fields}
    assert document["AUTHDB_SMTP_PORT"] == {"value": 587, "source": "environment"}
    assert document["AUTHDB_SECRET_KEY_FALLBACKS"]["value"] == ["********", "********"]
    assert document["AUTHDB_CORS_ORIGINS"] == {"value": [], "source": "default"}
    assert document["AUTHDB_REDIS_KEY_PREFIX"] == {"value": "authdb", "source": "default"}
    for secret in (KEY, DB_PASSWORD, REDIS_PASSWORD, SMTP_PASSWORD, "old-secret"):
        assert secret not in text.output + as_json.output
    # Nothing was connected to or created: config only reads settings.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+asyncpg://u@127.0.0.1:5432/db?pass%77ord=Hunter2Pw&sslmode=require",
            "postgresql+asyncpg://u@127.0.0.1:5432/db?pass%77ord=***&sslmode=require",
        ),
        (
            "postgresql+asyncpg:///db?host=/tmp&PassWord=Hunter2Pw",
            "postgresql+asyncpg:///db?host=/tmp&PassWord=***",
        ),
        ("redis://127.0.0.1:6379/0?password=Hunter2Pw", "redis://127.0.0.1:6379/0?password=***"),
        ("postgresql+asyncpg://u:Hunter2%40Pw@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_a_password_anywhere_in_a_url_is_masked(url: str, shown: str) -> None:
    """Drivers read query keys percent-decoded: ``pass%77ord`` is a password too."""
    assert settings_env.mask_url(url) == shown
    secrets = settings_env.url_secrets(url)
    assert ("Hunter2Pw" in secrets or "Hunter2@Pw" in secrets) == ("Hunter2" in url)


# --- unknown variables ----------------------------------------------------------------------


def test_unknown_variables_get_a_warning_naming_the_closest_setting(
    cli: Any, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("AUTHDB_PUBLC_URL=https://auth.example.com\nOTHER_APP_X=1\n")
    result = cli(
        ["config"],
        AUTHDB_SMTP_HOSTNAME="mail.example.com",
        AUTHDB_FROBNICATE="1",
        AUTHDB_TEST_PG_DSN="postgresql://postgres@127.0.0.1/test",  # the suite's own, allowed
    )
    assert result.exit_code == 0  # never fatal
    assert sorted(result.stderr.splitlines()) == [
        "warning: unknown setting AUTHDB_FROBNICATE (ignored)",
        "warning: unknown setting AUTHDB_PUBLC_URL in .env (did you mean AUTHDB_PUBLIC_URL?)",
        "warning: unknown setting AUTHDB_SMTP_HOSTNAME (did you mean AUTHDB_SMTP_HOST?)",
    ]
    assert "AUTHDB_PUBLIC_URL=http://127.0.0.1:8000  (source: default)" in result.stdout


async def test_library_use_logs_an_unknown_variable_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AUTHDB_REGISTRATON_ENABLED", "false")
    settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    with caplog.at_level(logging.WARNING, logger="authdb"):
        for _ in range(2):
            await Auth(settings).shutdown()
    warned = [r.getMessage() for r in caplog.records if r.name == "authdb"]
    assert warned == [
        "unknown setting AUTHDB_REGISTRATON_ENABLED (did you mean AUTHDB_REGISTRATION_ENABLED?)"
    ]
    assert settings.registration_enabled is True  # ignored, as the warning says


# --- settings errors name the variable ------------------------------------------------------


def test_library_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as given:
        Settings(_env_file=None, rate_limit_register="lots", secret_key="hunter2-too-short")
    assert isinstance(given.value, InvalidSettings)
    assert str(given.value) == (
        "invalid settings: AUTHDB_SECRET_KEY (secret_key): must be at least 32 characters long; "
        "AUTHDB_RATE_LIMIT_REGISTER (rate_limit_register): 'lots' is not a rate limit like "
        "'20/minute' or '5 per hour'"
    )
    assert "hunter2" not in str(given.value) + repr(given.value)
    assert [error["loc"] for error in given.value.errors()] == [
        ("secret_key",),
        ("rate_limit_register",),
    ]
    # From the environment, through Auth() as an application would start it.
    monkeypatch.setenv("AUTHDB_SMTP_PORT", "smtp")
    with pytest.raises(InvalidSettings, match=r"^invalid settings: AUTHDB_SMTP_PORT \(smtp_port\)"):
        Auth()
    monkeypatch.delenv("AUTHDB_SMTP_PORT")
    # A value assigned after validation is still named where it is finally used.
    settings = Settings(_env_file=None)
    settings.rate_limit_login_failures = "lots"
    with pytest.raises(ValueError, match=r"^AUTHDB_RATE_LIMIT_LOGIN_FAILURES: 'lots' is not"):
        RateLimits(settings)


# --- commands never create a database -------------------------------------------------------


def test_commands_refuse_a_database_that_does_not_exist(
    cli: Any, database_url: str, tmp_path: Path
) -> None:
    """A command run in the wrong folder (SQLite: the default ./authdb.db, absent) or against
    an empty PostgreSQL database says so in one line and creates nothing."""
    sqlite = database_url.startswith("sqlite")
    env = {} if sqlite else {"AUTHDB_DATABASE_URL": database_url}
    expected = (
        f"error: no authdb database at {tmp_path.resolve() / 'authdb.db'} (AUTHDB_DATABASE_URL); "
        "run 'authdb migrate' first or set AUTHDB_DATABASE_URL"
        if sqlite
        else "error: the database schema is out of date: run `authdb migrate`"
    )
    for args in (["users", "list"], ["keys", "list"], ["sessions", "prune"], ["audit"]):
        assert _error_line(cli(args, **env)) == expected, args
    created = cli(
        ["createuser", "--username", "alice", "--email", "a@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
        **env,
    )
    assert _error_line(created) == expected
    if sqlite:
        assert list(tmp_path.iterdir()) == []
    else:
        assert _pg_tables(database_url) == []


def test_commands_never_create_tables_in_an_existing_file(cli: Any, tmp_path: Path) -> None:
    """An existing SQLite file without authdb's tables (another application's, or an empty
    one) is refused like an old schema, not migrated; a file that is no database is named."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE foo (id INTEGER PRIMARY KEY)")
    env = {"AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{other}"}
    for args in (["users", "list"], ["audit", "verify"], ["sessions", "prune"]):
        line = _error_line(cli(args, **env))
        assert line == "error: the database schema is out of date: run `authdb migrate`", args
    with sqlite3.connect(other) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["foo"]
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    line = _error_line(cli(["users", "list"], AUTHDB_DATABASE_URL=f"sqlite+aiosqlite:///{junk}"))
    assert line == (
        f"error: cannot use the database (SQLite file {junk}, AUTHDB_DATABASE_URL): "
        "file is not a database"
    )


def test_commands_on_a_migrated_database_do_not_warn_about_the_generated_key(
    cli: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only `serve` (and `doctor`) warn that AUTHDB_SECRET_KEY is unset; `users list` just lists."""
    env = {"AUTHDB_DATABASE_URL": database_url}
    assert cli(["migrate"], **env).exit_code == 0
    with caplog.at_level(logging.WARNING):
        listed = cli(["users", "list"], **env)
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == "no users\n"
    assert listed.stderr == ""
    assert not [r for r in caplog.records if "AUTHDB_SECRET_KEY" in r.getMessage()]


# --- missing extras -------------------------------------------------------------------------


def test_missing_drivers_name_the_extra_to_install(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without asyncpg or redis importable (as after a plain `pip install authdb`), Auth() and
    every command stop at once naming the extra, instead of an ImportError on first use."""
    postgres = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}"
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(
        MissingExtra, match=r"^PostgreSQL needs asyncpg: pip install 'authdb\[postgres\]'$"
    ):
        Auth(Settings(_env_file=None, database_url=postgres))
    assert _error_line(cli(["users", "list"], AUTHDB_DATABASE_URL=postgres)) == (
        "error: PostgreSQL needs asyncpg: pip install 'authdb[postgres]'"
    )
    monkeypatch.setitem(sys.modules, "redis", None)
    redis = "redis://127.0.0.1:6379/0"
    with pytest.raises(
        MissingExtra, match=r"^AUTHDB_REDIS_URL needs redis: pip install 'authdb\[redis\]'$"
    ):
        Auth(Settings(_env_file=None, database_url=sqlite, redis_url=redis))
    served = cli(["serve", "--port", str(free_port())], AUTHDB_REDIS_URL=redis)
    assert _error_line(served) == "error: AUTHDB_REDIS_URL needs redis: pip install 'authdb[redis]'"
    assert list(tmp_path.iterdir()) == []  # refused before the database was touched


def test_a_fresh_interpreter_without_the_extras_fails_in_one_line(tmp_path: Path) -> None:
    """Nothing imports asyncpg or redis at import time: the real entry point, in a process
    where neither can be imported, gives the same one-line errors."""
    script = (
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "sys.modules['redis'] = None\n"
        "from authdb.cli import main\n"
        "for args in sys.argv[1].split('|'):\n"
        "    sys.argv = ['authdb', *args.split()]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code, file=sys.stderr)\n"
    )
    commands = "migrate --database-url postgresql+asyncpg://u@127.0.0.1/x|users list"
    result = subprocess.run(
        [sys.executable, "-c", script, commands],
        env=subprocess_env({"AUTHDB_REDIS_URL": "redis://127.0.0.1:6379/0"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr.splitlines() == [
        "error: PostgreSQL needs asyncpg: pip install 'authdb[postgres]'",
        "exit 1",
        "error: AUTHDB_REDIS_URL needs redis: pip install 'authdb[redis]'",
        "exit 1",
    ]


def test_without_the_oauth_extra_everything_but_providers_works(tmp_path: Path) -> None:
    """`pip install authdb` has neither httpx nor Authlib: the service, the library and the
    doctor run without them, and listing a provider fails in one line naming the extra (the
    pages' provider routes import their HTTP client only when providers are configured)."""
    script = (
        "import asyncio, sys\n"
        "sys.modules['httpx'] = None\n"
        "sys.modules['authlib'] = None\n"
        "from authdb import Auth, Settings\n"
        "from authdb.app import create_app\n"
        "from authdb.extras import MissingExtra\n"
        "from authdb.doctor.providers import check_provider\n"
        "from authdb.links import route_path\n"
        "plain = Settings(_env_file=None)\n"
        "app = create_app(auth=Auth(plain))\n"
        "print('login page', route_path(app, 'authdb_page_login'))\n"
        "corp = Settings(_env_file=None, oauth_providers='corp', oauth_corp_client_id='a',\n"
        "    oauth_corp_client_secret='b', oauth_corp_issuer='https://sso.example.com')\n"
        "try:\n"
        "    Auth(corp)\n"
        "except MissingExtra as exc:\n"
        "    print('auth', exc)\n"
        "class Deployment:\n"
        "    settings = corp\n"
        "verdict = asyncio.run(check_provider(Deployment(), 'corp'))\n"
        "print('doctor', verdict)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env({}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    needs = (
        "Sign-in with providers (AUTHDB_OAUTH_PROVIDERS) needs authlib: pip install 'authdb[oauth]'"
    )
    assert lines[0] == "login page /login"
    assert lines[1] == f"auth {needs}"
    assert lines[2].startswith("doctor ") and needs in lines[2]


# --- what serve says ------------------------------------------------------------------------


def test_the_summary_describes_a_production_deployment_without_warnings() -> None:
    settings = Settings(
        _env_file=None,
        database_url=f"postgresql+asyncpg://app:{DB_PASSWORD}@db.internal:6432/auth",
        database_pgbouncer=True,
        secret_key=KEY,
        public_url="https://auth.example.com",
        smtp_host="smtp.example.com",
        smtp_port=587,
        smtp_starttls=True,
        smtp_username="mailer",
        smtp_password=SMTP_PASSWORD,
        redis_url=f"redis://:{REDIS_PASSWORD}@cache.internal:6379/2",
        metrics_enabled=True,
        log_format="json",
        pages_enabled=False,
    )
    lines, warnings = serve_summary(settings, host=ALL_INTERFACES, port=8000, workers=4)
    assert lines == [
        f"authdb {version('authdb')} on http://0.0.0.0:8000",
        "  database:    PostgreSQL app@db.internal:6432/auth (password set), PgBouncer mode",
        "  mail:        SMTP smtp.example.com:587 with STARTTLS, as mailer",
        "  public URL:  https://auth.example.com (AUTHDB_PUBLIC_URL)",
        "  rate limits: Redis redis://:***@cache.internal:6379/2 (shared), key prefix 'authdb'",
        "  workers:     4",
        "  pages:       off (AUTHDB_PAGES_ENABLED=false)",
        "  metrics:     on, at /metrics",
        "  providers:   none (AUTHDB_OAUTH_PROVIDERS unset)",
        "  log format:  json",
    ]
    assert warnings == []
    for secret in (KEY, DB_PASSWORD, REDIS_PASSWORD, SMTP_PASSWORD):
        assert secret not in "\n".join(lines)


def test_the_summary_warns_where_a_setting_suits_only_development() -> None:
    plain = Settings(_env_file=None, public_url="http://auth.example.com")
    _, warnings = serve_summary(plain, host="127.0.0.1", port=8000, workers=3)
    assert [w.split(":")[0] for w in warnings] == [
        "AUTHDB_SECRET_KEY is not set",
        "--workers 3 without AUTHDB_REDIS_URL",
        "AUTHDB_PUBLIC_URL http",
    ]
    assert "each worker has its own rate-limit budget" in warnings[1]
    assert "kept in the database" in warnings[0]
    # All interfaces, no AUTHDB_PUBLIC_URL: links name the loopback address nobody else reaches.
    derived = Settings(_env_file=None, secret_key=KEY)
    _, warnings = serve_summary(
        derived,
        host=ALL_INTERFACES,
        port=8000,
        workers=1,
        public_url="http://127.0.0.1:8000",
    )
    assert warnings == [
        "AUTHDB_PUBLIC_URL is not set: links in emails point at http://127.0.0.1:8000, which "
        "only this machine reaches; set AUTHDB_PUBLIC_URL to the address users open"
    ]
    for loopback in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        local = Settings(_env_file=None, secret_key=KEY, public_url=loopback)
        assert serve_summary(local, host="127.0.0.1", port=8000, workers=1)[1] == []
    # A local AUTHDB_PUBLIC_URL on another port: links lead elsewhere.
    for elsewhere in ("http://127.0.0.1:9000", "http://localhost", "https://localhost"):
        local = Settings(_env_file=None, secret_key=KEY, public_url=elsewhere)
        warnings = serve_summary(local, host="127.0.0.1", port=8000, workers=1)[1]
        assert len(warnings) == 1 and "not on --port 8000" in warnings[0], elsewhere
    remote = Settings(_env_file=None, secret_key=KEY, public_url="https://auth.example.com")
    assert serve_summary(remote, host="127.0.0.1", port=8000, workers=1)[1] == []


def test_serve_says_what_it_runs_with_and_emailed_links_follow_its_port(
    tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    """`authdb serve --port X` without AUTHDB_PUBLIC_URL: the summary names the database file,
    the mail server and the public URL, warns about the generated key, and the link in the
    verification email points at port X."""
    smtp_port, mailbox = smtp_server
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    errors = (tmp_path / "serve.err").open("w")
    env = {
        "AUTHDB_SMTP_HOST": "127.0.0.1",
        "AUTHDB_SMTP_PORT": str(smtp_port),
        "AUTHDB_MAIL_FROM": "authdb <auth@example.com>",
    }
    process = subprocess.Popen(
        [AUTHDB, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=subprocess_env(env),
        stdout=log,
        stderr=errors,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        registered = httpx.post(
            f"{base}/register",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        assert registered.status_code == 201, registered.text
        asyncio.run(mailbox.wait_for(1))
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()
        errors.close()
    body = mailbox.messages[0].get_body(("plain",))
    assert body is not None
    assert f"{base}/verify?token=" in body.get_content()
    summary = (tmp_path / "serve.log").read_text().splitlines()
    assert summary[1:5] == [
        f"  database:    SQLite file {tmp_path.resolve() / 'authdb.db'}",
        f"  mail:        SMTP 127.0.0.1:{smtp_port}",
        f"  public URL:  {base} (from --host/--port; AUTHDB_PUBLIC_URL unset)",
        "  rate limits: in memory, per worker process",
    ]
    stderr = (tmp_path / "serve.err").read_text().splitlines()
    assert stderr[0].startswith("warning: AUTHDB_SECRET_KEY is not set: tokens are signed")
    assert not [line for line in stderr if line.startswith("warning:")][1:]
    # Said once by serve, not again by the worker (nor by each of N workers).
    assert "using the signing key generated" not in "\n".join(stderr)


def test_the_summary_names_the_sign_in_providers() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        oauth_providers="corp,github",
        oauth_corp_client_id="authdb",
        oauth_corp_client_secret="corp-secret-never-shown",
        oauth_corp_issuer="https://sso.example.com/realms/staff",
        oauth_corp_label="Staff SSO",
        oauth_github_client_id="Ov23li",
        oauth_github_client_secret="github-secret-never-shown",
    )
    lines, _ = serve_summary(settings, host="127.0.0.1", port=8000, workers=1)
    (line,) = [line for line in lines if line.startswith("  providers:")]
    assert line == (
        "  providers:   Staff SSO (issuer https://sso.example.com/realms/staff), "
        "GitHub (https://github.com)"
    )
    assert "never-shown" not in "\n".join(lines)
