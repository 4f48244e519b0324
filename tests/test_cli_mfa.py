"""`authdb users reset-mfa` and `users list`, and the MFA settings (`AUTHDB_MFA_ISSUER`,
`AUTHDB_SECRET_KEY_FALLBACKS`) as the CLI and the app read them.

MFA is turned on through the HTTP API of an in-process app on the same database (fast); the
commands under test run through Typer's runner (``tests.cli.invoke_cli``), with the test's SMTP
server for the notices; the one that reads a ``.env`` runs the real console script in its folder.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from authdb import Settings
from authdb.services.audit import list_events
from tests.cli import invoke_cli, run_cli
from tests.conftest import PASSWORD, Harness, Mailbox

MakeHarness = Callable[..., Awaitable[Harness]]
MFA_OFF_SUBJECT = (
    "Two-factor authentication is now off for your account (reset by an administrator)"
)


def _env(harness: Harness, smtp_port: int) -> dict[str, str]:
    """The AUTHDB_* variables of the harness's own settings: same database, key and SMTP."""
    settings = harness.auth.settings
    assert settings.secret_key is not None
    return {
        "AUTHDB_DATABASE_URL": settings.database_url,
        "AUTHDB_SECRET_KEY": settings.secret_key.get_secret_value(),
        "AUTHDB_SMTP_HOST": "127.0.0.1",
        "AUTHDB_SMTP_PORT": str(smtp_port),
        "AUTHDB_MAIL_FROM": settings.mail_from,
    }


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def _enable_mfa(harness: Harness, username: str) -> str:
    """TOTP set up and confirmed through the API at a frozen instant; returns the secret."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    harness.auth.core.clock = lambda: now
    headers = await harness.bearer(username)
    setup = await harness.client.post(
        "/users/me/mfa/totp/setup", json={"password": PASSWORD}, headers=headers
    )
    assert setup.status_code == 200, setup.text
    secret = str(setup.json()["secret"])
    confirm = await harness.client.post(
        "/users/me/mfa/totp/confirm", json={"code": pyotp.TOTP(secret).at(now)}, headers=headers
    )
    assert confirm.status_code == 200, confirm.text
    return secret


async def _mfa_rows(harness: Harness, user_id: int) -> list[int]:
    """How many rows the user has in each MFA table."""
    counts = []
    async with harness.auth.core.engine.connect() as connection:
        for query in (
            "SELECT count(*) FROM mfa_totp WHERE user_id = :id",
            "SELECT count(*) FROM mfa_recovery_codes WHERE user_id = :id",
            "SELECT count(*) FROM mfa_challenges WHERE user_id = :id",
        ):
            counts.append(int(await connection.scalar(text(query), {"id": user_id}) or 0))
    return counts


async def test_reset_mfa_turns_it_off_mails_the_user_and_is_audited(
    make_harness: MakeHarness, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    harness = await make_harness()
    alice = await harness.create_user("alice")
    await _enable_mfa(harness, "alice")
    await mailbox.wait_for(1)  # the "MFA is on" notice
    challenge = await harness.client.post(
        "/token", data={"username": "alice", "password": PASSWORD}
    )
    assert challenge.status_code == 403  # an open challenge, which the reset must end too
    assert await _mfa_rows(harness, alice.id) == [1, 10, 1]

    output = _ok(invoke_cli(["users", "reset-mfa", "alice"], env=_env(harness, port)))
    assert output.strip() == f"turned off two-factor authentication for alice (id {alice.id})"

    assert await _mfa_rows(harness, alice.id) == [0, 0, 0]
    stale = await harness.client.post(
        "/token",
        data={
            "grant_type": "urn:authdb:params:oauth:grant-type:mfa",
            "mfa_token": challenge.json()["mfa_token"],
            "recovery_code": "0000-0000-0000",
        },
    )
    assert stale.status_code == 401
    assert stale.json()["detail"] == "Invalid or expired MFA token"
    tokens = await harness.login("alice")  # the password alone signs in again
    me = await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.json()["mfa_enabled"] is False

    messages = await mailbox.wait_for(2)
    off = messages[1]
    assert str(off["To"]) == "alice@example.com"
    assert off["Subject"] == MFA_OFF_SUBJECT
    assert "alice" in off.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    (event,) = [e for e in await list_events(harness.auth.core) if e.event == "mfa_reset"]
    assert event.user_id == alice.id
    assert event.user_agent == "authdb-cli" and event.actor_id is None
    assert event.detail == {"was_on": True}


async def test_reset_mfa_without_mfa_changes_nothing(
    make_harness: MakeHarness, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    harness = await make_harness()
    bob = await harness.create_user("bob")
    result = invoke_cli(["users", "reset-mfa", "bob@example.com"], env=_env(harness, port))
    assert _ok(result).strip() == (
        f"bob (id {bob.id}) had no two-factor authentication; nothing changed"
    )
    assert result.stderr == ""
    # A notice goes out only when something was turned off.
    await harness.login("bob")
    assert mailbox.messages == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_reset_mfa_of_an_unknown_user_is_a_one_line_error(
    make_harness: MakeHarness, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    harness = await make_harness()
    alice = await harness.create_user("alice")
    await _enable_mfa(harness, "alice")
    await mailbox.wait_for(1)
    for ref in ("nobody", "id:999"):
        line = _one_line_error(invoke_cli(["users", "reset-mfa", ref], env=_env(harness, port)))
        assert line == f"error: no user {ref!r}"
    bad = _one_line_error(invoke_cli(["users", "reset-mfa", "id:x"], env=_env(harness, port)))
    assert bad == "error: not a user id: 'id:x'"
    # Nobody's MFA was touched, nobody was mailed.
    assert await _mfa_rows(harness, alice.id) == [1, 10, 0]
    password = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert password.status_code == 403
    assert len(mailbox.messages) == 1


def _flags(env: dict[str, str]) -> dict[str, str]:
    """``authdb users list``: username -> flags column (the header row included)."""
    lines = _ok(invoke_cli(["users", "list"], env=env)).splitlines()
    return {line.split()[1]: line.split()[-1] for line in lines}


async def test_users_list_and_show_name_the_mfa_flag(
    make_harness: MakeHarness, smtp_server: tuple[int, Mailbox]
) -> None:
    port, _ = smtp_server
    harness = await make_harness()
    await harness.create_user("root", is_superuser=True)
    await harness.create_user("alice")
    await harness.create_user("bob")
    await _enable_mfa(harness, "alice")
    await _enable_mfa(harness, "root")
    env = _env(harness, port)
    assert _flags(env) == {"USERNAME": "FLAGS", "root": "superuser,mfa", "alice": "mfa", "bob": "-"}
    listed = json.loads(_ok(invoke_cli(["users", "list", "--json"], env=env)))
    assert {u["username"]: u["mfa_enabled"] for u in listed} == {
        "root": True,
        "alice": True,
        "bob": False,
    }
    shown = _ok(invoke_cli(["users", "show", "alice"], env=env)).splitlines()
    assert "mfa_enabled: true" in shown


# --- settings ------------------------------------------------------------------------------------


UNUSABLE_ISSUERS = [
    ("", "at least 1 character"),
    ("   ", "must not be blank"),
    ("Acme\x07", "control character"),
    ("Acme\x1b[31m", "control character"),
    ("Acme\u202eX", "control character"),
    ("Acme\u0085", "control character"),
]


@pytest.mark.parametrize(
    ("value", "reason"), UNUSABLE_ISSUERS, ids=["empty", "blank", "bell", "escape", "bidi", "nel"]
)
def test_an_unusable_mfa_issuer_is_refused_naming_the_setting(value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, mfa_issuer=value)  # type: ignore[call-arg]
    errors = refused.value.errors()
    assert [error["loc"] for error in errors] == [("mfa_issuer",)]
    assert reason in errors[0]["msg"]


@pytest.mark.parametrize(("value", "reason"), [UNUSABLE_ISSUERS[1], UNUSABLE_ISSUERS[4]])
def test_the_cli_refuses_an_unusable_mfa_issuer_in_one_line(
    tmp_path: Path, value: str, reason: str
) -> None:
    result = run_cli(["users", "list"], env={"AUTHDB_MFA_ISSUER": value}, cwd=tmp_path)
    line = _one_line_error(result)
    assert line.startswith("error: invalid settings: AUTHDB_MFA_ISSUER: "), line
    assert reason in line
    assert not (tmp_path / "authdb.db").exists()  # refused before anything was touched


def test_the_mfa_issuer_is_trimmed_and_has_a_default() -> None:
    assert Settings(_env_file=None).mfa_issuer == "authdb"  # type: ignore[call-arg]
    trimmed = Settings(_env_file=None, mfa_issuer="  Acme Inc. ")  # type: ignore[call-arg]
    assert trimmed.mfa_issuer == "Acme Inc."
    with pytest.raises(ValidationError):
        Settings(_env_file=None, mfa_issuer="x" * 65)  # type: ignore[call-arg]


def test_secret_key_fallbacks_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = "first-old-key-0123456789abcdefghijkl", "second-old-key-0123456789abcdefghijk"
    monkeypatch.setenv("AUTHDB_SECRET_KEY_FALLBACKS", f" {first} ,{second},, ")
    parsed = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [key.get_secret_value() for key in parsed.secret_key_fallbacks] == [first, second]
    assert first not in repr(parsed) and first not in str(parsed.model_dump())
    monkeypatch.setenv("AUTHDB_SECRET_KEY_FALLBACKS", "")
    assert Settings(_env_file=None).secret_key_fallbacks == []  # type: ignore[call-arg]


async def test_the_cli_takes_a_comma_separated_fallback_list(
    make_harness: MakeHarness, smtp_server: tuple[int, Mailbox]
) -> None:
    # A list setting read from the environment is JSON to pydantic-settings unless told
    # otherwise: "a,b" must not be refused as invalid JSON. Under a new key with the old one as
    # a fallback, the commands run and see the user's MFA.
    port, _ = smtp_server
    harness = await make_harness()
    await harness.create_user("alice")
    await _enable_mfa(harness, "alice")
    env = _env(harness, port)
    old = env["AUTHDB_SECRET_KEY"]
    env["AUTHDB_SECRET_KEY"] = "a-brand-new-secret-key-0123456789-abcdefgh"
    env["AUTHDB_SECRET_KEY_FALLBACKS"] = f"another-old-key-0123456789abcdef,{old}"
    assert _flags(env)["alice"] == "mfa"
