"""`authdb createuser`, `changepassword` and `users import` through the real console script
(their further refusals, and the set-up, through Typer's runner, ``tests.cli.invoke_cli``: the
same command without an interpreter's start-up each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import invoke_cli, run_cli
from tests.conftest import PASSWORD

BCRYPT_SWORDFISH = "$2b$12$dQD2AD2Y.Aa8F3IliHPfk.yNESW7FZe3RmeT38K661sg/vds404ga"


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    env = {"AUTHDB_DATABASE_URL": database_url, "AUTHDB_SECRET_KEY": "s" * 40}
    assert invoke_cli(["migrate"], env=env).returncode == 0
    return env


def _one_line_error(result: object) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode != 0  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _create(
    env: dict[str, str], username: str, password: str = PASSWORD, *extra: str, real: bool = False
) -> object:
    """``authdb createuser``: through the real console script when ``real``, else in process."""
    return (run_cli if real else invoke_cli)(
        ["createuser", "--username", username, "--email", f"{username}@example.com",
         "--password-stdin", *extra],
        env=env,
        stdin=password + "\n",
    )  # fmt: skip


def test_createuser_applies_policy_and_uniqueness(env: dict[str, str]) -> None:
    ok = _create(env, "alice", PASSWORD, "--superuser", "--full-name", "Alice", real=True)
    assert ok.returncode == 0, ok.stderr  # type: ignore[attr-defined]
    assert "Username already registered" in _one_line_error(_create(env, "ALICE"))
    assert "too common" in _one_line_error(_create(env, "bob", "password123"))
    assert "at least 8" in _one_line_error(_create(env, "bob", "short"))
    assert "Username" in _one_line_error(_create(env, "b!"))
    no_tty = run_cli(["createuser", "--username", "carol", "--email", "c@example.com"], env=env)
    assert "password-stdin" in _one_line_error(no_tty)


def test_changepassword_sets_a_new_password(env: dict[str, str]) -> None:
    assert _create(env, "zorbaflux9").returncode == 0  # type: ignore[attr-defined]
    weak = invoke_cli(
        ["changepassword", "zorbaflux9", "--password-stdin"], env=env, stdin="ZorbaFlux9\n"
    )
    assert "username" in _one_line_error(weak)
    ok = run_cli(
        ["changepassword", "ZORBAFLUX9@example.com", "--password-stdin"],
        env=env,
        stdin="new passphrase ok\n",
    )
    assert ok.returncode == 0, ok.stderr
    missing = invoke_cli(
        ["changepassword", "nobody", "--password-stdin"], env=env, stdin="new passphrase ok\n"
    )
    assert "nobody" in _one_line_error(missing)


def _write(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "users.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_users_import_all_or_nothing(env: dict[str, str], tmp_path: Path) -> None:
    good = {"username": "dave", "email": "dave@example.com", "password": PASSWORD}
    legacy = {
        "username": "johndoe",
        "email": "john@example.com",
        "hashed_password": BCRYPT_SWORDFISH,
        "full_name": "John Doe",
        "is_verified": True,
    }
    bad = {"username": "eve", "email": "not-an-email", "password": PASSWORD}
    failed = run_cli(["users", "import", str(_write(tmp_path, good, legacy, bad))], env=env)
    assert "line 3" in _one_line_error(failed)
    broken = run_cli(["users", "import", str(_write(tmp_path, good, "{nope"))], env=env)
    assert "line 2" in _one_line_error(broken)
    weird_hash = {**legacy, "hashed_password": "plaintext"}
    assert "line 1" in _one_line_error(
        invoke_cli(["users", "import", str(_write(tmp_path, weird_hash))], env=env)
    )
    ok = run_cli(["users", "import", str(_write(tmp_path, good, legacy))], env=env)
    assert ok.returncode == 0, ok.stderr
    assert "imported 2 users" in ok.stdout
    again = invoke_cli(["users", "import", str(_write(tmp_path, good))], env=env)
    assert "nothing imported" in _one_line_error(again)
    missing = invoke_cli(["users", "import", str(tmp_path / "absent.jsonl")], env=env)
    _one_line_error(missing)
    # Wrong types and deep nesting: one line naming the line and field, never a traceback.
    good = {"username": "frank", "email": "frank@example.com", "password": PASSWORD}
    for line, words in (
        ({**good, "is_superuser": "yes"}, "is_superuser must be true or false"),
        ({**good, "full_name": 123}, "full_name must be a string or null"),
        ({**legacy, "hashed_password": 123}, "hashed_password must be a string"),
        ("[" * 1000, "not valid JSON (nested too deeply)"),
    ):
        wrong = invoke_cli(["users", "import", str(_write(tmp_path, good, line))], env=env)
        assert f"line 2: {words}" in _one_line_error(wrong)
