"""Settings of the sign-in providers: ``AUTHDB_OAUTH_PROVIDERS`` and each provider's
``AUTHDB_OAUTH_<NAME>_*`` variables, from arguments, the environment and .env files; the
unknown-variable check; ``authdb config`` never printing a client secret."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from authdb import Settings, settings_env
from authdb.cli import app
from authdb.settings_checks import InvalidSettings
from tests.cli import FAST_HASHING

ISSUER = "https://idp.example.com"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AUTHDB_* variable from outside; run in an empty directory (no .env)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("AUTHDB_"):
            monkeypatch.delenv(name)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def refusal(**values: Any) -> str:
    with pytest.raises(InvalidSettings) as caught:
        make(**values)
    return str(caught.value)


def corp(**changes: Any) -> dict[str, Any]:
    values = {
        "oauth_providers": "corp",
        "oauth_corp_client_id": "corp-id",
        "oauth_corp_client_secret": "corp-secret",
        "oauth_corp_issuer": ISSUER,
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def test_a_listed_provider_without_any_variable_names_each() -> None:
    message = refusal(oauth_providers="corp")
    for suffix in ("CLIENT_ID", "CLIENT_SECRET", "ISSUER"):
        assert f"AUTHDB_OAUTH_CORP_{suffix}" in message


def test_a_listed_provider_without_its_variables_is_named() -> None:
    assert "AUTHDB_OAUTH_CORP_" in refusal(oauth_providers="corp")
    assert "AUTHDB_OAUTH_CORP_CLIENT_ID" in refusal(**corp(oauth_corp_client_id=None))
    assert "AUTHDB_OAUTH_CORP_CLIENT_SECRET" in refusal(**corp(oauth_corp_client_secret=None))
    assert "AUTHDB_OAUTH_CORP_CLIENT_ID" in refusal(**corp(oauth_corp_client_id="  "))
    assert "AUTHDB_OAUTH_CORP_ISSUER" in refusal(**corp(oauth_corp_issuer=None))
    # GitHub alone may go without an issuer.
    github = make(
        oauth_providers="github", oauth_github_client_id="i", oauth_github_client_secret="s"
    )
    assert github.oauth["github"].kind == "github"
    assert github.oauth["github"].github_url == "https://github.com"


def test_a_good_provider_is_read() -> None:
    settings = make(**corp())
    provider = settings.oauth["corp"]
    assert (provider.name, provider.client_id, provider.issuer) == ("corp", "corp-id", ISSUER)
    assert provider.client_secret.get_secret_value() == "corp-secret"
    assert provider.kind == "oidc"
    assert provider.label == "Corp"
    assert "openid" in provider.scopes
    assert "corp-secret" not in repr(settings) + repr(settings.oauth) + str(settings.oauth)
    # The issuer is kept as written (ID tokens' iss must match it exactly, slash and all);
    # http on loopback is accepted (development, tests).
    assert make(**corp(oauth_corp_issuer=ISSUER + "/")).oauth["corp"].issuer == ISSUER + "/"
    loopback = make(**corp(oauth_corp_issuer="http://127.0.0.1:9999/realms/x"))
    assert loopback.oauth["corp"].issuer == "http://127.0.0.1:9999/realms/x"


@pytest.mark.parametrize(
    "issuer",
    [
        "http://idp.example.com",
        "https://idp.example.com/?tenant=1",
        "https://idp.example.com/#x",
        "idp.example.com",
        "ftp://idp.example.com",
    ],
)
def test_a_bad_issuer_is_named(issuer: str) -> None:
    message = refusal(**corp(oauth_corp_issuer=issuer))
    assert "AUTHDB_OAUTH_CORP_ISSUER" in message
    assert "corp-secret" not in message


@pytest.mark.parametrize("listed", ["Corp", "CORP", "1corp", "corp-x", "corp,corp", "a" * 33])
def test_provider_names_are_lower_case_words_listed_once(listed: str) -> None:
    message = refusal(oauth_providers=listed)
    assert "AUTHDB_OAUTH_PROVIDERS" in message


def test_scopes_of_an_oidc_provider_must_include_openid() -> None:
    assert "AUTHDB_OAUTH_CORP_SCOPES" in refusal(**corp(oauth_corp_scopes="email profile"))
    assert "AUTHDB_OAUTH_CORP_GITHUB_URL" in refusal(
        **corp(oauth_corp_github_url="https://github.example.com")
    )


def test_provider_variables_come_from_the_environment_and_env_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTHDB_OAUTH_PROVIDERS", "corp,github")
    monkeypatch.setenv("AUTHDB_OAUTH_CORP_CLIENT_ID", "from-env")
    monkeypatch.setenv("AUTHDB_OAUTH_CORP_CLIENT_SECRET", "env-secret")
    monkeypatch.setenv("AUTHDB_OAUTH_CORP_ISSUER", ISSUER)
    env_file = tmp_path / "provider.env"
    env_file.write_text(
        "AUTHDB_OAUTH_GITHUB_CLIENT_ID=gh-from-file\n"
        "AUTHDB_OAUTH_GITHUB_CLIENT_SECRET=gh-file-secret\n"
        "AUTHDB_OAUTH_CORP_CLIENT_ID=loses-to-env\n"
    )
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.oauth_providers == ["corp", "github"]
    assert settings.oauth["corp"].client_id == "from-env"
    assert settings.oauth["github"].client_id == "gh-from-file"
    assert settings.oauth["github"].client_secret.get_secret_value() == "gh-file-secret"
    # An argument wins over both.
    argued = Settings(_env_file=env_file, oauth_corp_client_id="argued")  # type: ignore[call-arg]
    assert argued.oauth["corp"].client_id == "argued"
    # The list itself from the .env file alone.
    for name in list(os.environ):
        if name.upper().startswith("AUTHDB_"):
            monkeypatch.delenv(name)
    only_file = tmp_path / "only.env"
    only_file.write_text(
        "AUTHDB_OAUTH_PROVIDERS=corp\n"
        "AUTHDB_OAUTH_CORP_CLIENT_ID=file-id\n"
        "AUTHDB_OAUTH_CORP_CLIENT_SECRET=file-secret\n"
        f"AUTHDB_OAUTH_CORP_ISSUER={ISSUER}\n"
    )
    from_file = Settings(_env_file=only_file)  # type: ignore[call-arg]
    assert from_file.oauth["corp"].client_id == "file-id"
    # The default .env of the working directory is read too.
    (tmp_path / ".env").write_text(only_file.read_text())
    assert Settings().oauth["corp"].client_id == "file-id"


def test_unknown_settings_knows_the_variables_of_listed_providers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTHDB_OAUTH_CORP_CLIENT_ID", "x")
    # corp not listed: its variable is unknown.
    flagged = [u.name for u in settings_env.unknown_settings(None)]
    assert "AUTHDB_OAUTH_CORP_CLIENT_ID" in flagged
    # Listed in the environment: known.
    monkeypatch.setenv("AUTHDB_OAUTH_PROVIDERS", "corp")
    flagged = [u.name for u in settings_env.unknown_settings(None)]
    assert "AUTHDB_OAUTH_CORP_CLIENT_ID" not in flagged
    # A misspelt suffix of a listed provider is still unknown.
    monkeypatch.setenv("AUTHDB_OAUTH_CORP_CLIENT_SECERT", "x")
    flagged = [u.name for u in settings_env.unknown_settings(None)]
    assert "AUTHDB_OAUTH_CORP_CLIENT_SECERT" in flagged
    # Listed in a .env file, with the provider's variables there too.
    monkeypatch.delenv("AUTHDB_OAUTH_PROVIDERS")
    monkeypatch.delenv("AUTHDB_OAUTH_CORP_CLIENT_SECERT")
    env_file = tmp_path / "x.env"
    env_file.write_text("AUTHDB_OAUTH_PROVIDERS=corp\nAUTHDB_OAUTH_CORP_ISSUER=https://i.example\n")
    assert [u.name for u in settings_env.unknown_settings(env_file)] == []
    env_file.write_text(
        "AUTHDB_OAUTH_PROVIDERS=github\nAUTHDB_OAUTH_CORP_ISSUER=https://i.example\n"
    )
    flagged = [u.name for u in settings_env.unknown_settings(env_file)]
    assert sorted(flagged) == ["AUTHDB_OAUTH_CORP_CLIENT_ID", "AUTHDB_OAUTH_CORP_ISSUER"]


def _config(*args: str, secret: str, tmp_path: Path) -> str:
    env = {f"AUTHDB_{name.upper()}": str(value) for name, value in FAST_HASHING.items()} | {
        "AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "AUTHDB_OAUTH_PROVIDERS": "corp",
        "AUTHDB_OAUTH_CORP_CLIENT_ID": "corp-client-id",
        "AUTHDB_OAUTH_CORP_CLIENT_SECRET": secret,
        "AUTHDB_OAUTH_CORP_ISSUER": ISSUER,
    }
    result = CliRunner().invoke(app, ["config", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_config_never_prints_a_client_secret(tmp_path: Path) -> None:
    secret = f"s3cret-{secrets.token_hex(8)}"
    text = _config(secret=secret, tmp_path=tmp_path)
    as_json = _config("--json", secret=secret, tmp_path=tmp_path)
    assert secret not in text + as_json
    assert "AUTHDB_OAUTH_PROVIDERS=corp  (source: environment)" in text.splitlines()
    assert json.loads(as_json)["AUTHDB_OAUTH_PROVIDERS"]["value"] == ["corp"]


def test_config_shows_each_providers_settings_with_the_secret_masked(tmp_path: Path) -> None:
    secret = f"s3cret-{secrets.token_hex(8)}"
    lines = _config(secret=secret, tmp_path=tmp_path).splitlines()
    assert "AUTHDB_OAUTH_CORP_CLIENT_ID=corp-client-id  (source: environment)" in lines
    assert "AUTHDB_OAUTH_CORP_CLIENT_SECRET=********  (source: environment)" in lines
    assert f"AUTHDB_OAUTH_CORP_ISSUER={ISSUER}  (source: environment)" in lines
    document = json.loads(_config("--json", secret=secret, tmp_path=tmp_path))
    assert document["AUTHDB_OAUTH_CORP_CLIENT_SECRET"]["value"] == "********"
    assert document["AUTHDB_OAUTH_CORP_CLIENT_ID"]["value"] == "corp-client-id"
