"""`authdb users import`: the checks every format shares (JSON Lines here), usernames made up,
--skip-existing, --dry-run, --mark-verified, --id-map, progress on a terminal, the audit trail.

Each source system's own export is tested in tests/test_import_<system>.py.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from sqlalchemy import select

from authdb import Auth, Settings
from authdb.db import migrate
from authdb.db.models import User
from authdb.importers import Reading, SourceUser
from authdb.passwords import is_usable
from authdb.services import provisioning
from authdb.services.audit import list_events
from authdb.services.core import CLI_CLIENT
from authdb.services.importing import (
    ImportOptions,
    ImportRefused,
    derived_username,
    import_users,
)
from tests.cli import AUTHDB, FAST_HASHING, invoke_cli, subprocess_env
from tests.conftest import PASSWORD

SECRET = "import-test-secret-key-0123456789-abcdefgh"
BCRYPT = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture
async def auth(database_url: str) -> AsyncIterator[Auth]:
    auth = Auth(
        Settings(_env_file=None, database_url=database_url, secret_key=SECRET, **FAST_HASHING)
    )  # type: ignore[call-arg]
    await migrate.upgrade(auth.core.engine)
    await auth.startup()
    yield auth
    await auth.shutdown()


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"AUTHDB_DATABASE_URL": database_url, "AUTHDB_SECRET_KEY": SECRET}


def _jsonl(tmp_path: Path, *records: object, name: str = "users.jsonl") -> Path:
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _user(name: str, **fields: Any) -> dict[str, Any]:
    return {"username": name, "email": f"{name}@example.com", "hashed_password": BCRYPT, **fields}


async def _users(auth: Auth) -> dict[str, User]:
    async with auth.core.sessionmaker() as db:
        return {u.username: u for u in (await db.scalars(select(User))).all()}


def _errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()


async def test_every_bad_line_is_named_and_nothing_is_imported(
    auth: Auth, env: dict[str, str], tmp_path: Path
) -> None:
    await provisioning.create_user(
        auth.core, username="taken", email="taken@example.com", password=PASSWORD, client=CLI_CLIENT
    )
    file = _jsonl(
        tmp_path,
        _user("alice"),
        _user("bob", is_superuser="yes"),  # the round-1 StatementError
        _user("carol", hashed_password="$2b$04$short"),  # accepted before; nobody could log in
        _user("dave", hashed_password="$2b$31$" + "a" * 53),  # a cost that would stall logins
        "",
        _user("ALICE", email="other@example.com"),  # the same username as line 1
        _user("erin", email="Alice@Example.com"),  # the same email as line 1
        _user("taken"),  # in authdb already
        _user("x y", email="xy@example.com"),  # JSONL keeps usernames as given: refused
        {"username": "frank", "email": "frank@example.com", "password": "password"},
        _user("grace", hashed_password="md5$abc$def"),
    )
    lines = _errors(invoke_cli(["users", "import", str(file)], env=env))
    assert lines[-1] == (
        "error: 9 bad lines; nothing imported (--skip-existing skips the users authdb already has)"
    )
    expected = [
        "line 2: is_superuser must be true or false",
        "line 3: hashed_password is not a valid bcrypt hash",
        "line 4: hashed_password is not a valid bcrypt hash: the cost must be 4 to 14",
        "line 6: username 'alice' is also on line 1",
        "line 7: email 'alice@example.com' is also on line 1",
        "line 8: email 'taken@example.com' is already registered in authdb",
        "line 9: Username may contain only",
        "line 10: Password is too common",
        "line 11: hashed_password is not a supported password hash (scheme 'md5'",
    ]
    for line, words in zip(lines, expected, strict=False):
        assert line.startswith(f"error: users.jsonl {words}"), (line, words)
    assert set(await _users(auth)) == {"taken"}
    # One bad line: one line of error.
    single = _errors(invoke_cli(["users", "import", str(_jsonl(tmp_path, _user("x y")))], env=env))
    assert len(single) == 1 and single[0].endswith("; nothing imported")


async def test_a_good_file_imports_everyone_and_keeps_the_hashes(
    auth: Auth, env: dict[str, str], tmp_path: Path
) -> None:
    file = _jsonl(
        tmp_path,
        _user("alice", full_name="Alice A", is_verified=True),
        _user("bob", is_superuser=True, disabled=True),
        {"username": "carol", "email": "carol@example.com", "password": "a long enough passphrase"},
        _user("dave", hashed_password="!unusable-from-an-export"),
    )
    result = invoke_cli(
        ["users", "import", str(file), "--id-map", str(tmp_path / "ids.csv")], env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 4 users"
    users = await _users(auth)
    assert users["alice"].hashed_password == BCRYPT  # stored as given, not recomputed
    assert (users["alice"].full_name, users["alice"].is_verified) == ("Alice A", True)
    assert users["bob"].is_superuser and users["bob"].disabled and not users["bob"].is_verified
    assert users["carol"].hashed_password.startswith("$argon2id$")
    assert not is_usable(users["dave"].hashed_password)
    assert users["dave"].hashed_password != "!unusable-from-an-export"  # a fresh one
    rows = (tmp_path / "ids.csv").read_text().splitlines()
    assert rows[0] == "line,source_id,source_username,authdb_id,username"
    assert rows[1] == f"1,,alice,{users['alice'].id},alice"
    events = [e for e in await list_events(auth.core) if e.event == "user_created"]
    assert len(events) == 4
    assert {e.detail["imported_from"] for e in events if e.detail} == {"jsonl"}
    assert all(e.user_agent == "authdb-cli" for e in events)


async def test_dry_run_checks_against_the_database_and_writes_nothing(
    auth: Auth, env: dict[str, str], tmp_path: Path
) -> None:
    file = _jsonl(tmp_path, _user("alice"), _user("bob"))
    checked = invoke_cli(["users", "import", str(file), "--dry-run"], env=env)
    assert checked.returncode == 0, checked.stderr
    assert "2 users would be imported" in checked.stdout
    assert await _users(auth) == {}
    assert invoke_cli(["users", "import", str(file)], env=env).returncode == 0
    again = _errors(invoke_cli(["users", "import", str(file), "--dry-run"], env=env))
    assert "already registered" in again[0]


async def test_skip_existing_imports_only_the_new_users(
    auth: Auth, env: dict[str, str], tmp_path: Path
) -> None:
    assert (
        invoke_cli(["users", "import", str(_jsonl(tmp_path, _user("alice")))], env=env).returncode
        == 0
    )
    both = _jsonl(tmp_path, _user("alice"), _user("bob"))
    result = invoke_cli(["users", "import", str(both), "--skip-existing"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 1 user, skipped 1"
    assert "note: line 1: skipped: email 'alice@example.com' is already registered" in result.stderr
    assert set(await _users(auth)) == {"alice", "bob"}


async def test_mark_verified_overrides_the_file(
    auth: Auth, env: dict[str, str], tmp_path: Path
) -> None:
    file = _jsonl(tmp_path, _user("alice", is_verified=False), _user("bob"))
    assert invoke_cli(["users", "import", str(file), "--mark-verified"], env=env).returncode == 0
    assert all(u.is_verified for u in (await _users(auth)).values())


def test_made_up_usernames_follow_the_rules() -> None:
    assert derived_username("john.doe+news") == "john.doe_news"
    assert derived_username("bob@example.com") == "bob_example.com"
    assert derived_username("al", "al@example.com") == "al_example.com"
    assert derived_username("x") == "x_user"
    assert derived_username("名前") == "名前_user"
    assert len(derived_username("a" * 300)) == 64


async def test_usernames_are_made_unique_in_the_file_and_the_database(auth: Auth) -> None:
    await provisioning.create_user(
        auth.core, username="alice", email="alice@old.example", password=PASSWORD, client=CLI_CLIENT
    )
    reading = Reading(
        users=[
            SourceUser(line=1, email="alice@a.example", hashed_password=BCRYPT),
            SourceUser(line=2, email="alice@b.example", hashed_password=BCRYPT),
            SourceUser(line=3, email="c@example.com", username="alice-2", hashed_password=BCRYPT),
            SourceUser(line=4, email="d@example.com", username="d@x", hashed_password=BCRYPT),
        ]
    )
    plan = await import_users(auth.core, reading, ImportOptions(source="test"), client=CLI_CLIENT)
    names = {u.source.line: u.username for u in plan.users}
    # "alice" is in authdb, "alice-2" is line 3's own: the made-up names go around both.
    assert names == {1: "alice-3", 2: "alice-4", 3: "alice-2", 4: "d_x"}
    assert [u.renamed_from for u in plan.users] == [None, None, None, "d@x"]
    assert set(await _users(auth)) == {"alice", "alice-2", "alice-3", "alice-4", "d_x"}


async def test_refused_import_raises_with_every_line(auth: Auth) -> None:
    reading = Reading(
        users=[
            SourceUser(line=3, email="not an email", hashed_password=BCRYPT),
            SourceUser(line=1, email="a@example.com", hashed_password="plain"),
        ]
    )
    with pytest.raises(ImportRefused) as refused:
        await import_users(auth.core, reading, ImportOptions(), client=CLI_CLIENT)
    assert [e.line for e in refused.value.errors] == [1, 3]
    assert refused.value.detail.startswith("line 1: hashed_password is not a supported")
    assert await _users(auth) == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_terminal_sees_progress_and_plain_passwords_are_hashed_in_parallel(
    auth: Auth, env: dict[str, str], tmp_path: Path
) -> None:
    records = [
        {"username": f"user{i}", "email": f"user{i}@example.com", "password": f"passphrase {i} ok"}
        for i in range(40)
    ]
    file = _jsonl(tmp_path, *records)
    main, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [AUTHDB, "users", "import", str(file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=subprocess_env({**env, "COLUMNS": "100"}),
            text=True,
        )
        stdout, _ = process.communicate(timeout=120)
        os.close(terminal)
        terminal = -1
        shown = _drain(main)
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(main)
    assert process.returncode == 0
    assert stdout.strip() == "imported 40 users"
    for stage in ("checking", "hashing passwords", "writing"):
        assert stage in shown, shown
    assert "40/40" in shown
    users = await _users(auth)
    assert len(users) == 40
    assert all(u.hashed_password.startswith("$argon2id$") for u in users.values())


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed: EIO on Linux
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def test_unreadable_files_say_so_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    assert invoke_cli(["migrate"], env=env).returncode == 0
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for args, words in (
        ([str(tmp_path / "absent.jsonl")], "cannot read"),
        ([str(binary)], "cannot read"),
        (
            ["--from", "django", str(_jsonl(tmp_path, "{}", name="d.json"))],
            "not valid JSON (expected an array)",
        ),
        (
            ["--from", "keycloak", str(_jsonl(tmp_path, '"a string"', name="k.json"))],
            "not valid JSON (expected an object)",
        ),
        (
            ["--from", "supabase", str(_jsonl(tmp_path, "a,b", name="s.csv"))],
            "the CSV header has no column id",
        ),
        ([str(_jsonl(tmp_path, "", name="e.jsonl"))], "holds no users"),
    ):
        lines = _errors(invoke_cli(["users", "import", *args], env=env))
        assert len(lines) == 1 and words in lines[0], (args, lines)
    usage = invoke_cli(["users", "import", "--from", "auth0", str(binary)], env=env)
    assert usage.returncode == 2 and "auth0" in usage.stderr
