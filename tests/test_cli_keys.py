"""`authdb keys list|rotate|retire` through the real console script, on both databases.

The database is migrated in-process (fast); every command under test runs as a subprocess with
only its AUTHDB_* variables, as an operator would run it.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.models import AuditEvent
from tests.cli import run_cli

SECRET = "cli-keys-test-secret-key-0123456789-abcdef"
KID = re.compile(r"[A-Za-z0-9_-]{43}")  # an RFC 7638 SHA-256 thumbprint, base64url
# With these settings a replaced key verifies for 15 min + 5 s + 1 min of clock skew.
ACCESS_MINUTES, REFRESH_SECONDS = 15, 5
WINDOW = timedelta(minutes=ACCESS_MINUTES, seconds=REFRESH_SECONDS + 60)


@pytest.fixture
async def env(database_url: str) -> dict[str, str]:
    """ES256 settings on a migrated, keyless database."""
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": SECRET,
        "AUTHDB_JWT_ALGORITHM": "ES256",
        "AUTHDB_ACCESS_TOKEN_EXPIRE_MINUTES": str(ACCESS_MINUTES),
        "AUTHDB_JWT_KEYS_REFRESH_SECONDS": str(REFRESH_SECONDS),
    }


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    return result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _keys(env: dict[str, str], **extra: str) -> list[dict[str, Any]]:
    rows = json.loads(_ok(run_cli(["keys", "list", "--json"], env={**env, **extra})))
    assert isinstance(rows, list)
    return rows


def _text_rows(env: dict[str, str], **extra: str) -> list[list[str]]:
    """``keys list`` as columns: kid, algorithm, created, state."""
    lines = _ok(run_cli(["keys", "list"], env={**env, **extra})).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kid"))
    assert lines[header].split() == ["kid", "algorithm", "created", "state"]
    return [line.split(maxsplit=3) for line in lines[header + 1 :]]


def _moment(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def _rotate(env: dict[str, str], **extra: str) -> str:
    out = _ok(run_cli(["keys", "rotate"], env={**env, **extra}))
    match = re.fullmatch(r"new current signing key (\S+)\n", out)
    assert match, out
    assert KID.fullmatch(match.group(1))
    return match.group(1)


async def _audit(database_url: str) -> list[tuple[str, dict[str, Any]]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(AuditEvent.event, AuditEvent.detail)
                    .where(AuditEvent.event.like("signing_key_%"))
                    .order_by(AuditEvent.id)
                )
            ).all()
    finally:
        await engine.dispose()
    return [(row.event, row.detail or {}) for row in rows]


async def test_list_before_and_after_the_first_key(env: dict[str, str]) -> None:
    """`list` on a keyless database says so and makes no key; after `rotate` made the first
    key it shows it, as text and as JSON."""
    assert _ok(run_cli(["keys", "list"], env=env)) == "no signing keys\n"
    assert _keys(env) == [], "listing (or any CLI start) makes no key"

    kid = _rotate(env)
    rows = _keys(env)
    assert len(rows) == 1
    (row,) = rows
    assert set(row) == {"kid", "algorithm", "created_at", "state", "until"}
    assert row["kid"] == kid
    assert row["algorithm"] == "ES256"
    assert row["state"] == "current" and row["until"] is None
    _moment(row["created_at"])

    assert _text_rows(env) == [[kid, "ES256", row["created_at"], "current"]]
    assert _keys(env) == rows, "listing changes nothing"


def _first_key(env: dict[str, str]) -> dict[str, Any]:
    """Make the deployment's first key with `rotate`; its `list --json` row."""
    kid = _rotate(env)
    (row,) = _keys(env)
    assert row["kid"] == kid
    return row


async def test_rotate_makes_a_new_current_key(env: dict[str, str]) -> None:
    """`rotate` prints the new kid; the old key is retiring until its tokens' window ends."""
    first = _first_key(env)
    second = _rotate(env)
    assert second != first["kid"]
    rows = _keys(env)
    assert [(row["kid"], row["state"]) for row in rows] == [
        (second, "current"),
        (first["kid"], "retiring"),
    ]
    assert rows[0]["until"] is None
    # The old key stops signing when the new one is made, and verifies one window longer.
    assert _moment(rows[1]["until"]) - _moment(rows[0]["created_at"]) == WINDOW
    assert _text_rows(env) == [
        [second, "ES256", rows[0]["created_at"], "current"],
        [
            first["kid"],
            "ES256",
            first["created_at"],
            f"retiring (verifies until {rows[1]['until']})",
        ],
    ]

    third = _rotate(env)
    assert [(row["kid"], row["state"]) for row in _keys(env)] == [
        (third, "current"),
        (second, "retiring"),
        (first["kid"], "retiring"),
    ]
    events = await _audit(env["AUTHDB_DATABASE_URL"])
    assert [(event, detail.get("kid"), detail.get("previous")) for event, detail in events] == [
        ("signing_key_rotated", first["kid"], None),
        ("signing_key_rotated", second, first["kid"]),
        ("signing_key_rotated", third, second),
    ]


async def test_retire_ends_a_key_and_replaces_the_current_one(env: dict[str, str]) -> None:
    """Retiring a replaced key only ends it; retiring the current key also makes a new one.
    A retired or unknown kid is a one-line error with exit status 1."""
    first = _first_key(env)
    second = _rotate(env)

    assert _ok(run_cli(["keys", "retire", first["kid"]], env=env)) == f"retired {first['kid']}\n"
    rows = _keys(env)
    assert [(row["kid"], row["state"]) for row in rows] == [
        (second, "current"),
        (first["kid"], "retired"),
    ]
    assert _moment(rows[1]["until"]) >= _moment(rows[0]["created_at"])
    expected = [first["kid"], "ES256", first["created_at"], f"retired {rows[1]['until']}"]
    assert _text_rows(env)[1] == expected

    out = _ok(run_cli(["keys", "retire", second], env=env))
    match = re.fullmatch(rf"retired {re.escape(second)}; new current signing key (\S+)\n", out)
    assert match, out
    third = match.group(1)
    assert [(row["kid"], row["state"]) for row in _keys(env)] == [
        (third, "current"),
        (second, "retired"),
        (first["kid"], "retired"),
    ]

    again = _one_line_error(run_cli(["keys", "retire", first["kid"]], env=env))
    assert again == f"error: signing key {first['kid']!r} is already retired"
    unknown = _one_line_error(run_cli(["keys", "retire", "no-such-kid"], env=env))
    assert unknown == "error: no signing key 'no-such-kid' in use"
    # The failures changed nothing.
    assert [row["state"] for row in _keys(env)] == ["current", "retired", "retired"]

    events = [
        (event, detail.get("kid")) for event, detail in await _audit(env["AUTHDB_DATABASE_URL"])
    ]
    assert ("signing_key_retired", first["kid"]) in events
    assert ("signing_key_retired", second) in events
    assert ("signing_key_rotated", third) in events
    assert [event for event, _ in events].count("signing_key_retired") == 2


async def test_under_hs256_there_is_nothing_to_rotate(env: dict[str, str]) -> None:
    """With the default HMAC algorithm `rotate` refuses in one line naming the setting, and
    `list` says the secret key signs; keys left from an earlier setting are still listed."""
    hs256 = {"AUTHDB_JWT_ALGORITHM": "HS256"}
    line = _one_line_error(run_cli(["keys", "rotate"], env={**env, **hs256}))
    assert "AUTHDB_JWT_ALGORITHM" in line and "HS256" in line
    assert _ok(run_cli(["keys", "list"], env={**env, **hs256})).splitlines() == [
        "AUTHDB_JWT_ALGORITHM is HS256: tokens are signed with the secret key",
        "no signing keys",
    ]
    assert _keys(env, **hs256) == []

    old, newer = _rotate(env), _rotate(env)  # keys made under ES256 earlier
    lines = _ok(run_cli(["keys", "list"], env={**env, **hs256})).splitlines()
    assert lines[0] == "AUTHDB_JWT_ALGORITHM is HS256: tokens are signed with the secret key"
    assert [line.split()[0] for line in lines[2:]] == [newer, old]
    # They can still be retired (a leaked key must be endable whatever the setting): a
    # replaced one simply ends; the current one gets a successor of its own algorithm.
    assert _ok(run_cli(["keys", "retire", old], env={**env, **hs256})) == f"retired {old}\n"
    out = _ok(run_cli(["keys", "retire", newer], env={**env, **hs256}))
    match = re.fullmatch(rf"retired {re.escape(newer)}; new current signing key (\S+)\n", out)
    assert match, out
    rows = _keys(env, **hs256)
    assert [(row["kid"], row["algorithm"], row["state"]) for row in rows] == [
        (match.group(1), "ES256", "current"),
        (newer, "ES256", "retired"),
        (old, "ES256", "retired"),
    ]


async def test_each_algorithm_gets_its_own_key(env: dict[str, str]) -> None:
    """`rotate` makes a key of the configured AUTHDB_JWT_ALGORITHM; the algorithm column
    says which, and the replaced keys of other algorithms keep their own."""
    es256 = _rotate(env)
    eddsa = _rotate(env, AUTHDB_JWT_ALGORITHM="EdDSA")
    rsa = _rotate(env, AUTHDB_JWT_ALGORITHM="RS256")
    rows = _keys(env, AUTHDB_JWT_ALGORITHM="RS256")
    assert [(row["kid"], row["algorithm"], row["state"]) for row in rows] == [
        (rsa, "RS256", "current"),
        (eddsa, "EdDSA", "retiring"),
        (es256, "ES256", "retiring"),
    ]
    assert [row[:2] for row in _text_rows(env)] == [
        [rsa, "RS256"],
        [eddsa, "EdDSA"],
        [es256, "ES256"],
    ]


async def test_another_secret_key_cannot_make_keys(env: dict[str, str]) -> None:
    """A shell with another AUTHDB_SECRET_KEY than the deployment's would make a key the
    running processes cannot open: `rotate`, and `retire` of the current key (which makes a
    successor), refuse in one line naming AUTHDB_SECRET_KEY and change nothing."""
    first, current = _rotate(env), _rotate(env)
    before = _keys(env)
    stranger = {"AUTHDB_SECRET_KEY": "another-deployment-secret-0123456789-abcdef"}
    for args in (["keys", "rotate"], ["keys", "retire", current]):
        line = _one_line_error(run_cli(args, env={**env, **stranger}))
        assert "AUTHDB_SECRET_KEY" in line, (args, line)
        assert _keys(env) == before, f"{args} changed the keys"
    # Retiring a replaced key makes nothing, so it needs no secret of the deployment's.
    assert _ok(run_cli(["keys", "retire", first], env={**env, **stranger})) == f"retired {first}\n"


def test_keys_help_names_the_commands() -> None:
    """`authdb keys --help` lists list, rotate and retire; `retire` needs a KID."""
    result = run_cli(["keys", "--help"], env={})
    assert result.returncode == 0, result.stderr
    for command in ("list", "rotate", "retire"):
        assert re.search(rf"\b{command}\b", result.stdout)
    missing = run_cli(["keys", "retire"], env={})
    assert missing.returncode == 2
    assert "Missing argument" in missing.stderr and "Traceback" not in missing.stderr
