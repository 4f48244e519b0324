"""Sign-in providers in operations: `authdb config` shows each provider's variables with the
client secret masked and where each came from; `authdb doctor` checks each provider (a real
OpenID Connect provider, the GitHub stand-in, a closed port, a provider that names another
issuer) and prints the redirect URI to register. No client secret in any output or log line.

Commands run in-process through Typer's CliRunner, with only the test's AUTHDB_* variables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from authdb import Settings, settings_env
from authdb.cli import app
from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.doctor import CHECKS
from tests.cli import FAST_HASHING
from tests.conftest import Mailbox, free_port
from tests.github_standin import GitHubStandin
from tests.oauth_servers import OIDCProvider
from tests.test_doctor import healthy

pytest_plugins = ["tests.oauth_servers"]

# Long and distinct, so that finding one in an output cannot be an accident (and masking
# one cannot mangle other words).
CORP_SECRET = "corp-client-secret-3f9a1c7e5b"
GITHUB_SECRET = "github-client-secret-8d2e6b0a4c"
PUBLIC_URL = "https://auth.example.com"


def _invoke(args: list[str], env: dict[str, str]) -> Result:
    """`authdb ARGS` with only ``env`` (and cheap hashing) as AUTHDB_* variables."""
    cleared: dict[str, str | None] = {
        k: None for k in os.environ if k.upper().startswith("AUTHDB_")
    }
    fast = {f"AUTHDB_{name.upper()}": str(value) for name, value in FAST_HASHING.items()}
    result = CliRunner().invoke(app, args, env={**cleared, **fast, **env})
    # A finding, never a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result
    return result


def _secrets_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


# --- authdb config ----------------------------------------------------------------------------


def test_config_shows_each_provider_with_its_source_and_the_secret_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        f"AUTHDB_OAUTH_CORP_CLIENT_SECRET={CORP_SECRET}\n"
        "AUTHDB_OAUTH_GITHUB_GITHUB_URL=https://ghe.example.com\n"
        "AUTHDB_OAUTH_CORP_LABEL=Overridden by the environment\n"
    )
    env = {
        "AUTHDB_OAUTH_PROVIDERS": "corp,github",
        "AUTHDB_OAUTH_CORP_CLIENT_ID": "corp-client",
        "AUTHDB_OAUTH_CORP_ISSUER": "https://sso.example.com/realms/staff/",
        "AUTHDB_OAUTH_CORP_LABEL": "Staff SSO",
        "AUTHDB_OAUTH_GITHUB_CLIENT_ID": "Iv1.github-client",
        "AUTHDB_OAUTH_GITHUB_CLIENT_SECRET": GITHUB_SECRET,
        "AUTHDB_OAUTH_GITHUB_API_URL": "https://ghe.example.com/api/v3",
        "AUTHDB_OAUTH_LINK_VERIFIED_EMAIL": "true",
    }
    text = _invoke(["config"], env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    provider_lines = [line for line in lines if line.startswith("AUTHDB_OAUTH_")]
    assert provider_lines == [
        "AUTHDB_OAUTH_PROVIDERS=corp,github  (source: environment)",
        "AUTHDB_OAUTH_LINK_VERIFIED_EMAIL=true  (source: environment)",
        "AUTHDB_OAUTH_CORP_CLIENT_ID=corp-client  (source: environment)",
        "AUTHDB_OAUTH_CORP_CLIENT_SECRET=********  (source: .env)",
        "AUTHDB_OAUTH_CORP_ISSUER=https://sso.example.com/realms/staff/  (source: environment)",
        "AUTHDB_OAUTH_CORP_SCOPES=openid,email,profile  (source: default)",
        "AUTHDB_OAUTH_CORP_LABEL=Staff SSO  (source: environment)",
        "AUTHDB_OAUTH_GITHUB_CLIENT_ID=Iv1.github-client  (source: environment)",
        "AUTHDB_OAUTH_GITHUB_CLIENT_SECRET=********  (source: environment)",
        "AUTHDB_OAUTH_GITHUB_ISSUER=  (source: default)",
        "AUTHDB_OAUTH_GITHUB_SCOPES=read:user,user:email  (source: default)",
        "AUTHDB_OAUTH_GITHUB_LABEL=GitHub  (source: default)",
        "AUTHDB_OAUTH_GITHUB_GITHUB_URL=https://ghe.example.com  (source: .env)",
        "AUTHDB_OAUTH_GITHUB_API_URL=https://ghe.example.com/api/v3  (source: environment)",
    ]
    # Every declared setting, then the providers' own (no GitHub URLs for an OIDC provider).
    assert len(lines) == len(Settings.model_fields) + 5 + 7
    assert text.stderr == ""  # the provider variables are settings, not unknown ones

    as_json = _invoke(["config", "--json"], env)
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["AUTHDB_OAUTH_CORP_CLIENT_SECRET"] == {"value": "********", "source": ".env"}
    assert document["AUTHDB_OAUTH_CORP_SCOPES"] == {
        "value": ["openid", "email", "profile"],
        "source": "default",
    }
    assert document["AUTHDB_OAUTH_GITHUB_ISSUER"] == {"value": None, "source": "default"}
    assert "AUTHDB_OAUTH_CORP_GITHUB_URL" not in document
    _secrets_absent(text.output + as_json.output, CORP_SECRET, GITHUB_SECRET)


def test_provider_settings_given_as_arguments_are_shown_as_such() -> None:
    current = Settings(
        _env_file=None,
        oauth_providers="corp",
        oauth_corp_client_id="corp-client",
        oauth_corp_client_secret=CORP_SECRET,
        oauth_corp_issuer="https://sso.example.com",
        oauth_corp_scopes="openid email groups",
    )
    fields = settings_env.fields(current)
    assert fields[len(Settings.model_fields) :] == [
        "oauth_corp_client_id",
        "oauth_corp_client_secret",
        "oauth_corp_issuer",
        "oauth_corp_scopes",
        "oauth_corp_label",
    ]
    shown = {field: settings_env.shown(current, field) for field in fields}
    assert shown["oauth_corp_client_secret"] == settings_env.MASK
    assert shown["oauth_corp_scopes"] == ["openid", "email", "groups"]
    assert shown["oauth_corp_label"] == "Corp"
    assert settings_env.source(current, "oauth_corp_client_id") == "argument"
    assert settings_env.source(current, "oauth_corp_label") == "default"
    _secrets_absent(json.dumps(shown), CORP_SECRET)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "AUTHDB_OAUTH_CORP_ISSUER",
            "http://sso.example.com",
            "AUTHDB_OAUTH_CORP_ISSUER: must be an https:// URL (http only on 127.0.0.1 or "
            "localhost)",
        ),
        ("AUTHDB_OAUTH_CORP_CLIENT_ID", "", "AUTHDB_OAUTH_CORP_CLIENT_ID is not set"),
        ("AUTHDB_OAUTH_CORP_SCOPES", "email profile", "AUTHDB_OAUTH_CORP_SCOPES must include"),
    ],
)
def test_a_bad_provider_setting_is_one_line_naming_it_and_never_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "AUTHDB_OAUTH_PROVIDERS": "corp",
        "AUTHDB_OAUTH_CORP_CLIENT_ID": "corp-client",
        "AUTHDB_OAUTH_CORP_CLIENT_SECRET": CORP_SECRET,
        "AUTHDB_OAUTH_CORP_ISSUER": "https://sso.example.com",
        variable: value,
    }
    for command in (["config"], ["doctor"]):
        result = _invoke(command, env)
        assert result.exit_code == 1, result.output
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: invalid settings: ") and expected in line, line
        _secrets_absent(result.output, CORP_SECRET)


# --- authdb doctor --------------------------------------------------------------------------


def _migrated(url: str) -> str:
    async def _run() -> None:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(_run())
    return url


def _provider_env(name: str, client_id: str, secret: str, **more: str) -> dict[str, str]:
    values = {"client_id": client_id, "client_secret": secret, **more}
    return {f"AUTHDB_OAUTH_{name.upper()}_{key.upper()}": value for key, value in values.items()}


def _oauth_lines(result: Result) -> dict[str, str]:
    """``{provider: "status  message"}`` of the doctor's ``oauth NAME`` lines."""
    found = {}
    for line in result.stdout.splitlines():
        status, rest = line[:7].strip(), line[7:]
        if rest.startswith("oauth "):
            name, _, message = rest.removeprefix("oauth ").partition(": ")
            found[name] = f"{status}  {message}"
    return found


def test_doctor_checks_each_provider_and_prints_its_redirect_uri(
    database_url: str,
    smtp_server: tuple[int, Mailbox],
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    corp_id, corp_secret = oidc_provider.register_client([f"{PUBLIC_URL}/oauth/corp/callback"])
    github_id, github_secret = github_standin.add_client([f"{PUBLIC_URL}/oauth/github/callback"])
    env = {
        **healthy(_migrated(database_url), smtp_server[0]),
        "AUTHDB_OAUTH_PROVIDERS": "corp,github",
        **_provider_env("corp", corp_id, corp_secret, issuer=oidc_provider.issuer),
        **_provider_env(
            "github",
            github_id,
            github_secret,
            github_url=github_standin.base_url,
            api_url=github_standin.api_url,
        ),
    }
    with caplog.at_level(logging.DEBUG):
        result = _invoke(["doctor"], env)
    assert result.exit_code == 0, result.stdout
    names = [line[7:].split(":", 1)[0] for line in result.stdout.splitlines()[:-1]]
    assert names == [name for name, _ in CHECKS] + ["oauth corp", "oauth github"]
    assert _oauth_lines(result) == {
        "corp": f"ok  issuer {oidc_provider.issuer}: discovery and JWKS (1 key), client id and "
        f"secret not refused; redirect URI to register: {PUBLIC_URL}/oauth/corp/callback",
        "github": f"ok  GitHub at {github_standin.base_url}: API {github_standin.api_url} "
        "answers, client id and secret not refused; redirect URI to register: "
        f"{PUBLIC_URL}/oauth/github/callback",
    }
    report = json.loads(_invoke(["doctor", "--json"], env).stdout)
    assert report["ok"] is True
    assert [check["name"] for check in report["checks"]][-2:] == ["oauth corp", "oauth github"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    _secrets_absent(result.output + logged, corp_secret, github_secret)


@pytest.fixture
def other_issuer() -> Iterator[str]:
    """An OIDC discovery document on 127.0.0.1 that names a templated issuer, as Microsoft
    Entra ID's multi-tenant ``common`` endpoint does; yields the issuer asked for."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}/common/v2.0"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "jwks_uri": f"{issuer}/keys",
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_doctor_names_each_provider_that_is_down_or_misconfigured(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    oidc_provider: OIDCProvider,
    github_standin: GitHubStandin,
    other_issuer: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    corp_id, _corp_secret = oidc_provider.register_client([f"{PUBLIC_URL}/oauth/corp/callback"])
    github_id, github_secret = github_standin.add_client([f"{PUBLIC_URL}/oauth/github/callback"])
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    wrong = {name: f"{name}-wrong-client-secret-{i}7c1e" for i, name in enumerate("abcdef")}
    env = {
        "AUTHDB_PUBLIC_URL": PUBLIC_URL,
        "AUTHDB_OAUTH_PROVIDERS": "down,badsecret,entra,missing,github",
        **_provider_env("down", "some-client", wrong["a"], issuer=closed),
        **_provider_env("badsecret", corp_id, wrong["b"], issuer=oidc_provider.issuer),
        **_provider_env("entra", "entra-client", wrong["c"], issuer=other_issuer),
        **_provider_env("missing", "x-client", wrong["d"], issuer=oidc_provider.issuer + "/x"),
        **_provider_env(
            "github",
            github_id,
            wrong["e"],
            github_url=github_standin.base_url,
            api_url=github_standin.api_url,
        ),
    }
    # Only the provider named github is GitHub: its API URL wrong (the web URL, where /user
    # is no API), its secret right, in a run of its own.
    wrong_api = {
        "AUTHDB_PUBLIC_URL": PUBLIC_URL,
        "AUTHDB_OAUTH_PROVIDERS": "github",
        **_provider_env(
            "github",
            github_id,
            github_secret,
            github_url=github_standin.base_url,
            api_url=github_standin.base_url,
        ),
    }
    with caplog.at_level(logging.DEBUG):
        result = _invoke(["doctor"], env)
        api_result = _invoke(["doctor"], wrong_api)
    assert result.exit_code == api_result.exit_code == 1, result.output
    lines = _oauth_lines(result)
    assert list(lines) == ["down", "badsecret", "entra", "missing", "github"], result.output
    for name, line in [*lines.items(), ("github", _oauth_lines(api_result)["github"])]:
        assert line.startswith("error  "), line
        assert line.endswith(f"; redirect URI to register: {PUBLIC_URL}/oauth/{name}/callback")
    assert lines["down"].startswith(
        f"error  {closed}/.well-known/openid-configuration (AUTHDB_OAUTH_DOWN_ISSUER) not "
        "reachable: "
    )
    assert (
        "the token endpoint refused the client ('invalid_client'): check "
        "AUTHDB_OAUTH_BADSECRET_CLIENT_ID, AUTHDB_OAUTH_BADSECRET_CLIENT_SECRET"
    ) in lines["badsecret"]
    assert (
        "names the issuer 'https://login.microsoftonline.com/{tenantid}/v2.0', not "
        f"{other_issuer} (AUTHDB_OAUTH_ENTRA_ISSUER)"
    ) in lines["entra"]
    assert "(AUTHDB_OAUTH_MISSING_ISSUER) answered HTTP 404" in lines["missing"]
    assert "refused the client ('incorrect_client_credentials')" in lines["github"]
    assert (
        f"{github_standin.base_url}/user (AUTHDB_OAUTH_GITHUB_API_URL) answered HTTP 404"
    ) in _oauth_lines(api_result)["github"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    output = result.output + api_result.output + logged
    _secrets_absent(output, *wrong.values(), github_secret)


def test_doctor_names_a_provider_that_went_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that answered, then stopped: the next run says so, and says it again fine
    once it is back."""
    from tests.oauth_servers import start_oidc_provider

    monkeypatch.chdir(tmp_path)
    provider = start_oidc_provider(state_dir=tmp_path)
    try:
        client_id, secret = provider.register_client([f"{PUBLIC_URL}/oauth/corp/callback"])
        env = {
            "AUTHDB_PUBLIC_URL": PUBLIC_URL,
            "AUTHDB_OAUTH_PROVIDERS": "corp",
            **_provider_env("corp", client_id, secret, issuer=provider.issuer),
        }
        assert _oauth_lines(_invoke(["doctor"], env))["corp"].startswith("ok  ")
        provider.stop()
        down = _oauth_lines(_invoke(["doctor"], env))["corp"]
        assert down.startswith(f"error  {provider.issuer}/.well-known/openid-configuration"), down
        assert "not reachable" in down
        provider.start()
        assert _oauth_lines(_invoke(["doctor"], env))["corp"].startswith("ok  ")
    finally:
        provider.stop()
