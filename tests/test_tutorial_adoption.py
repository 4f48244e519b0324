"""`authdb migrate` adopts the FastAPI tutorial's database in place, end to end."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from authdb import Auth, Settings
from authdb.app import create_app
from tests.cli import run_cli

TUTORIAL_HASH = "$2b$12$dQD2AD2Y.Aa8F3IliHPfk.yNESW7FZe3RmeT38K661sg/vds404ga"


def make_tutorial_database(path: Path) -> None:
    """The table the tutorial's SQLAlchemy model creates, with its demo row and one more."""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE users (
                id INTEGER NOT NULL PRIMARY KEY,
                username VARCHAR,
                email VARCHAR,
                full_name VARCHAR,
                disabled BOOLEAN,
                hashed_password VARCHAR
            );
            CREATE UNIQUE INDEX ix_users_username ON users (username);
            CREATE UNIQUE INDEX ix_users_email ON users (email);
            CREATE INDEX ix_users_id ON users (id);
            """
        )
        db.execute(
            "INSERT INTO users VALUES (1, 'johndoe', 'johndoe@example.com', 'John Doe', 0, ?)",
            (TUTORIAL_HASH,),
        )
        db.execute(
            "INSERT INTO users VALUES (7, 'alice', 'alice@example.com', 'Alice Wonderson', 1, ?)",
            (TUTORIAL_HASH,),
        )


async def test_migrate_adopts_tutorial_database_and_johndoe_logs_in(tmp_path: Path) -> None:
    path = tmp_path / "sqlite3.db"
    make_tutorial_database(path)
    url = f"sqlite+aiosqlite:///{path}"
    result = run_cli(["migrate", "--database-url", url], env={})
    assert result.returncode == 0, result.stderr
    assert "revision" in result.stdout

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, username, email, disabled FROM users ORDER BY id").fetchall()
        # AUTOINCREMENT: ids of deleted users are never handed out again.
        sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'users'").fetchone()
    assert rows == [(1, "johndoe", "johndoe@example.com", 0), (7, "alice", "alice@example.com", 1)]
    assert sequence == (7,)

    auth = Auth(Settings(_env_file=None, database_url=url))  # type: ignore[call-arg]
    app = create_app(auth=auth)
    await auth.startup()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            token = await client.post(
                "/token", data={"username": "johndoe", "password": "swordfish"}
            )
            assert token.status_code == 200, token.text
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            me = (await client.get("/users/me/", headers=headers)).json()
            assert me["id"] == 1 and me["full_name"] == "John Doe"
            assert set(me) >= {"id", "username", "email", "full_name", "disabled"}
            disabled = await client.post(
                "/token", data={"username": "alice", "password": "swordfish"}
            )
            assert disabled.status_code == 400
            assert disabled.json()["detail"] == "Inactive user"
            wrong = await client.post("/token", data={"username": "johndoe", "password": "nope"})
            assert wrong.status_code == 401
    finally:
        await auth.shutdown()

    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT hashed_password FROM users WHERE id = 1").fetchone()
    assert stored.startswith("$argon2id$"), "the bcrypt hash is upgraded on login"

    # Running migrate again is a no-op.
    assert run_cli(["migrate", "--database-url", url], env={}).returncode == 0


def test_sync_sqlite_url_from_the_tutorial_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "sqlite3.db"
    make_tutorial_database(path)
    result = run_cli(["migrate", "--database-url", f"sqlite:///{path}"], env={})
    assert result.returncode == 0, result.stderr


def test_migrate_reports_bad_url_in_one_line(tmp_path: Path) -> None:
    result = run_cli(["migrate", "--database-url", "mysql://nowhere/db"], env={})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
