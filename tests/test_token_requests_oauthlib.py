"""requests-oauthlib against the real ``authdb serve``: the password grant as its users call it.

``OAuth2Session(client=LegacyApplicationClient(...))`` talks HTTP to a real server, so one
``authdb serve`` (SQLite) is started for the whole module. Every failure must raise the
oauthlib error that names it, never come back as a token.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oauthlib.oauth2 import (
    BackendApplicationClient,
    InvalidGrantError,
    LegacyApplicationClient,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from requests_oauthlib import OAuth2Session

from tests.cli import run_cli
from tests.conftest import PASSWORD
from tests.test_serve import serving

CLIENT_ID = "my-app"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `authdb serve` for the module, with users alice, locky and a disabled dora."""
    directory = tmp_path_factory.mktemp("oauthlib")
    env = {
        "AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'authdb.db'}",
        "AUTHDB_SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256-0123456789",
        "AUTHDB_LOGIN_MAX_FAILURES": "2",
        "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": "1000/minute",
        "AUTHDB_REFRESH_REUSE_INTERVAL_SECONDS": "0",
    }
    migrated = run_cli(["migrate"], env=env, cwd=directory)  # only serve/migrate create it
    assert migrated.returncode == 0, migrated.stderr
    for name in ("alice", "locky", "dora"):
        created = run_cli(
            [
                "createuser",
                "--username",
                name,
                "--email",
                f"{name}@example.com",
                "--password-stdin",
            ],
            env=env,
            stdin=PASSWORD + "\n",
            cwd=directory,
        )
        assert created.returncode == 0, created.stderr
    disabled = run_cli(["users", "disable", "dora"], env=env, cwd=directory)
    assert disabled.returncode == 0, disabled.stderr
    with serving(directory, env) as base:
        yield base


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> OAuth2Session:
    # oauthlib refuses plain http unless told this is a test on loopback.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    return OAuth2Session(client=LegacyApplicationClient(client_id=CLIENT_ID))


def test_password_grant_then_refresh(server: str, session: OAuth2Session) -> None:
    token = session.fetch_token(f"{server}/token", username="alice", password=PASSWORD)
    assert token["token_type"] == "bearer"
    me = session.get(f"{server}/users/me")
    assert me.status_code == 200
    assert me.json()["username"] == "alice"
    refreshed = session.refresh_token(f"{server}/token", refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert session.get(f"{server}/users/me").status_code == 200


def test_wrong_password_raises_invalid_grant(server: str, session: OAuth2Session) -> None:
    with pytest.raises(InvalidGrantError) as failed:
        session.fetch_token(f"{server}/token", username="alice", password="wrong password")
    assert failed.value.description == "Incorrect username or password"
    assert not session.authorized


def test_bad_and_reused_refresh_tokens_raise_invalid_grant(
    server: str, session: OAuth2Session
) -> None:
    with pytest.raises(InvalidGrantError):
        session.refresh_token(f"{server}/token", refresh_token="not-a-refresh-token")
    token = session.fetch_token(f"{server}/token", username="alice", password=PASSWORD)
    session.refresh_token(f"{server}/token", refresh_token=token["refresh_token"])
    with pytest.raises(InvalidGrantError):
        session.refresh_token(f"{server}/token", refresh_token=token["refresh_token"])


def test_locked_account_raises_invalid_grant(server: str, session: OAuth2Session) -> None:
    for _ in range(2):
        with pytest.raises(InvalidGrantError):
            session.fetch_token(f"{server}/token", username="locky", password="wrong password")
    with pytest.raises(InvalidGrantError) as locked:
        session.fetch_token(f"{server}/token", username="locky", password=PASSWORD)
    assert locked.value.description == "Too many requests"


def test_inactive_user_raises_invalid_grant(server: str, session: OAuth2Session) -> None:
    with pytest.raises(InvalidGrantError) as failed:
        session.fetch_token(f"{server}/token", username="dora", password=PASSWORD)
    assert failed.value.description == "Inactive user"


def test_empty_password_raises_invalid_request(server: str, session: OAuth2Session) -> None:
    # oauthlib raises the first of its classes named invalid_request (InvalidClientIdError).
    with pytest.raises(OAuth2Error) as failed:
        session.fetch_token(f"{server}/token", username="alice", password="")
    assert failed.value.error == "invalid_request"
    assert failed.value.description == "password: Field required"


def test_client_credentials_grant_raises_unsupported_grant_type(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    machine = OAuth2Session(client=BackendApplicationClient(client_id=CLIENT_ID))
    with pytest.raises(UnsupportedGrantTypeError):
        machine.fetch_token(f"{server}/token", client_secret="anything")
