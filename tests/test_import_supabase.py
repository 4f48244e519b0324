"""`authdb users import --from supabase`: Supabase's ``auth.users`` table in a real PostgreSQL
database, filled as GoTrue (Supabase Auth) fills it, exported with the README's ``\\copy``
command and imported into authdb; every original password then logs in, and its hash (bcrypt
``$2a$10$``, as GoTrue makes them) is replaced by authdb's argon2id.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import bcrypt
import pytest

from tests.cli import invoke_cli, migrated_env
from tests.conftest import Harness, pg_database
from tests.import_helpers_csv import (
    UPGRADED_PREFIX,
    id_map,
    in_own_loop,
    libpq_url,
    line_starting,
    physical_lines,
    psql,
    stderr_lines,
    stored,
    token_response,
    user_count,
)

SECRET = "supabase-import-secret-0123456789-abcdefghij"
INSTANCE = "00000000-0000-0000-0000-000000000000"  # GoTrue's instance_id on Supabase

# The README's export command, run as written (in the folder users.csv is to go to).
EXPORT = "\\copy (select * from auth.users where email is not null) to 'users.csv' csv header"

# GoTrue's auth.users as a Supabase project has it (columns, types, defaults, constraints and
# indexes as `\d auth.users` shows them).
AUTH_USERS = """
create schema auth;
create table auth.users (
    instance_id uuid,
    id uuid not null,
    aud character varying(255),
    role character varying(255),
    email character varying(255),
    encrypted_password character varying(255),
    email_confirmed_at timestamp with time zone,
    invited_at timestamp with time zone,
    confirmation_token character varying(255),
    confirmation_sent_at timestamp with time zone,
    recovery_token character varying(255),
    recovery_sent_at timestamp with time zone,
    email_change_token_new character varying(255),
    email_change character varying(255),
    email_change_sent_at timestamp with time zone,
    last_sign_in_at timestamp with time zone,
    raw_app_meta_data jsonb,
    raw_user_meta_data jsonb,
    is_super_admin boolean,
    created_at timestamp with time zone,
    updated_at timestamp with time zone,
    phone text default null::character varying,
    phone_confirmed_at timestamp with time zone,
    phone_change text default ''::character varying,
    phone_change_token character varying(255) default ''::character varying,
    phone_change_sent_at timestamp with time zone,
    confirmed_at timestamp with time zone
        generated always as (least(email_confirmed_at, phone_confirmed_at)) stored,
    email_change_token_current character varying(255) default ''::character varying,
    email_change_confirm_status smallint default 0,
    banned_until timestamp with time zone,
    reauthentication_token character varying(255) default ''::character varying,
    reauthentication_sent_at timestamp with time zone,
    is_sso_user boolean not null default false,
    deleted_at timestamp with time zone,
    is_anonymous boolean not null default false,
    constraint users_pkey primary key (id),
    constraint users_phone_key unique (phone),
    constraint users_email_change_confirm_status_check
        check (email_change_confirm_status >= 0 and email_change_confirm_status <= 2)
);
create unique index confirmation_token_idx on auth.users (confirmation_token)
    where confirmation_token::text !~ '^[0-9 ]*$';
create unique index recovery_token_idx on auth.users (recovery_token)
    where recovery_token::text !~ '^[0-9 ]*$';
create unique index users_email_partial_key on auth.users (email) where is_sso_user = false;
create index users_instance_id_email_idx on auth.users (instance_id, lower(email::text));
create index users_instance_id_idx on auth.users (instance_id);
create index users_is_anonymous_idx on auth.users (is_anonymous);
"""

# One user as GoTrue writes the row: an email sign-up ("provider": "email") unless ``provider``.
INSERT = """
insert into auth.users (
    instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
    confirmation_token, confirmation_sent_at, recovery_token, email_change_token_new,
    email_change, last_sign_in_at, raw_app_meta_data, raw_user_meta_data, is_super_admin,
    created_at, updated_at, phone, phone_confirmed_at, banned_until, deleted_at, is_anonymous
) values (
    $1, $2, 'authenticated', 'authenticated', $3::varchar, $4::varchar,
    case when $5::boolean then now() - interval '30 days' end,
    case when $5::boolean then '' else $6::varchar end,
    case when $5::boolean then null else now() - interval '1 hour' end,
    '', '', '', case when $4::varchar <> '' then now() - interval '2 days' end,
    $7::jsonb, $8::jsonb, null,
    now() - interval '31 days', now() - interval '1 day', $9::text,
    case when $9::text is not null then now() - interval '30 days' end,
    now() + $10::interval, case when $11::boolean then now() - interval '3 days' end,
    $12::boolean
)
"""


@dataclass(frozen=True)
class Member:
    """One Supabase user: ``email`` None for a phone-only one, ``password`` None for one who
    signed in only through a provider (GoTrue then stores an empty encrypted_password)."""

    email: str | None
    password: str | None
    confirmed: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    provider: str = "email"
    phone: str | None = None
    banned_for: timedelta | None = None  # banned_until: now + this
    deleted: bool = False
    anonymous: bool = False
    hashed: str | None = None  # given: a hash GoTrue did not make (a Firebase import)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


ANN = Member("ann@example.com", "ann's garden gnomes", metadata={"full_name": "Ann Example"})
BEN = Member("ben@example.com", "ben never confirmed", confirmed=False)
CAT = Member("cat@example.com", "cat is banned a while", banned_for=timedelta(days=365))
DAN = Member("dan@example.com", "dan served his ban", banned_for=-timedelta(days=1))
EVE = Member("eve@example.com", "eve deleted herself", deleted=True)
# An anonymous sign-in that was given an address (is_anonymous still true): not a person yet.
ANON = Member("anon@example.com", None, confirmed=False, anonymous=True)
# Anonymous sign-ins without an address: left out by the export's "where email is not null".
NOBODY = Member(None, None, confirmed=False, anonymous=True)
GUS = Member(
    "gus@example.com",
    None,
    provider="github",
    metadata={
        "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4",
        "email": "gus@example.com",
        "email_verified": True,
        "full_name": "Gus Example",
        "iss": "https://api.github.com",
        "name": "Gus Example",
        "preferred_username": "gus",
        "provider_id": "1",
        "sub": "1",
        "user_name": "gus",
    },
)
# Metadata with a line break in a value (a profile's "about" text). jsonb writes it as \n, so
# the README's export keeps the row on one line; the other export's jsonb_pretty spreads every
# metadata cell over several lines.
HAL = Member(
    "hal@example.com",
    "hal writes long bios",
    metadata={"full_name": "Hal Example", "about": 'First line,\nsecond "line".'},
)
MEMBERS = (ANN, BEN, CAT, DAN, EVE, ANON, NOBODY, GUS, HAL)
IMPORTED = (ANN, BEN, CAT, DAN, GUS, HAL)

# Rows that make a file unimportable: a phone-only user (no email), and a user brought into
# Supabase from Firebase, whose hash is Firebase's modified scrypt (GoTrue verifies it; authdb
# does not).
PHONE_ONLY = Member(
    None, "phone people type this", confirmed=False, provider="phone", phone="15555550100"
)
FIREBASE = Member(
    "fran@example.com",
    None,
    hashed="$fbscrypt$v=1,n=14,r=8,p=1,ss=Bw==,sk=ou9tdYTGyYm8kuR6Dt0Bp0kDuAYoXrK16mbZO4yGwAn3oL"
    "spjnN0/c41v8xZnO1n14J3MjKj1b2g6AUCAlFwMw==$C0sHCg9ek77hsg==$ZGlmZmVyZW50aGFzaA==",
)


def _gotrue_hash(password: str) -> str:
    """bcrypt as GoTrue hashes passwords: Go's x/crypto/bcrypt, its default cost 10, $2a$."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()


def _app_metadata(member: Member) -> str:
    return json.dumps({"provider": member.provider, "providers": [member.provider]})


async def _add(conn: asyncpg.Connection, member: Member, hashes: dict[uuid.UUID, str]) -> None:
    await conn.execute(
        INSERT,
        uuid.UUID(INSTANCE),
        member.id,
        member.email,
        hashes.get(member.id, ""),
        member.confirmed,
        "pkce_" + uuid.uuid4().hex,  # a pending confirmation's token
        "{}" if member.anonymous else _app_metadata(member),
        json.dumps(member.metadata),
        member.phone,
        member.banned_for,
        member.deleted,
        member.anonymous,
    )


@dataclass(frozen=True)
class Exports:
    hashes: dict[uuid.UUID, str]
    good: str  # the README's export
    bad: str  # the whole table, phone-only and Firebase users too, metadata pretty-printed


async def _export_all(work: Path) -> Exports:
    hashes = {m.id: _gotrue_hash(m.password) for m in (*MEMBERS, PHONE_ONLY) if m.password}
    hashes[FIREBASE.id] = FIREBASE.hashed or ""
    good_dir, bad_dir = work / "good", work / "bad"
    good_dir.mkdir()
    bad_dir.mkdir()
    async with pg_database() as url:
        conn = await asyncpg.connect(libpq_url(url))
        try:
            await conn.execute(AUTH_USERS)
            for member in MEMBERS:
                await _add(conn, member, hashes)
            psql(url, EXPORT, good_dir)
            for member in (PHONE_ONLY, FIREBASE):
                await _add(conn, member, hashes)
            # Without the "where": a phone-only user's row comes along. The metadata written
            # by jsonb_pretty (as some export scripts do), so that cells span lines.
            columns = await conn.fetch(
                "select column_name from information_schema.columns where table_schema = "
                "'auth' and table_name = 'users' order by ordinal_position"
            )
            selected = ", ".join(
                f"jsonb_pretty({name}) as {name}" if name.endswith("meta_data") else name
                for name in (row["column_name"] for row in columns)
            )
            query = f"select {selected} from auth.users"  # noqa: S608 - its own column names
            psql(url, f"\\copy ({query}) to 'users.csv' csv header", bad_dir)
        finally:
            await conn.close()
    return Exports(
        hashes,
        (good_dir / "users.csv").read_bytes().decode(),
        (bad_dir / "users.csv").read_bytes().decode(),
    )


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """auth.users filled once and exported (in its own event loop, in a thread: the tests'
    loops are function-scoped)."""
    work = tmp_path_factory.mktemp("supabase")
    return in_own_loop(_export_all(work))


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return migrated_env(database_url, SECRET)


def _import(env: dict[str, str], path: Path, *extra: str) -> Any:
    return invoke_cli(["users", "import", "--from", "supabase", str(path), *extra], env=env)


def _line(text: str, member: Member) -> int:
    """The line a member's row starts on (instance_id and id are its first cells)."""
    return line_starting(text, f"{INSTANCE},{member.id},")


def test_the_export_is_as_supabase_writes_it(exports: Exports) -> None:
    """What the importer is given: every auth.users column, GoTrue's $2a$ hashes, an empty
    encrypted_password for the provider-only user, jsonb one line a cell (a line break in a
    value is written as \\n), and no row without an email."""
    header = physical_lines(exports.good)[0].strip().split(",")
    assert header[:6] == ["instance_id", "id", "aud", "role", "email", "encrypted_password"]
    assert len(header) == 35 and header[-1] == "is_anonymous" and "confirmed_at" in header
    assert exports.hashes[ANN.id].startswith("$2a$10$")
    assert len(physical_lines(exports.good)) == 1 + len(MEMBERS) - 1  # NOBODY left out
    # COPY writes an empty string as "" (an unquoted empty cell is NULL).
    assert f'{INSTANCE},{GUS.id},authenticated,authenticated,{GUS.email},"",' in exports.good
    assert '""about"": ""First line,\\nsecond \\""line\\"".""' in exports.good
    # The other export: a row for everyone, metadata cells over several lines.
    assert len(physical_lines(exports.bad)) > 1 + len(MEMBERS) + 2


async def test_export_imports_and_every_password_logs_in(
    exports: Exports, env: dict[str, str], make_harness: Any, tmp_path: Path
) -> None:
    path = tmp_path / "users.csv"
    path.write_text(exports.good, encoding="utf-8")
    ids_path = tmp_path / "ids.csv"

    result = _import(env, path, "--id-map", str(ids_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 6 users, skipped 2"
    # The deleted and the anonymous user are left out, each with a note naming its line.
    assert result.stderr.strip().splitlines() == [
        f"note: line {_line(exports.good, EVE)}: skipped: deleted in Supabase",
        f"note: line {_line(exports.good, ANON)}: skipped: an anonymous user",
    ]

    harness: Harness = await make_harness()
    ids = id_map(ids_path)
    assert set(ids) == {str(m.id) for m in IMPORTED}
    for member in IMPORTED:
        assert member.email is not None
        row = ids[str(member.id)]
        assert int(row["line"]) == _line(exports.good, member)
        assert row["username"] == member.email.split("@")[0]
        user = await stored(harness.auth, member.email)
        assert str(user.id) == row["authdb_id"]
        assert user.username == row["username"]
        assert user.is_superuser is False
        assert user.is_verified is member.confirmed
        assert user.disabled is (member is CAT)
        if member.password is not None:
            assert user.hashed_password == exports.hashes[member.id]  # stored as given
    assert (await stored(harness.auth, ANN.email)).full_name == "Ann Example"
    assert (await stored(harness.auth, GUS.email)).full_name == "Gus Example"
    assert (await stored(harness.auth, HAL.email)).full_name == "Hal Example"
    assert (await stored(harness.auth, BEN.email)).full_name is None

    # Every password works, the unconfirmed user's too; the hash becomes authdb's argon2id.
    for member in (ANN, BEN, DAN, HAL):
        assert member.email is not None and member.password is not None
        await harness.login(member.email, member.password)
        upgraded = (await stored(harness.auth, member.email)).hashed_password
        assert upgraded.startswith(UPGRADED_PREFIX), upgraded
        await harness.login(member.email, member.password)  # the new hash works
    wrong = await token_response(harness.client, "ann@example.com", "ben never confirmed")
    assert wrong.status_code == 401
    # Banned until next year: the right password, and no session.
    assert CAT.password is not None
    banned = await token_response(harness.client, "cat@example.com", CAT.password)
    assert banned.status_code == 400
    assert banned.json()["detail"] == "Inactive user"
    # Signed in only through GitHub: no password works, not even an empty one.
    gus = await stored(harness.auth, "gus@example.com")
    assert gus.hashed_password.startswith("!")
    for attempt in ("", "gus@example.com", ANN.password or ""):
        assert (await token_response(harness.client, "gus@example.com", attempt)).status_code in (
            401,
            422,
        )
    assert (await stored(harness.auth, "gus@example.com")).hashed_password == gus.hashed_password
    for member in (EVE, ANON):
        assert (
            await token_response(harness.client, member.email or "", "x" * 12)
        ).status_code == 401


async def test_bad_lines_are_named_and_nothing_is_imported(
    exports: Exports, env: dict[str, str], make_harness: Any, tmp_path: Path
) -> None:
    """The whole table exported (no "where email is not null"), with the metadata over several
    lines: the phone-only user and the Firebase-hashed one are named by the line each row
    starts on; nothing is imported."""
    path = tmp_path / "users.csv"
    path.write_text(exports.bad, encoding="utf-8")
    phone_line, firebase_line = _line(exports.bad, PHONE_ONLY), _line(exports.bad, FIREBASE)
    # Rows before them span several lines each: their numbers are not their row numbers.
    assert phone_line > 1 + len(MEMBERS) + 1
    assert stderr_lines(_import(env, path)) == [
        f"error: users.csv line {phone_line}: email is empty (a phone-only user?); authdb "
        "needs one: leave such users out of the export (where email is not null)",
        f"error: users.csv line {firebase_line}: encrypted_password is not a supported password "
        "hash (scheme 'fbscrypt'; supported: argon2, bcrypt, Django's pbkdf2_sha256/"
        "pbkdf2_sha1/argon2/bcrypt_sha256/bcrypt, PBKDF2 in PHC form ($pbkdf2-sha256$...))",
        "error: 2 bad lines; nothing imported",
    ]
    harness: Harness = await make_harness()
    assert await user_count(harness.auth) == 0
