"""Every setting is checked when the process starts: a value that cannot work is refused at once,
with a one-line error naming the variable, instead of failing every request later."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import certifi
import jwt
import pytest
from pydantic import ValidationError

from authdb import Settings
from tests.cli import run_cli
from tests.conftest import Harness, free_port

KEY_64 = "k" * 64

# (setting, unusable value, part of the reason). Each value passed the old validation.
UNUSABLE: list[tuple[str, Any, str]] = [
    ("mfa_issuer", "   ", "must not be blank"),
    ("mfa_issuer", "Acme:Corp", "must not contain ':'"),
    ("database_url", "mysql://user@host/db", "use SQLite or PostgreSQL"),
    ("database_url", "not a url", "not a database URL"),
    ("database_url", "postgresql+asyncpg://u@host:99999/db", "out of range"),
    ("database_url", "postgresql+asyncpg://u@host:port/db", "not a database URL"),
    ("database_url", "sqlite+aiosqlite:///:memory:", "in-memory"),
    ("database_url", "sqlite+aiosqlite:////no/such/folder/authdb.db", "does not exist"),
    ("secret_key", "too-short", "at least 32 characters"),
    ("jwt_algorithm", "ES384", "does not make ES384 keys"),
    ("jwt_algorithm", "PS256", "does not make PS256 keys"),
    ("jwt_algorithm", "Ed25519", "use HS256, HS384, HS512, RS256, ES256 or EdDSA"),
    ("jwt_algorithm", "none", "never accepted"),
    ("jwt_algorithm", "hs256", "use HS256, HS384, HS512, RS256, ES256 or EdDSA"),
    ("jwt_keys_refresh_seconds", 0, "greater than or equal to 1"),
    ("jwt_keys_refresh_seconds", 3600, "less than or equal to 300"),
    ("jwt_issuer", "", "at least 1 character"),
    ("jwt_audience", "", "at least 1 character"),
    ("access_token_expire_minutes", 0, "greater than or equal to 1"),
    ("access_token_expire_minutes", 10**12, "less than or equal to"),
    ("refresh_token_expire_days", 10**9, "less than or equal to"),
    ("refresh_reuse_interval_seconds", -1, "greater than or equal to 0"),
    ("verify_token_expire_hours", 0, "greater than or equal to 1"),
    ("reset_token_expire_minutes", 10**9, "less than or equal to"),
    ("public_url", "auth.example.com", "absolute http:// or https:// URL"),
    ("public_url", "ftp://auth.example.com", "absolute http:// or https:// URL"),
    ("public_url", "https://auth.example.com/?next=1", "query or fragment"),
    ("public_url", "https://auth.example.com:99999", "invalid port"),
    ("public_url", "https://user:pw@auth.example.com", "user name or password"),
    ("smtp_host", "smtp://mail.example.com", "not a host name"),
    ("smtp_port", 0, "greater than or equal to 1"),
    ("smtp_port", 70000, "less than or equal to 65535"),
    ("smtp_timeout_seconds", 0, "greater than 0"),
    ("smtp_tls", "ssl", "'none', 'starttls' or 'implicit'"),
    ("smtp_ca_file", "/no/such/ca.pem", "not a readable PEM file of CA certificates"),
    ("mail_from", "not an address", "not a sender address"),
    ("mail_from", "x@", "not a sender address"),
    ("mail_from", "a@example.com, b@example.com", "not a sender address"),
    ("mail_from", "a@example.com\r\nBcc: victim@example.com", "control character"),
    ("templates_dir", "/no/such/templates", "not an existing folder"),
    ("redis_url", "http://127.0.0.1:6379", "not a Redis URL"),
    ("redis_url", "redis://", "has no host"),
    ("redis_url", "redis://127.0.0.1:6379/first", "must be a number"),
    ("redis_key_prefix", "", "at least 1 character"),
    ("redis_timeout_seconds", 0, "greater than 0"),
    ("database_pool_size", 0, "greater than or equal to 2"),
    ("session_cache_size", -1, "greater than or equal to 0"),
    ("session_cache_size", 1_000_001, "less than or equal to 1000000"),
    ("login_max_failures", 0, "greater than or equal to 1"),
    ("login_lockout_minutes", 0, "greater than or equal to 1"),
    ("rate_limit_login_failures", "lots", "not a rate limit"),
    ("rate_limit_register", "0/minute", "allows nothing"),
    ("rate_limit_email_requests", "5/hour;100/day", "exactly one"),
    ("rate_limit_email_requests_per_address", "20/fortnight", "not a rate limit"),
    ("rate_limit_ipv6_prefix", 0, "greater than or equal to 1"),
    ("rate_limit_ipv6_prefix", 129, "less than or equal to 128"),
    ("trusted_proxies", "10.0.0.0/8,proxy.internal", "not an IP address or network"),
    ("cors_origins", "app.example.com", "not an origin"),
    ("allowed_redirect_origins", "*", "redirects anywhere"),
    ("allowed_redirect_origins", "javascript://x", "not an http:// or https:// origin"),
    ("allowed_redirect_origins", "https://app.example.com/next", "no path, query or fragment"),
    ("site_name", "", "at least 1 character"),
    ("site_name", "   ", "must not be blank"),
    ("site_name", "Acme\u202eSign in", "control"),
    ("cors_origins", "https://app.example.com/login", "no path, query or fragment"),
    ("cors_origins", "*,https://app.example.com", "list it alone"),
    ("max_body_bytes", 10, "greater than or equal to 1024"),
    ("password_hash_concurrency", 0, "greater than or equal to 1"),
    ("password_hash_priority", "realtime", "'idle' or 'normal'"),
    ("password_hash_time_cost", 0, "greater than or equal to 1"),
    ("password_hash_memory_kib", 4, "greater than or equal to 8"),
    ("password_hash_parallelism", 0, "greater than or equal to 1"),
    ("prune_every_n_logins", 0, "greater than or equal to 1"),
    ("log_format", "xml", "'text' or 'json'"),
    ("profile_model", "authdb.errors.InvalidInput", "package.module:ClassName"),
    ("profile_model", "authdb_no_such_module:Profile", "cannot import"),
    ("profile_model", "authdb.errors:NoSuchModel", "has no 'NoSuchModel'"),
    ("profile_model", "authdb.errors:InvalidInput", "not a Pydantic model class"),
    ("oauth_providers", "Google", "not a provider name"),
    ("oauth_providers", "google,corp,google", "listed twice"),
]

# Settings whose every well-typed value works; a wrong type is refused by pydantic.
ANY_VALUE_WORKS = {
    "secret_key_fallbacks",  # earlier keys, whatever they were
    "database_pgbouncer",
    "pages_enabled",
    "registration_enabled",
    "require_verified_email",
    "smtp_starttls",
    "smtp_username",  # with smtp_password: see test_smtp_credentials_come_in_pairs
    "smtp_password",
    "metrics_enabled",
    "new_device_alerts",
    "oauth_link_verified_email",  # and it links only emails verified on both sides
}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_every_setting_has_a_check_or_takes_any_value() -> None:
    checked = {name for name, _, _ in UNUSABLE}
    assert set(Settings.model_fields) == checked | ANY_VALUE_WORKS


@pytest.mark.parametrize(
    ("name", "value", "reason"), UNUSABLE, ids=[f"{n}={v!r}"[:60] for n, v, _ in UNUSABLE]
)
def test_an_unusable_value_is_refused_naming_the_setting(
    name: str, value: Any, reason: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(**{name: value})
    errors = refused.value.errors()
    assert [error["loc"][0] for error in errors] == [name]
    assert reason in errors[0]["msg"]


# A listed provider's own variables (AUTHDB_OAUTH_<NAME>_*, not fields: their names depend on
# the list), each refused naming the variable. ``None`` leaves a variable out.
OIDC_PROVIDER = {
    "oauth_corp_client_id": "corp-client",
    "oauth_corp_client_secret": "corp-secret-never-shown",
    "oauth_corp_issuer": "https://sso.example.com",
}
GITHUB_PROVIDER = {
    "oauth_github_client_id": "Iv1.client",
    "oauth_github_client_secret": "github-secret-never-shown",
}
UNUSABLE_PROVIDER: list[tuple[dict[str, Any], str]] = [
    (
        {"oauth_corp_issuer": None},
        "AUTHDB_OAUTH_CORP_ISSUER is not set: provider 'corp' is listed (only a provider named",
    ),
    ({"oauth_corp_client_id": None}, "AUTHDB_OAUTH_CORP_CLIENT_ID is not set"),
    ({"oauth_corp_client_secret": "  "}, "AUTHDB_OAUTH_CORP_CLIENT_SECRET is not set"),
    ({"oauth_corp_client_secret": "a\x1bb"}, "AUTHDB_OAUTH_CORP_CLIENT_SECRET contains control"),
    ({"oauth_corp_issuer": "http://sso.example.com"}, "AUTHDB_OAUTH_CORP_ISSUER: must be an https"),
    ({"oauth_corp_issuer": "https://sso.example.com/?x=1"}, "query or fragment"),
    ({"oauth_corp_scopes": "email profile"}, "AUTHDB_OAUTH_CORP_SCOPES must include openid"),
    ({"oauth_corp_api_url": "https://api.example.com"}, "AUTHDB_OAUTH_CORP_API_URL is for GitHub"),
    ({"oauth_corp_label": "x" * 65}, "AUTHDB_OAUTH_CORP_LABEL must be printable, at most 64"),
    (
        {"oauth_github_api_url": "http://ghe.example.com/api/v3"},
        "AUTHDB_OAUTH_GITHUB_API_URL: must be an https:// URL",
    ),
]


@pytest.mark.parametrize(
    ("changes", "reason"), UNUSABLE_PROVIDER, ids=[r[:40] for _, r in UNUSABLE_PROVIDER]
)
def test_a_provider_s_own_variables_are_checked_naming_the_variable(
    changes: dict[str, Any], reason: str
) -> None:
    values = {**OIDC_PROVIDER, **GITHUB_PROVIDER, **changes}
    given = {name: value for name, value in values.items() if value is not None}
    with pytest.raises(ValidationError) as refused:
        settings(oauth_providers="corp,github", **given)
    assert reason in str(refused.value)
    assert "never-shown" not in str(refused.value)
    # And the same values are fine once the problem is gone.
    fine = settings(oauth_providers="corp,github", **OIDC_PROVIDER, **GITHUB_PROVIDER)
    assert list(fine.oauth) == ["corp", "github"]


def test_a_short_key_is_refused_for_the_longer_hmac_algorithms() -> None:
    settings(jwt_algorithm="HS512", secret_key=KEY_64)
    settings(jwt_algorithm="HS384", secret_key="k" * 48)
    with pytest.raises(ValidationError, match="AUTHDB_SECRET_KEY of at least 64 bytes"):
        settings(jwt_algorithm="HS512", secret_key="k" * 48)
    with pytest.raises(ValidationError, match="AUTHDB_SECRET_KEY of at least 48 bytes"):
        settings(jwt_algorithm="HS384", secret_key="k" * 40)


def test_smtp_credentials_come_in_pairs() -> None:
    settings(smtp_host="mail.example.com", smtp_username="bob", smtp_password="pw")
    with pytest.raises(ValidationError, match="must be set together"):
        settings(smtp_username="bob")
    with pytest.raises(ValidationError, match="must be set together"):
        settings(smtp_password="pw")


def test_smtp_tls_settings_must_agree() -> None:
    assert settings(smtp_tls="starttls", smtp_starttls=True).smtp_tls_mode == "starttls"
    assert settings(smtp_tls="implicit", smtp_starttls=False).smtp_tls_mode == "implicit"
    for tls in ("none", "implicit"):
        with pytest.raises(
            ValidationError, match=f"AUTHDB_SMTP_STARTTLS=true contradicts AUTHDB_SMTP_TLS={tls}"
        ):
            settings(smtp_tls=tls, smtp_starttls=True)
    with pytest.raises(ValidationError, match="AUTHDB_SMTP_STARTTLS=false contradicts"):
        settings(smtp_tls="starttls", smtp_starttls=False)
    with pytest.raises(ValidationError, match="AUTHDB_SMTP_CA_FILE is set but AUTHDB_SMTP_TLS"):
        settings(smtp_ca_file=certifi.where())  # a real bundle: refused only for the mode


def test_refusals_never_repeat_a_secret() -> None:
    with pytest.raises(ValidationError) as refused:
        settings(
            secret_key="hunter2-is-short",
            database_url="mysql://app:hunter2@db.internal/app",
            redis_url="rediss://:hunter2@cache.internal:99999/0",
            public_url="https://admin:hunter2@auth.example.com/?x=1",
        )
    assert len(refused.value.errors()) == 4
    assert "hunter2" not in str(refused.value)


def test_blank_optional_settings_mean_unset() -> None:
    names = ["smtp_host", "smtp_username", "smtp_password", "redis_url", "templates_dir"]
    blank = settings(**dict.fromkeys(names, ""))
    assert blank.smtp_host is blank.smtp_username is blank.smtp_password is None
    assert blank.redis_url is blank.templates_dir is None


def test_argon2_memory_must_cover_every_lane() -> None:
    settings(password_hash_memory_kib=32, password_hash_parallelism=4)
    with pytest.raises(ValidationError, match="at least 8 times AUTHDB_PASSWORD_HASH_PARALLELISM"):
        settings(password_hash_memory_kib=16, password_hash_parallelism=4)


def test_usable_values_are_accepted_and_normalized(tmp_path: Path) -> None:
    config = settings(
        database_url="postgres://app@db.internal:5432/auth?ssl=require",
        public_url="https://example.com/auth/",
        smtp_host="",
        mail_from='"Example, Inc." <no-reply@example.com>',
        templates_dir=str(tmp_path),
        redis_url="rediss://:pw@cache.internal:6380/2",
        rate_limit_login_failures="30 per 2 minutes",
        cors_origins="HTTPS://App.Example.com/, capacitor://localhost, http://[::1]:5173",
        trusted_proxies="10.0.0.0/8, 2001:db8::/32",
    )
    assert config.public_url == "https://example.com/auth"
    assert config.smtp_host is None
    assert config.cors_origins == [
        "https://app.example.com",
        "capacitor://localhost",
        "http://[::1]:5173",
    ]
    assert settings(cors_origins="*").cors_origins == ["*"]
    assert settings(redis_url="redis+sentinel://s1:26379/mymaster").redis_url
    assert settings(mail_from="no-reply@example.com").mail_from == "no-reply@example.com"


def test_the_defaults_are_usable() -> None:
    # Run from a folder that exists (the default SQLite file is ./authdb.db).
    defaults = settings()
    assert defaults.jwt_algorithm == "HS256"
    assert defaults.mail_from == "authdb <no-reply@localhost>"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"])
async def test_every_accepted_algorithm_signs_working_tokens(
    make_harness: Callable[..., Awaitable[Harness]], algorithm: str
) -> None:
    harness = await make_harness(jwt_algorithm=algorithm, secret_key=KEY_64)
    await harness.create_user()
    tokens = await harness.login()
    assert jwt.get_unverified_header(tokens["access_token"])["alg"] == algorithm
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 200


def _one_line_error(result: Any) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


@pytest.mark.parametrize(
    ("command", "variable", "value", "expected"),
    [
        (
            ["serve", "--port", "PORT"],
            "AUTHDB_JWT_ALGORITHM",
            "ES384",
            "error: invalid settings: AUTHDB_JWT_ALGORITHM: authdb does not make ES384 keys; "
            "use HS256, HS384, HS512, RS256, ES256 or EdDSA",
        ),
        (
            ["migrate"],
            "AUTHDB_RATE_LIMIT_LOGIN_FAILURES",
            "lots",
            "error: invalid settings: AUTHDB_RATE_LIMIT_LOGIN_FAILURES: 'lots' is not a rate "
            "limit like '20/minute' or '5 per hour'",
        ),
        (
            ["users", "list"],
            "AUTHDB_PUBLIC_URL",
            "auth.example.com",
            "error: invalid settings: AUTHDB_PUBLIC_URL: 'auth.example.com' is not an absolute "
            "http:// or https:// URL",
        ),
        (
            ["serve", "--port", "PORT"],
            "AUTHDB_TEMPLATES_DIR",
            "missing-templates",
            "error: invalid settings: AUTHDB_TEMPLATES_DIR: 'missing-templates' is not an "
            "existing folder",
        ),
        (
            ["migrate"],
            "AUTHDB_SMTP_PORT",
            "smtp",
            "error: invalid settings: AUTHDB_SMTP_PORT: Input should be a valid integer, unable "
            "to parse string as an integer",
        ),
    ],
    ids=["es384-serve", "lots-migrate", "url-users", "templates-serve", "port-migrate"],
)
def test_the_cli_refuses_an_unusable_setting_in_one_line(
    tmp_path: Path, command: list[str], variable: str, value: str, expected: str
) -> None:
    args = [str(free_port()) if arg == "PORT" else arg for arg in command]
    result = run_cli(args, env={variable: value}, cwd=tmp_path)
    assert _one_line_error(result) == expected
    # Refused before anything was touched: serve did not create its database.
    assert not (tmp_path / "authdb.db").exists()


def test_the_cli_names_every_bad_variable_and_the_option_it_was_given(tmp_path: Path) -> None:
    result = run_cli(
        ["migrate", "--database-url", "mysql://root@127.0.0.1/app"],
        env={"AUTHDB_CORS_ORIGINS": "https://ok.example.com,not-an-origin"},
        cwd=tmp_path,
    )
    assert _one_line_error(result) == (
        "error: invalid settings: --database-url: unsupported database 'mysql'; use SQLite or "
        "PostgreSQL (sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB); "
        "AUTHDB_CORS_ORIGINS: 'not-an-origin' is not an origin like 'https://app.example.com'"
    )


def test_the_cli_names_settings_that_contradict_each_other(tmp_path: Path) -> None:
    result = run_cli(
        ["createuser", "--username", "alice", "--email", "a@example.com", "--password-stdin"],
        env={"AUTHDB_JWT_ALGORITHM": "HS512", "AUTHDB_SECRET_KEY": "k" * 40},
        stdin="correct horse battery staple\n",
        cwd=tmp_path,
    )
    assert _one_line_error(result) == (
        "error: invalid settings: AUTHDB_JWT_ALGORITHM=HS512 needs an AUTHDB_SECRET_KEY of at "
        "least 64 bytes (RFC 7518 section 3.2)"
    )


def test_the_cli_never_echoes_a_refused_secret(tmp_path: Path) -> None:
    result = run_cli(["migrate"], env={"AUTHDB_SECRET_KEY": "hunter2-secret"}, cwd=tmp_path)
    line = _one_line_error(result)
    assert line == "error: invalid settings: AUTHDB_SECRET_KEY: must be at least 32 characters long"
    assert "hunter2" not in result.stdout + result.stderr
