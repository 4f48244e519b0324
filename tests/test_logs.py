"""Log lines: one per record, text or JSON, security events once committed, never a secret."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import httpx
import pyotp
import pytest
from sqlalchemy import select

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.models import User
from authdb.logs import JsonFormatter, RedactQuery, TextFormatter, redact_query
from authdb.services import audit
from authdb.services.core import ClientInfo
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.test_serve import serving

NEW_PASSWORD = "another long passphrase 42"


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "authdb.audit", "levelname": "INFO", "msg": message})
    record.args = args or None
    record.__dict__.update(extra)
    return record


def test_text_lines_escape_what_a_client_could_use_to_forge_a_line() -> None:
    line = TextFormatter().format(_record("login_ok ua=%s", '"x\nFAKE login_ok\x1b[2J"'))
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith('INFO authdb.audit: login_ok ua="x\\nFAKE login_ok\\x1b[2J"')


def test_a_traceback_stays_in_its_record() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = __import__("sys").exc_info()
    text = TextFormatter().format(record)
    assert "\n" not in text and "ValueError: boom" in text
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


def test_json_lines_carry_the_callers_fields() -> None:
    line = JsonFormatter().format(_record("login_ok user=%s", 3, event="login_ok", user_id=3))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "login_ok user=3"
    assert entry["event"] == "login_ok" and entry["user_id"] == 3
    assert entry["level"] == "INFO" and entry["logger"] == "authdb.audit"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/verify?token=abc.def", "/verify?token=[redacted]"),
        ("/reset-password?token=x&next=%2F", "/reset-password?token=[redacted]&next=[redacted]"),
        ("/users/me", "/users/me"),
        ("/token?SECRETBARE&a=1", "/token?[redacted]&a=[redacted]"),
        ("/login?", "/login?"),
    ],
)
def test_access_lines_never_show_query_values(path: str, shown: str) -> None:
    assert redact_query(path) == shown
    record = _record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", path, "1.1", 200)
    assert RedactQuery().filter(record)
    assert record.getMessage() == f'127.0.0.1:5 - "GET {shown} HTTP/1.1" 200'


async def test_committed_events_reach_subscribers_and_the_log(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[audit.SecurityEvent] = []
    unsubscribe = audit.subscribe(seen.append)
    try:
        await harness.create_user()
        caplog.set_level(logging.INFO, logger="authdb.audit")
        await harness.client.post(
            "/token",
            data={"username": "alice", "password": PASSWORD},
            headers={"User-Agent": "tester\nforged"},
        )
    finally:
        unsubscribe()
    ok = [event for event in seen if event.name == "login_ok"]
    # ClientInfo has already replaced the line break; the formatter escapes anything else.
    assert len(ok) == 1 and ok[0].user_agent is not None
    assert ok[0].user_agent.startswith("tester") and "\n" not in ok[0].user_agent
    lines = [r for r in caplog.records if r.name == "authdb.audit"]
    login = [r for r in lines if r.__dict__.get("event") == "login_ok"]
    assert len(login) == 1 and login[0].__dict__["user_id"] == ok[0].user_id
    assert "\n" not in TextFormatter().format(login[0])


async def test_a_rolled_back_event_is_announced_to_nobody(harness: Harness) -> None:
    seen: list[audit.SecurityEvent] = []
    unsubscribe = audit.subscribe(seen.append)
    try:
        async with harness.auth.core.sessionmaker() as db:
            audit.record(db, "rolled_back", client=ClientInfo(), now=harness.auth.core.clock())
            await db.flush()
            await db.rollback()
            audit.record(db, "committed", client=ClientInfo(), now=harness.auth.core.clock())
            await db.commit()
    finally:
        unsubscribe()
    assert [event.name for event in seen] == ["committed"]


async def test_a_failing_subscriber_changes_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_event: audit.SecurityEvent) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = audit.subscribe(broken)
    try:
        await harness.create_user()
        response = await harness.client.post(
            "/token", data={"username": "alice", "password": PASSWORD}
        )
    finally:
        unsubscribe()
    assert response.status_code == 200
    assert any("subscriber bug" in str(r.exc_info) for r in caplog.records if r.exc_info)
    async with harness.auth.core.sessionmaker() as db:
        assert await db.scalar(select(User.username)) == "alice"


# --- a real server's log, after every flow that hands out a secret --------------------------


def _wait_for_mail(mailbox: Mailbox, to: str, count: int) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if len(mailbox.to(to)) >= count:
            part = mailbox.to(to)[count - 1].get_body(("plain",))
            assert part is not None
            return str(part.get_content())
        time.sleep(0.05)
    raise AssertionError(f"no mail number {count} to {to}")


def _token_in(text: str) -> str:
    found = re.search(r"\?token=([A-Za-z0-9._~-]+)", text)
    assert found is not None, text
    return found.group(1)


def _exercise(base: str, mailbox: Mailbox) -> list[str]:
    """Register, verify, sign in, refresh, set up MFA, sign in with it, reset the password,
    and fail a few times on the way; return every secret the server handed out or took."""
    secrets = [PASSWORD, NEW_PASSWORD, "wrong horse battery staple", "forged-token-0123456789"]
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.post(
            "/register",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        ).is_success
        verify = _token_in(_wait_for_mail(mailbox, "alice@example.com", 1))
        assert http.get("/verify", params={"token": verify}).status_code == 200  # the page
        assert http.post("/verify", json={"token": verify}).status_code == 200
        assert http.post("/verify", json={"token": secrets[3]}).status_code == 400
        assert (
            http.post("/token", data={"username": "alice", "password": secrets[2]}).status_code
            == 401
        )
        tokens = http.post("/token", data={"username": "alice", "password": PASSWORD}).json()
        refreshed = http.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        ).json()
        headers = {"Authorization": f"Bearer {refreshed['access_token']}"}
        setup = http.post("/users/me/mfa/totp/setup", json={"password": PASSWORD}, headers=headers)
        secret = setup.json()["secret"]
        first = pyotp.TOTP(secret).now()
        confirm = http.post("/users/me/mfa/totp/confirm", json={"code": first}, headers=headers)
        codes = confirm.json()["recovery_codes"]
        step = http.post("/token", data={"username": "alice", "password": PASSWORD}).json()
        finish = {
            "grant_type": "urn:authdb:params:oauth:grant-type:mfa",
            "mfa_token": step["mfa_token"],
        }
        mfa_tokens = http.post("/token", data={**finish, "recovery_code": codes[0]}).json()
        assert "access_token" in mfa_tokens, mfa_tokens
        sent = len(mailbox.to("alice@example.com"))
        assert http.post("/password/forgot", json={"email": "alice@example.com"}).status_code == 202
        reset = _token_in(_wait_for_mail(mailbox, "alice@example.com", sent + 1))
        assert http.get("/reset-password", params={"token": reset}).status_code == 200
        assert (
            http.post(
                "/password/reset", json={"token": reset, "password": NEW_PASSWORD}
            ).status_code
            == 204
        )
        secrets += [verify, reset, secret, setup.json()["otpauth_uri"], step["mfa_token"], *codes]
        for pair in (tokens, refreshed, mfa_tokens):
            secrets += [pair["access_token"], pair["refresh_token"]]
    return secrets


async def test_a_servers_json_log_has_one_object_a_line_and_no_secret(
    tmp_path: Path, smtp_server: tuple[int, Mailbox], database_url: str
) -> None:
    port, mailbox = smtp_server
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)  # `authdb migrate`: serve refuses an empty PostgreSQL
    finally:
        await engine.dispose()
    env = {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": "log-test-secret-key-that-is-long-enough-0123456789",
        "AUTHDB_SMTP_HOST": "127.0.0.1",
        "AUTHDB_SMTP_PORT": str(port),
        "AUTHDB_LOG_FORMAT": "json",
    }
    with serving(tmp_path, env, "--access-log") as base:
        secrets = _exercise(base, mailbox)
    log = next(tmp_path.glob("serve-*.log")).read_text()
    entries = [json.loads(line) for line in log.splitlines()]  # every line is one object
    events = [entry.get("event") for entry in entries if entry["logger"] == "authdb.audit"]
    for name in ("registered", "email_verified", "login_failed", "login_ok", "password_reset"):
        assert name in events
    assert any(entry["logger"] == "uvicorn.access" for entry in entries)
    assert not [secret for secret in secrets if secret in log]
    # The secret key never shows either, nor the password hashes' salt-free parts.
    assert env["AUTHDB_SECRET_KEY"] not in log and "$argon2" not in log


async def test_events_of_a_session_closed_without_commit_are_forgotten(harness: Harness) -> None:
    seen: list[audit.SecurityEvent] = []
    unsubscribe = audit.subscribe(seen.append)
    try:
        async with harness.auth.core.sessionmaker() as db:
            audit.record(db, "abandoned", client=ClientInfo(), now=harness.auth.core.clock())
            await db.close()
            # The same Session object, used again after close: nothing left over from before.
            audit.record(db, "after_close", client=ClientInfo(), now=harness.auth.core.clock())
            await db.commit()
    finally:
        unsubscribe()
    assert [event.name for event in seen] == ["after_close"]


def test_the_development_mail_keeps_its_lines_in_text_and_one_line_in_json() -> None:
    record = _record("email:\nTo: a@example.com\n\nhttp://x/verify?token=t\x1b[2J\n")
    record.authdb_verbatim = True
    text = TextFormatter().format(record)
    assert "\nhttp://x/verify?token=t\\x1b[2J\n" in text  # lines kept, escapes still escaped
    line = JsonFormatter().format(record)
    assert "\n" not in line and "authdb_verbatim" not in line
