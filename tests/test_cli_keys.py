"""`authdb keys list|rotate|retire`, on both databases.

The database is migrated in-process (fast); every command under test runs through Typer's
runner with only its AUTHDB_* variables, as an operator would run it (``tests.cli.invoke_cli``:
the command's code without an interpreter's start-up; ``tests/test_cli.py`` runs the real
console script).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from authdb import Auth, Settings
from authdb.db import migrate
from authdb.db.engine import create_engine
from authdb.db.models import AuditEvent
from tests.cli import invoke_cli
from tests.conftest import PASSWORD

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
    rows = json.loads(_ok(invoke_cli(["keys", "list", "--json"], env={**env, **extra})))
    assert isinstance(rows, list)
    return rows


def _text_rows(env: dict[str, str], **extra: str) -> list[list[str]]:
    """``keys list`` as columns: kid, algorithm, created, state."""
    lines = _ok(invoke_cli(["keys", "list"], env={**env, **extra})).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kid"))
    assert lines[header].split() == ["kid", "algorithm", "created", "state"]
    return [line.split(maxsplit=3) for line in lines[header + 1 :]]


def _moment(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def _rotate(env: dict[str, str], **extra: str) -> str:
    """`keys rotate`; the kid it printed, checked against the algorithm configured."""
    merged = {**env, **extra}
    out = _ok(invoke_cli(["keys", "rotate"], env=merged))
    algorithm = re.escape(merged["AUTHDB_JWT_ALGORITHM"])
    match = re.fullmatch(rf"new current signing key (\S+) \({algorithm}\)\n", out)
    assert match, out
    assert KID.fullmatch(match.group(1))
    return match.group(1)


def _states(env: dict[str, str], **extra: str) -> list[tuple[str, str]]:
    """``(kid, state)`` of every key, newest first."""
    return [(row["kid"], row["state"]) for row in _keys(env, **extra)]


def _next(env: dict[str, str]) -> str:
    (kid,) = [kid for kid, state in _states(env) if state == "next"]
    return kid


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
    """`list` on a keyless database says so and makes no key, nor does any other command
    (createuser here); `rotate` makes the first current key and publishes a next key, and
    `list` shows both, as text and as JSON."""
    assert _ok(invoke_cli(["keys", "list"], env=env)) == "no signing keys\n"
    assert _keys(env) == [], "listing (or any CLI start) makes no key"
    _ok(
        invoke_cli(
            ["createuser", "--username", "alice", "--email", "a@x.example", "--password-stdin"],
            env=env,
            stdin=PASSWORD + "\n",
        )
    )
    assert _keys(env) == [], "a command other than rotate and retire makes no key"

    kid = _rotate(env)
    rows = _keys(env)
    assert len(rows) == 2
    upcoming, current = rows
    for row in rows:
        assert set(row) == {"kid", "algorithm", "created_at", "state", "until"}
        assert row["algorithm"] == "ES256"
        assert row["until"] is None
        _moment(row["created_at"])
    assert (current["kid"], current["state"]) == (kid, "current")
    assert upcoming["state"] == "next"
    assert KID.fullmatch(upcoming["kid"]) and upcoming["kid"] != kid

    assert _text_rows(env) == [
        [
            upcoming["kid"],
            "ES256",
            upcoming["created_at"],
            "next (published, signs after the next rotation)",
        ],
        [kid, "ES256", current["created_at"], "current"],
    ]
    assert _keys(env) == rows, "listing changes nothing"
    events = await _audit(env["AUTHDB_DATABASE_URL"])
    assert events == [
        (
            "signing_key_rotated",
            {"kid": kid, "algorithm": "ES256", "previous": None, "next": upcoming["kid"]},
        )
    ]


def _first_keys(env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Make the deployment's first keys with `rotate`; the `list --json` rows of the
    current and of the next key."""
    kid = _rotate(env)
    upcoming, current = _keys(env)
    assert (current["kid"], current["state"], upcoming["state"]) == (kid, "current", "next")
    return current, upcoming


async def test_rotate_makes_the_next_key_current(env: dict[str, str]) -> None:
    """`rotate` makes the published next key current (printing its kid and algorithm) and
    publishes a new next key; the old key is retiring until its tokens' window ends."""
    first, upcoming = _first_keys(env)
    second = _rotate(env)
    assert second == upcoming["kid"], "the key made current is the one published as next"
    rows = _keys(env)
    newer = rows[0]["kid"]
    assert [(row["kid"], row["state"]) for row in rows] == [
        (newer, "next"),
        (second, "current"),
        (first["kid"], "retiring"),
    ]
    assert rows[0]["until"] is None and rows[1]["until"] is None
    # The old key stops signing when the new next key is made, and verifies one window longer.
    assert _moment(rows[2]["until"]) - _moment(rows[0]["created_at"]) == WINDOW
    assert _text_rows(env) == [
        [newer, "ES256", rows[0]["created_at"], "next (published, signs after the next rotation)"],
        [second, "ES256", upcoming["created_at"], "current"],
        [
            first["kid"],
            "ES256",
            first["created_at"],
            f"retiring (verifies until {rows[2]['until']})",
        ],
    ]

    third = _rotate(env)
    assert third == newer
    newest = _next(env)
    assert _states(env) == [
        (newest, "next"),
        (third, "current"),
        (second, "retiring"),
        (first["kid"], "retiring"),
    ]
    events = await _audit(env["AUTHDB_DATABASE_URL"])
    assert [
        (event, detail.get("kid"), detail.get("previous"), detail.get("next"))
        for event, detail in events
    ] == [
        ("signing_key_rotated", first["kid"], None, second),
        ("signing_key_rotated", second, first["kid"], third),
        ("signing_key_rotated", third, second, newest),
    ]


async def test_retire_ends_a_key_and_hands_over_to_the_next_one(env: dict[str, str]) -> None:
    """Retiring a replaced key only ends it; retiring the current key makes the next key
    current; retiring the next key publishes another. A retired or unknown kid is a one-line
    error with exit status 1 that changes nothing."""
    first, upcoming = _first_keys(env)
    second = _rotate(env)
    assert second == upcoming["kid"]
    third = _next(env)

    assert _ok(invoke_cli(["keys", "retire", first["kid"]], env=env)) == f"retired {first['kid']}\n"
    rows = _keys(env)
    assert [(row["kid"], row["state"]) for row in rows] == [
        (third, "next"),
        (second, "current"),
        (first["kid"], "retired"),
    ]
    assert _moment(rows[2]["until"]) >= _moment(rows[0]["created_at"])
    expected = [first["kid"], "ES256", first["created_at"], f"retired {rows[2]['until']}"]
    assert _text_rows(env)[2] == expected

    out = _ok(invoke_cli(["keys", "retire", second], env=env))
    assert out == f"retired {second}; new current signing key {third}\n"
    fourth = _next(env)
    assert _states(env) == [
        (fourth, "next"),
        (third, "current"),
        (second, "retired"),
        (first["kid"], "retired"),
    ]

    assert _ok(invoke_cli(["keys", "retire", fourth], env=env)) == f"retired {fourth}\n"
    fifth = _next(env)
    assert fifth not in (first["kid"], second, third, fourth)
    assert _states(env) == [
        (fifth, "next"),
        (fourth, "retired"),
        (third, "current"),
        (second, "retired"),
        (first["kid"], "retired"),
    ]

    before = _keys(env)
    again = _one_line_error(invoke_cli(["keys", "retire", first["kid"]], env=env))
    assert again == f"error: signing key {first['kid']!r} is already retired"
    unknown = _one_line_error(invoke_cli(["keys", "retire", "no-such-kid"], env=env))
    assert unknown == "error: no signing key 'no-such-kid'"
    assert _keys(env) == before, "the failures changed nothing"

    events = await _audit(env["AUTHDB_DATABASE_URL"])
    retired = [detail["kid"] for event, detail in events if event == "signing_key_retired"]
    assert retired == [first["kid"], second, fourth]
    assert (
        "signing_key_rotated",
        {"kid": third, "algorithm": "ES256", "previous": second, "next": fourth},
    ) in events
    assert (
        "signing_key_published",
        {"kid": fifth, "algorithm": "ES256", "previous": None, "next": fifth},
    ) in events


async def test_under_hs256_there_is_nothing_to_rotate(env: dict[str, str]) -> None:
    """With the default HMAC algorithm `rotate` refuses in one line naming the setting, and
    `list` says the secret key signs; keys left from an earlier setting are still listed, the
    current and next ones marked unused."""
    hs256 = {"AUTHDB_JWT_ALGORITHM": "HS256"}
    line = _one_line_error(invoke_cli(["keys", "rotate"], env={**env, **hs256}))
    assert "AUTHDB_JWT_ALGORITHM" in line and "HS256" in line
    assert _ok(invoke_cli(["keys", "list"], env={**env, **hs256})).splitlines() == [
        "AUTHDB_JWT_ALGORITHM is HS256: tokens are signed with the secret key",
        "no signing keys",
    ]
    assert _keys(env, **hs256) == []

    old, newer = _rotate(env), _rotate(env)  # keys made under ES256 earlier
    upcoming = _next(env)
    lines = _ok(invoke_cli(["keys", "list"], env={**env, **hs256})).splitlines()
    assert lines[0] == "AUTHDB_JWT_ALGORITHM is HS256: tokens are signed with the secret key"
    rows = [line.split(maxsplit=3) for line in lines[2:]]
    assert [(row[0], row[3]) for row in rows[:2]] == [
        (upcoming, "next (unused while AUTHDB_JWT_ALGORITHM is HMAC)"),
        (newer, "current (unused while AUTHDB_JWT_ALGORITHM is HMAC)"),
    ]
    assert rows[2][0] == old and rows[2][3].startswith("retiring (verifies until ")
    # They can still be retired (a leaked key must be endable whatever the setting): a
    # replaced one simply ends; the current one hands over to the next, of its algorithm.
    assert _ok(invoke_cli(["keys", "retire", old], env={**env, **hs256})) == f"retired {old}\n"
    out = _ok(invoke_cli(["keys", "retire", newer], env={**env, **hs256}))
    assert out == f"retired {newer}; new current signing key {upcoming}\n"
    rows = _keys(env, **hs256)
    assert [(row["kid"], row["algorithm"], row["state"]) for row in rows] == [
        (rows[0]["kid"], "ES256", "next"),
        (upcoming, "ES256", "current"),
        (newer, "ES256", "retired"),
        (old, "ES256", "retired"),
    ]


@pytest.mark.parametrize("other", ["EdDSA", "RS256"])
async def test_rotate_with_another_algorithm_is_refused(env: dict[str, str], other: str) -> None:
    """`rotate` (and `retire` of the current key, which makes another current) from a shell
    whose AUTHDB_JWT_ALGORITHM is not the current key's would switch the deployment's
    algorithm behind its back: one-line AlgorithmMismatch error, exit 1, and neither the keys
    nor the audit log change. With the deployment's setting it works."""
    current, upcoming = _first_keys(env)
    before = _keys(env)
    audit_before = await _audit(env["AUTHDB_DATABASE_URL"])
    shell = {**env, "AUTHDB_JWT_ALGORITHM": other}
    for args in (["keys", "rotate"], ["keys", "retire", current["kid"]]):
        line = _one_line_error(invoke_cli(args, env=shell))
        assert line == (
            f"error: the current signing key is ES256 but AUTHDB_JWT_ALGORITHM is {other} here: "
            "run this with the deployment's settings; to change the algorithm, change "
            "AUTHDB_JWT_ALGORITHM and restart the service"
        ), args
        assert _keys(env) == before, f"{args} changed the keys"
        assert await _audit(env["AUTHDB_DATABASE_URL"]) == audit_before
    assert _rotate(env) == upcoming["kid"]


async def test_an_algorithm_change_takes_effect_at_restart(
    env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    """The algorithm changes when the service starts with another AUTHDB_JWT_ALGORITHM: it
    makes a current and a next key of it, the old current key is retiring, the old next key
    (never used) retired; `list` shows the algorithm of each, and `rotate` then works under
    the new setting only."""
    first, upcoming = _first_keys(env)
    service = Auth(
        make_settings(
            database_url=env["AUTHDB_DATABASE_URL"],
            secret_key=SECRET,
            jwt_algorithm="EdDSA",
            access_token_expire_minutes=ACCESS_MINUTES,
            jwt_keys_refresh_seconds=REFRESH_SECONDS,
        )
    )
    await service.startup()  # as `authdb serve` starts
    try:
        assert service.core.jwt.keys.signing_algorithm == "EdDSA"
    finally:
        await service.shutdown()
    eddsa = {"AUTHDB_JWT_ALGORITHM": "EdDSA"}
    rows = _keys(env, **eddsa)
    assert [(row["algorithm"], row["state"]) for row in rows] == [
        ("EdDSA", "next"),
        ("EdDSA", "current"),
        ("ES256", "retired"),
        ("ES256", "retiring"),
    ]
    assert [row["kid"] for row in rows[2:]] == [upcoming["kid"], first["kid"]]
    assert [row[:2] for row in _text_rows(env, **eddsa)] == [
        [row["kid"], row["algorithm"]] for row in rows
    ]
    line = _one_line_error(invoke_cli(["keys", "rotate"], env=env))  # still ES256 here
    assert "is EdDSA but AUTHDB_JWT_ALGORITHM is ES256" in line
    assert _rotate(env, **eddsa) == rows[0]["kid"]


async def test_another_secret_key_cannot_make_keys(env: dict[str, str]) -> None:
    """A shell with another AUTHDB_SECRET_KEY than the deployment's would make a key the
    running processes cannot open: `rotate`, and `retire` of the current key (which hands
    over to the next), refuse in one line naming AUTHDB_SECRET_KEY and change nothing."""
    first, current = _rotate(env), _rotate(env)
    before = _keys(env)
    stranger = {"AUTHDB_SECRET_KEY": "another-deployment-secret-0123456789-abcdef"}
    for args in (["keys", "rotate"], ["keys", "retire", current]):
        line = _one_line_error(invoke_cli(args, env={**env, **stranger}))
        assert "AUTHDB_SECRET_KEY" in line, (args, line)
        assert _keys(env) == before, f"{args} changed the keys"
    # Retiring a replaced key makes nothing, so it needs no secret of the deployment's.
    assert (
        _ok(invoke_cli(["keys", "retire", first], env={**env, **stranger})) == f"retired {first}\n"
    )


def test_keys_help_names_the_commands() -> None:
    """`authdb keys --help` lists list, rotate and retire; `retire` needs a KID."""
    result = invoke_cli(["keys", "--help"], env={})
    assert result.returncode == 0, result.stderr
    for command in ("list", "rotate", "retire"):
        assert re.search(rf"\b{command}\b", result.stdout)
    missing = invoke_cli(["keys", "retire"], env={})
    assert missing.returncode == 2
    assert "Missing argument" in missing.stderr and "Traceback" not in missing.stderr
    assert "KID" in missing.stderr
    rotate = invoke_cli(["keys", "rotate", "--help"], env={})
    assert rotate.returncode == 0, rotate.stderr
    assert "next key" in " ".join(rotate.stdout.split())
