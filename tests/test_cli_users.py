"""`authdb users list|show|disable|enable|set-superuser|delete`.

Users are seeded and checked in-process through the services (fast); the commands under test
run through Typer's runner (``tests.cli.invoke_cli``), and the confirmation prompt through the
real console script, with and without a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update

from authdb import Auth, Settings
from authdb.db import migrate
from authdb.db.models import User
from authdb.errors import NotAuthenticated, NotFound
from authdb.services import admin, provisioning, sessions
from authdb.services.audit import list_events
from authdb.services.core import CLI_CLIENT, ClientInfo
from tests.cli import AUTHDB, invoke_cli, run_cli, subprocess_env
from tests.conftest import PASSWORD

SECRET = "cli-users-test-secret-key-0123456789-abcdef"


@pytest.fixture
async def auth(database_url: str) -> AsyncIterator[Auth]:
    """A started authdb on the test database, migrated as `authdb migrate` would."""
    values: dict[str, Any] = {"database_url": database_url, "secret_key": SECRET}
    auth = Auth(Settings(_env_file=None, **values))
    await migrate.upgrade(auth.core.engine)
    await auth.startup()
    yield auth
    await auth.shutdown()


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"AUTHDB_DATABASE_URL": database_url, "AUTHDB_SECRET_KEY": SECRET}


async def _user(auth: Auth, username: str, **fields: Any) -> Any:
    fields.setdefault("email", f"{username}@example.com")
    return await provisioning.create_user(
        auth.core, username=username, password=PASSWORD, client=CLI_CLIENT, **fields
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_list_and_show(auth: Auth, env: dict[str, str]) -> None:
    await _user(auth, "root", is_superuser=True, is_verified=True)
    await _user(auth, "jürgen", full_name="Jürgen Müller", disabled=True)
    table = _ok(invoke_cli(["users", "list"], env=env)).splitlines()
    assert table[0].split() == ["ID", "USERNAME", "EMAIL", "FULL", "NAME", "FLAGS"]
    assert table[1].split() == ["1", "root", "root@example.com", "-", "superuser"]
    row = table[2].split()
    assert row[1:3] == ["jürgen", "jürgen@example.com"]
    assert row[3:] == ["Jürgen", "Müller", "disabled,unverified"]
    found = json.loads(_ok(invoke_cli(["users", "list", "--search", "MÜLL", "--json"], env=env)))
    assert [u["username"] for u in found] == ["jürgen"]
    assert set(found[0]) >= {"id", "email", "full_name", "disabled", "is_superuser", "created_at"}
    assert not any("password" in key for key in found[0])
    shown = json.loads(_ok(invoke_cli(["users", "show", "JÜRGEN@example.com", "--json"], env=env)))
    assert shown == found[0]
    assert "no user 'nobody'" in _one_line_error(invoke_cli(["users", "show", "nobody"], env=env))


async def test_disable_enable_superuser_and_delete(auth: Auth, env: dict[str, str]) -> None:
    root = await _user(auth, "root", is_superuser=True)
    bob = await _user(auth, "bob")
    async with auth.core.sessionmaker.begin() as db:
        pair = await sessions.start_session(auth.core, db, bob, ClientInfo())
    assert "sessions have ended" in _ok(invoke_cli(["users", "disable", "bob"], env=env))
    with pytest.raises(NotAuthenticated):
        await sessions.authenticate(auth.core, pair.access_token)
    assert (
        _ok(invoke_cli(["users", "enable", str(bob.id)], env=env)).strip() == "enabled bob (id 2)"
    )
    assert (await admin.get_user(auth.core, bob.id)).disabled is False
    promoted = _ok(invoke_cli(["users", "set-superuser", "bob"], env=env))
    assert promoted.strip() == "bob (id 2) is now a superuser"
    assert (await admin.get_user(auth.core, bob.id)).is_superuser is True
    assert _ok(invoke_cli(["users", "set-superuser", "root", "--off"], env=env)).strip() == (
        "root (id 1) is no longer a superuser"
    )
    last = invoke_cli(["users", "delete", "bob", "--yes"], env=env)
    assert "last active superuser" in _one_line_error(last)
    elsewhere = ClientInfo(user_agent="test")
    await admin.update_user(auth.core, root.id, {"is_superuser": True}, client=elsewhere)
    assert _ok(invoke_cli(["users", "delete", "bob", "--yes"], env=env)).strip() == (
        "deleted bob (id 2)"
    )
    with pytest.raises(NotFound):
        await admin.get_user(auth.core, bob.id)
    trail = [e for e in await list_events(auth.core) if e.event.startswith("admin_user")]
    assert [e.event for e in trail] == ["admin_user_updated"] * 5 + ["admin_user_deleted"]
    assert [e.detail["fields"] for e in trail[:4] if e.detail] == [
        ["disabled"], ["disabled"], ["is_superuser"], ["is_superuser"]
    ]  # fmt: skip
    cli = [e for e in trail if e.user_agent == "authdb-cli"]
    assert len(cli) == 5  # all but the in-process update
    assert all(e.actor_id is None and e.ip_address is None for e in cli)


def _with_terminal(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str, str]:
    """Run ``authdb ARGS`` with a pseudo-terminal as standard input, typing ``answer``."""
    main, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [AUTHDB, *args],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(env),
            text=True,
        )
        os.write(main, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(main)
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_delete_asks_first(auth: Auth, env: dict[str, str]) -> None:
    await _user(auth, "root", is_superuser=True)
    await _user(auth, "bob")
    async with auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.username == "bob").values(id=100))
    number = await _user(auth, "100")  # a username that is also bob's id
    no_terminal = run_cli(["users", "delete", "bob"], env=env, stdin="y\n")
    assert "--yes" in _one_line_error(no_terminal)
    code, stdout, stderr = _with_terminal(["users", "delete", "bob"], env, "n")
    assert code != 0
    assert "Delete bob (id 100)" in stdout
    assert stderr.strip() == "error: not deleted"
    assert (await admin.get_user(auth.core, 100)).username == "bob"
    ambiguous = _one_line_error(invoke_cli(["users", "delete", "100", "--yes"], env=env))
    assert "id:100" in ambiguous
    code, stdout, stderr = _with_terminal(["users", "delete", "id:100"], env, "y")
    assert code == 0, stderr
    assert stdout.strip().endswith("deleted bob (id 100)")
    with pytest.raises(NotFound):
        await admin.get_user(auth.core, 100)
    assert (await admin.find_user(auth.core, "100")).id == number.id
