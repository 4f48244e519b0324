"""`authdb users import --from fastapi-users`: a real fastapi-users ``user`` table, exported with
the README's commands (psql's ``\\copy`` from PostgreSQL, the sqlite3 shell from SQLite, and
``row_to_json`` for JSON Lines), imported into authdb; every original password then logs in and
its hash is replaced by authdb's argon2id.

The table is fastapi-users-db-sqlalchemy's ``SQLAlchemyBaseUserTableUUID`` (defined here, with
its GUID type, so that fastapi-users itself need not be installed), plus a column of the
application's own, as apps add theirs to the same table. Hashes are made as fastapi-users makes
them: pwdlib's recommended argon2id (fastapi-users 13 and later) and passlib's bcrypt, cost 12
(before).
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from pwdlib import PasswordHash
from sqlalchemy import CHAR, Boolean, Dialect, String, Text
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from tests.cli import invoke_cli, migrated_env
from tests.conftest import Harness, pg_database
from tests.import_helpers_csv import (
    UPGRADED_PREFIX,
    csv_table,
    csv_text,
    id_map,
    in_own_loop,
    libpq_url,
    line_starting,
    physical_lines,
    psql,
    shell,
    stderr_lines,
    stored,
    token_response,
    user_count,
)

SECRET = "fastapi-users-import-secret-0123456789-abcdef"

# The README's export commands, run as written (in the folder the file is to go to).
PG_CSV_EXPORT = "\\copy \"user\" to 'users.csv' csv header"
PG_JSONL_QUERY = 'select row_to_json(u) from "user" u'
SQLITE_CSV_EXPORT = "sqlite3 -header -csv app.db 'select * from user' > users.csv"


# --- the fastapi-users side -------------------------------------------------------------------


class GUID(TypeDecorator[uuid.UUID]):
    """fastapi-users-db-sqlalchemy's id type: PostgreSQL's ``uuid``, elsewhere ``CHAR(36)``
    holding the UUID with its dashes."""

    impl = CHAR
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(PG_UUID())
        return dialect.type_descriptor(CHAR(36))

    def process_bind_param(self, value: uuid.UUID | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        return None if value is None else uuid.UUID(str(value))


class SourceBase(DeclarativeBase):
    pass


class FastAPIUser(SourceBase):
    """``SQLAlchemyBaseUserTableUUID``'s columns, and ``bio``, the application's own."""

    __tablename__ = "user"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String(1024))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    is_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    bio: Mapped[str | None] = mapped_column(Text)


@dataclass(frozen=True)
class Person:
    email: str
    password: str
    scheme: str  # "argon2": fastapi-users 13 and later (pwdlib); "bcrypt": before (passlib)
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False
    bio: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


# In table order. Two users share the local part "alice"; authdb already has a "carol" (another
# person) when the file is imported; alice's bio spans two lines of the CSV.
ALICE = Person(
    "alice@example.com", "tea at five o'clock", "argon2", is_verified=True,
    bio="Likes tea.\nAnd cake, \"lots\", of it.",
)  # fmt: skip
ALICE_ORG = Person(
    "alice@example.org", "another alice entirely", "bcrypt", is_superuser=True, is_verified=True
)
BOB = Person("bob@example.net", "bob was here long ago", "bcrypt", is_active=False)
# Her bio holds U+2028 and U+0085, which JSON strings (and row_to_json) keep unescaped: they
# must not end a line of the JSON Lines export.
CAROL = Person(
    "carol@example.com", "carol sings in the rain", "argon2", bio="Sings\u2028in the rain\x85."
)
PEOPLE = (ALICE, ALICE_ORG, BOB, CAROL)
USERNAMES = {ALICE: "alice", ALICE_ORG: "alice-2", BOB: "bob", CAROL: "carol-2"}


def _hash(person: Person) -> str:
    if person.scheme == "argon2":
        return PasswordHash.recommended().hash(person.password)
    return bcrypt.hashpw(person.password.encode(), bcrypt.gensalt(12)).decode()


async def _fill(url: str, hashes: dict[str, str]) -> None:
    """Create fastapi-users' table in the database at ``url`` and add PEOPLE, in order."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(SourceBase.metadata.create_all)
        async with AsyncSession(engine) as db, db.begin():
            for person in PEOPLE:
                db.add(
                    FastAPIUser(
                        id=person.id,
                        email=person.email,
                        hashed_password=hashes[person.email],
                        is_active=person.is_active,
                        is_superuser=person.is_superuser,
                        is_verified=person.is_verified,
                        bio=person.bio,
                    )
                )
                await db.flush()
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Exports:
    hashes: dict[str, str]
    csv: dict[str, str]  # "postgresql" / "sqlite": the export's text
    jsonl: str


async def _export_all(work: Path) -> Exports:
    hashes = {person.email: _hash(person) for person in PEOPLE}
    pg_dir, sqlite_dir = work / "postgresql", work / "sqlite"
    pg_dir.mkdir()
    sqlite_dir.mkdir()
    async with pg_database() as url:
        await _fill(url, hashes)
        psql(url, PG_CSV_EXPORT, pg_dir)
        quoted = shlex.quote(libpq_url(url)), shlex.quote(PG_JSONL_QUERY)
        shell(f"psql {quoted[0]} -At -c {quoted[1]} > users.jsonl", pg_dir)
    await _fill(f"sqlite+aiosqlite:///{sqlite_dir / 'app.db'}", hashes)
    shell(SQLITE_CSV_EXPORT, sqlite_dir)
    csv = {
        "postgresql": (pg_dir / "users.csv").read_bytes().decode(),
        "sqlite": (sqlite_dir / "users.csv").read_bytes().decode(),
    }
    return Exports(hashes, csv, (pg_dir / "users.jsonl").read_bytes().decode())


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """The table, filled once on each database and exported (its own event loop, in a thread:
    the tests' loops are function-scoped)."""
    work = tmp_path_factory.mktemp("fastapi_users")
    return in_own_loop(_export_all(work))


# --- authdb's side ----------------------------------------------------------------------------


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return migrated_env(database_url, SECRET)


def _import(env: dict[str, str], path: Path, *extra: str) -> Any:
    return invoke_cli(["users", "import", "--from", "fastapi-users", str(path), *extra], env=env)


def test_the_exports_are_as_each_database_writes_them(exports: Exports) -> None:
    """What the importer is given: PostgreSQL's booleans t/f, SQLite's 1/0, JSON's
    true/false; the bio a quoted cell over two lines in both CSV files."""
    for source, true, false in (("postgresql", "t", "f"), ("sqlite", "1", "0")):
        header, rows = csv_table(exports.csv[source])
        assert header == [
            "id", "email", "hashed_password", "is_active", "is_superuser", "is_verified", "bio"
        ]  # fmt: skip
        assert rows[0] == [str(ALICE.id), ALICE.email, exports.hashes[ALICE.email], true, false,
                           true, ALICE.bio]  # fmt: skip
        assert rows[2][3] == false  # bob is not active
    assert exports.hashes[ALICE.email].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert exports.hashes[BOB.email].startswith("$2b$12$")
    assert f'{{"id":"{BOB.id}","email":"{BOB.email}",' in exports.jsonl
    assert '"is_active":false' in exports.jsonl


@pytest.mark.parametrize("source", ["postgresql", "sqlite"])
async def test_csv_export_imports_and_every_password_logs_in(
    source: str,
    exports: Exports,
    env: dict[str, str],
    make_harness: Any,
    tmp_path: Path,
) -> None:
    harness: Harness = await make_harness()
    # Another person already has the username "carol" in authdb.
    await harness.create_user("carol", email="carol@authdb.example")
    text = exports.csv[source]
    path = tmp_path / "users.csv"
    path.write_text(text, encoding="utf-8")
    ids_path = tmp_path / "ids.csv"

    result = _import(env, path, "--id-map", str(ids_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 4 users"
    assert result.stderr == "note: superusers (1): alice-2\n"

    # --id-map: each fastapi-users UUID, the line its row starts on, authdb's id and username.
    ids = id_map(ids_path)
    assert set(ids) == {str(person.id) for person in PEOPLE}
    lines = {person: line_starting(text, f"{person.id},") for person in PEOPLE}
    assert lines[ALICE] == 2 and lines[ALICE_ORG] == 4  # alice's bio takes lines 2 and 3
    for person in PEOPLE:
        row = ids[str(person.id)]
        assert int(row["line"]) == lines[person]
        assert row["username"] == USERNAMES[person]
        user = await stored(harness.auth, person.email)
        assert str(user.id) == row["authdb_id"]
        assert user.username == USERNAMES[person]
        assert user.email == person.email
        assert user.full_name is None
        assert user.hashed_password == exports.hashes[person.email]  # stored as given
        assert user.is_verified is person.is_verified
        assert user.is_superuser is person.is_superuser
        assert user.disabled is (not person.is_active)

    # Each active user's password works and the hash becomes authdb's argon2id: the bcrypt
    # ones and also pwdlib's argon2id, whose parameters are not authdb's.
    for person in (ALICE, ALICE_ORG, CAROL):
        await harness.login(person.email, person.password)
        upgraded = (await stored(harness.auth, person.email)).hashed_password
        assert upgraded.startswith(UPGRADED_PREFIX), upgraded
        await harness.login(USERNAMES[person], person.password)  # the new hash works
        assert (await stored(harness.auth, person.email)).hashed_password == upgraded
    wrong = await token_response(harness.client, ALICE_ORG.email, ALICE.password)
    assert wrong.status_code == 401
    # is_active false: the right password, and still no session.
    refused = await token_response(harness.client, BOB.email, BOB.password)
    assert refused.status_code == 400
    assert refused.json()["detail"] == "Inactive user"
    # The authdb user who had "carol" first is untouched.
    assert (await stored(harness.auth, "carol")).email == "carol@authdb.example"


async def test_jsonl_export_imports(
    exports: Exports, env: dict[str, str], make_harness: Any, tmp_path: Path
) -> None:
    """``psql -At -c 'select row_to_json(u) from "user" u' > users.jsonl``: one object a line."""
    path = tmp_path / "users.jsonl"
    path.write_text(exports.jsonl, encoding="utf-8")
    ids_path = tmp_path / "ids.csv"
    result = _import(env, path, "--id-map", str(ids_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 4 users"
    harness: Harness = await make_harness()
    ids = id_map(ids_path)
    for person in PEOPLE:
        row = ids[str(person.id)]
        assert int(row["line"]) == line_starting(exports.jsonl, f'{{"id":"{person.id}"')
        user = await stored(harness.auth, person.email)
        assert str(user.id) == row["authdb_id"]
        assert (user.is_verified, user.is_superuser, user.disabled) == (
            person.is_verified, person.is_superuser, not person.is_active,
        )  # fmt: skip
    assert {row["username"] for row in ids.values()} == {"alice", "alice-2", "bob", "carol"}
    for person in (ALICE, ALICE_ORG):
        await harness.login(person.email, person.password)
        assert (await stored(harness.auth, person.email)).hashed_password.startswith(
            UPGRADED_PREFIX
        )
    refused = await token_response(harness.client, BOB.email, BOB.password)
    assert refused.status_code == 400


async def test_bad_lines_are_named_and_nothing_is_imported(
    exports: Exports, env: dict[str, str], make_harness: Any, tmp_path: Path
) -> None:
    """Files made from the real exports, with the mistakes a hand-edited or mis-mapped export
    has. Each names the line its row starts on (the header is line 1) and imports nothing."""
    path = tmp_path / "users.csv"

    # PostgreSQL's export: several bad rows after alice's two-line bio.
    header, rows = csv_table(exports.csv["postgresql"])
    by_email = {row[header.index("email")]: row for row in rows}

    def altered(person: Person, **cells: str) -> list[str]:
        row = list(by_email[person.email])
        for name, value in cells.items():
            row[header.index(name)] = value
        return row

    duplicate_id, short_id = str(uuid.uuid4()), str(uuid.uuid4())
    text = csv_text(
        header,
        [
            by_email[ALICE.email],
            altered(ALICE_ORG, is_verified="yes"),
            altered(BOB, hashed_password="$2b$04$short"),
            by_email[CAROL.email],
            altered(CAROL, id=duplicate_id, email="Carol@Example.COM"),
            altered(BOB, id=short_id, email="dave@example.com")[:-1],
        ],
    )
    path.write_text(text, encoding="utf-8")
    line = {
        "yes": line_starting(text, f"{ALICE_ORG.id},"),
        "hash": line_starting(text, f"{BOB.id},"),
        "carol": line_starting(text, f"{CAROL.id},"),
        "duplicate": line_starting(text, f"{duplicate_id},"),
        "short": line_starting(text, f"{short_id},"),
    }
    assert line["yes"] == 4  # the header, then alice over lines 2 and 3
    errors = stderr_lines(_import(env, path))
    expected = [
        (line["yes"], "is_verified must be true or false (t/f, 1/0), not 'yes'"),
        (line["hash"], "hashed_password is not a valid bcrypt hash: "),
        (line["duplicate"], f"email 'carol@example.com' is also on line {line['carol']}"),
        (line["short"], "has 6 cells, the header 7"),
    ]
    assert len(errors) == len(expected) + 1, errors
    for got, (number, words) in zip(errors, expected, strict=False):
        assert got.startswith(f"error: users.csv line {number}: {words}"), got
    assert errors[-1] == "error: 4 bad lines; nothing imported"

    # SQLite's export with one bad cell: one line, naming the line and the column.
    header, rows = csv_table(exports.csv["sqlite"])
    rows[2][header.index("is_active")] = "yes"
    text = csv_text(header, rows)
    path.write_text(text, encoding="utf-8")
    assert stderr_lines(_import(env, path)) == [
        f"error: users.csv line {line_starting(text, f'{BOB.id},')}: is_active must be true or "
        "false (t/f, 1/0), not 'yes'; nothing imported"
    ]

    # A column left out of the export: one error for the file, naming the column.
    gone = header.index("is_superuser")
    path.write_text(
        csv_text(header[:gone] + header[gone + 1 :], [r[:gone] + r[gone + 1 :] for r in rows]),
        encoding="utf-8",
    )
    (only,) = stderr_lines(_import(env, path))
    assert only.startswith("error: users.csv: the CSV header has no column is_superuser"), only

    # A quote left open in the last column (a hand-edited bio) takes every later row into that
    # cell, which still gives a row of the right width: refused as a whole, naming the line the
    # row starts on, rather than read as one user without the ones after it.
    lines = physical_lines(exports.csv["sqlite"])
    alice_org, bob = (line_starting(exports.csv["sqlite"], f"{p.id},") for p in (ALICE_ORG, BOB))
    opened = lines[alice_org - 1].rstrip("\r\n") + "\"Alice's bio\n"
    path.write_text(lines[0] + opened + lines[bob - 1], encoding="utf-8")
    assert stderr_lines(_import(env, path)) == [
        "error: users.csv: line 2: not valid CSV (unexpected end of data)"
    ]

    harness: Harness = await make_harness()
    assert await user_count(harness.auth) == 0
