"""`authdb users import` after the attack review: what a hostile or odd export can no longer do.

Only the user model's records are read from a Django dump (``--model`` for a custom one);
duplicate JSON keys and huge integers are bad JSON, not a crash or a silent choice; a full name
another system allowed is left out with a note; nothing from the file reaches the terminal
unescaped; thousands of users with one email local part are numbered in one pass; ``--id-map``
never writes over a file or through a link, and leaves nothing behind when nothing was
imported; superusers are listed and audited; a Keycloak user has one password credential.

Every import runs the real ``authdb`` command (tests/cli.py) on a database made by
``authdb migrate``; stored hashes are one cheap bcrypt (cost 4) shared by every user.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from sqlalchemy import func, select

from authdb import Auth, Settings
from authdb.db.models import User
from authdb.importers import FORMATS
from authdb.services import importing, provisioning
from authdb.services.audit import list_events
from authdb.services.core import CLI_CLIENT
from authdb.services.importing import ImportOptions, NoProgress
from tests.cli import FAST_HASHING, invoke_cli, migrated_env
from tests.conftest import PASSWORD

SECRET = "import-hardening-secret-0123456789-abcdefgh"
BCRYPT = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
HUGE = "9" * 5000  # past Python's 4,300-digit limit for reading an integer
FASTAPI_COLUMNS = ("id", "email", "hashed_password", "is_active", "is_superuser", "is_verified")


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    """The CLI's settings for a database that ``authdb migrate`` has just made."""
    return migrated_env(database_url, SECRET)


@pytest.fixture
async def auth(env: dict[str, str]) -> AsyncIterator[Auth]:
    """authdb in this process, on the CLI's database, to look at what an import wrote."""
    settings = Settings(
        _env_file=None,
        database_url=env["AUTHDB_DATABASE_URL"],
        secret_key=SECRET,
        **FAST_HASHING,
    )
    auth = Auth(settings)
    await auth.startup()
    yield auth
    await auth.shutdown()


def _import(
    env: dict[str, str], source: str, path: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    return invoke_cli(["users", "import", "--from", source, *flags, str(path)], env=env)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _ok(result: subprocess.CompletedProcess[str]) -> list[str]:
    """A successful run's stderr lines (its notes)."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stderr.splitlines()


def _refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """A refused run's stderr lines: exit 1, nothing on stdout, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


async def _users(auth: Auth) -> dict[str, User]:
    async with auth.core.sessionmaker() as db:
        return {u.username: u for u in (await db.scalars(select(User))).all()}


async def _count(auth: Auth) -> int:
    async with auth.core.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(User)) or 0)


# --- exports, one record a line so that each one's line is known ------------------------------


def _array(records: list[Any]) -> str:
    """A JSON array with element ``i`` (from 0) on line ``i + 2``."""
    return "[\n" + ",\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n]\n"


def _django(model: str, pk: int, username: str, **fields: Any) -> dict[str, Any]:
    """A dumpdata record of ``model`` with a user's fields (``password``: a Django bcrypt)."""
    values = {
        "username": username,
        "email": f"{username}@example.com",
        "password": f"bcrypt${BCRYPT}",
        "is_superuser": False,
        "is_active": True,
        "first_name": "",
        "last_name": "",
        **fields,
    }
    return {"model": model, "pk": pk, "fields": values}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kc_password() -> dict[str, Any]:
    """A Keycloak pbkdf2-sha256 credential of PASSWORD (1000 iterations: cheap)."""
    salt = b"keycloak-salt-16"
    key = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, 1000, dklen=64)
    return {
        "type": "password",
        "secretData": json.dumps({"value": _b64(key), "salt": _b64(salt)}),
        "credentialData": json.dumps({"hashIterations": 1000, "algorithm": "pbkdf2-sha256"}),
    }


def _kc_user(username: str, *credentials: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "id": f"id-{username}",
        "username": username,
        "email": f"{username}@example.com",
        "enabled": True,
        "emailVerified": True,
        "credentials": list(credentials) or [_kc_password()],
        **fields,
    }


def _realm(users: list[Any]) -> str:
    """A realm export with user ``i`` (from 0) on line ``i + 2``."""
    body = ",\n".join(u if isinstance(u, str) else json.dumps(u) for u in users)
    return '{"realm": "r", "users": [\n' + body + "\n]}\n"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _fastapi_row(email: str, source_id: str = "", *, superuser: bool = False) -> list[str]:
    return [source_id, email, BCRYPT, "t", "t" if superuser else "f", "t"]


def _fastapi_csv(rows: list[list[str]]) -> str:
    return _csv(list(FASTAPI_COLUMNS), rows)


def _fastapi_json(email: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": email,
        "email": email,
        "hashed_password": BCRYPT,
        "is_active": True,
        "is_superuser": False,
        "is_verified": True,
        **fields,
    }


def _supabase_csv(rows: list[tuple[str, str]]) -> str:
    """Supabase's auth.users with (email, raw_user_meta_data) rows."""
    header = ["id", "email", "encrypted_password", "raw_user_meta_data", "is_super_admin"]
    body = [[f"u{n}", email, BCRYPT, meta, "f"] for n, (email, meta) in enumerate(rows)]
    return _csv(header, body)


def _jsonl_user(username: str, **fields: Any) -> dict[str, Any]:
    user = {"username": username, "email": f"{username}@example.com", "hashed_password": BCRYPT}
    return {**user, **fields}


# --- Django: the user model's records only --------------------------------------------------


async def test_a_django_dump_imports_the_user_model_only(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    # A whole-project dump: other models with password and is_superuser fields are not users.
    dump = _write(
        tmp_path,
        "dump.json",
        _array(
            [
                _django("auth.user", 1, "alice"),
                _django("shop.customer", 1, "carl", is_superuser=True),
                {"model": "auth.group", "pk": 1, "fields": {"name": "staff", "permissions": []}},
                _django("shop.vendor", 1, "vera", is_superuser=True),
                _django("auth.user", 2, "bob"),
            ]
        ),
    )
    result = _import(env, "django", dump)
    assert _ok(result) == []  # no superuser among auth.user, so no note
    assert result.stdout.strip() == "imported 2 users"
    users = await _users(auth)
    assert sorted(users) == ["alice", "bob"]
    assert not any(u.is_superuser for u in users.values())

    # --model reads that model instead (its label in any case), and only that one.
    result = _import(env, "django", dump, "--model", "Shop.Customer")
    assert _ok(result) == ["note: superusers (1): carl"]
    assert result.stdout.strip() == "imported 1 user"
    users = await _users(auth)
    assert sorted(users) == ["alice", "bob", "carl"]
    assert users["carl"].is_superuser is True

    # No auth.user at all, but a model with passwords: one line saying what to pass.
    customers = _write(
        tmp_path,
        "customers.json",
        _array(
            [
                {"model": "auth.group", "pk": 1, "fields": {"name": "staff", "permissions": []}},
                _django("shop.customer", 2, "cora"),
            ]
        ),
    )
    assert _refused(_import(env, "django", customers)) == [
        "error: customers.json: no 'auth.user' records in this file; records of "
        "'shop.customer' have passwords: for a custom user model pass --model"
    ]

    # --model means nothing to another format: refused, not ignored.
    jsonl = _write(tmp_path, "users.jsonl", json.dumps(_jsonl_user("dan")) + "\n")
    assert _refused(_import(env, "jsonl", jsonl, "--model", "shop.customer")) == [
        "error: --model applies to --from django only"
    ]
    assert await _count(auth) == 3


# --- JSON: duplicate keys and huge integers ---------------------------------------------------


def _twice(record: dict[str, Any], key: str, first: Any) -> str:
    """``record`` as JSON with ``key`` (at any depth) given twice: ``first``, then its value
    in ``record``; the last one is what ``json.loads`` would silently keep."""
    text = json.dumps(record)
    assert text.count(f'"{key}": ') == 1
    return text.replace(f'"{key}": ', f'"{key}": {json.dumps(first)}, "{key}": ', 1)


def _with_number(record: dict[str, Any], key: str) -> str:
    """``record`` as JSON with ``key`` holding HUGE (an integer of 5,000 digits)."""
    return json.dumps({**record, key: 0}).replace(f'"{key}": 0', f'"{key}": {HUGE}')


def _bad_json_cases() -> list[tuple[str, str, str, list[str]]]:
    """(format, file name, text, the refused import's stderr lines)."""
    dup = "the key 'is_superuser' appears twice in one object"
    good_jsonl = json.dumps(_jsonl_user("alice"))
    secret_twice = '{"value": "AAAA", "value": "QUFB", "salt": "c2FsdA=="}'
    credential_twice = {**_kc_password(), "secretData": secret_twice}
    huge_iterations = {
        **_kc_password(),
        "credentialData": '{"hashIterations": ' + HUGE + ', "algorithm": "pbkdf2-sha256"}',
    }
    good_fastapi = json.dumps(_fastapi_json("ann@example.com"))
    dup_fastapi = _twice(_fastapi_json("eve@example.com", is_superuser=True), "is_superuser", False)
    huge_fastapi = _with_number(_fastapi_json("hal@example.com"), "id")
    return [
        # authdb's JSON Lines: bad lines naming the reason.
        (
            "jsonl",
            "users.jsonl",
            "\n".join(
                [
                    good_jsonl,
                    _twice(_jsonl_user("eve", is_superuser=True), "is_superuser", False),
                    _with_number(_jsonl_user("hal"), "is_superuser"),
                ]
            ),
            [
                f"error: users.jsonl line 2: not valid JSON ({dup})",
                "error: users.jsonl line 3: not valid JSON (a number of 5000 digits)",
                "error: 2 bad lines; nothing imported",
            ],
        ),
        # fastapi-users JSON Lines: bad lines.
        (
            "fastapi-users",
            "users.jsonl",
            "\n".join([good_fastapi, dup_fastapi, huge_fastapi]),
            [
                f"error: users.jsonl line 2: not valid JSON ({dup})",
                "error: users.jsonl line 3: not valid JSON (a number of 5000 digits)",
                "error: 2 bad lines; nothing imported",
            ],
        ),
        # JSON documents: the whole file is refused in one line naming the line.
        (
            "fastapi-users",
            "users.json",
            _array([good_fastapi, dup_fastapi]),
            [f"error: users.json: line 3: not valid JSON ({dup})"],
        ),
        (
            "fastapi-users",
            "users.json",
            _array([good_fastapi, huge_fastapi]),
            ["error: users.json: line 3: not valid JSON (a number of 5000 digits)"],
        ),
        (
            "django",
            "dump.json",
            _array(
                [
                    _django("auth.user", 1, "alice"),
                    _twice(
                        _django("auth.user", 2, "eve", is_superuser=True), "is_superuser", False
                    ),
                ]
            ),
            [f"error: dump.json: line 3: not valid JSON ({dup})"],
        ),
        (
            "django",
            "dump.json",
            _array(
                [
                    _django("auth.user", 1, "alice"),
                    _with_number(_django("auth.user", 2, "hal"), "pk"),
                ]
            ),
            ["error: dump.json: line 3: not valid JSON (a number of 5000 digits)"],
        ),
        (
            "keycloak",
            "realm.json",
            _realm(
                [
                    _kc_user("alice"),
                    _twice(
                        _kc_user("eve", requiredActions=[]), "requiredActions", ["UPDATE_PASSWORD"]
                    ),
                ]
            ),
            [
                "error: realm.json: line 3: not valid JSON (the key 'requiredActions' appears "
                "twice in one object)"
            ],
        ),
        (
            "keycloak",
            "realm.json",
            _realm([_kc_user("alice"), _with_number(_kc_user("hal"), "createdTimestamp")]),
            ["error: realm.json: line 3: not valid JSON (a number of 5000 digits)"],
        ),
        # JSON inside a field: that line is bad.
        (
            "keycloak",
            "realm.json",
            _realm(
                [
                    _kc_user("alice"),
                    _kc_user("eve", credential_twice),
                    _kc_user("hal", huge_iterations),
                ]
            ),
            [
                "error: realm.json line 3: the password credential's secretData is not JSON",
                "error: realm.json line 4: the password credential's credentialData is not JSON",
                "error: 2 bad lines; nothing imported",
            ],
        ),
    ]


async def test_duplicate_keys_and_huge_integers_are_bad_json(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    for source, name, text, expected in _bad_json_cases():
        path = _write(tmp_path, name, text)
        lines = _refused(_import(env, source, path))
        assert len(lines) == len(expected), (source, name, lines)
        for line, start in zip(lines, expected, strict=True):
            assert line.startswith(start), (source, line)
        assert HUGE[:20] not in "".join(lines)  # the number itself is never echoed
    assert await _count(auth) == 0


def test_fastapi_users_jsonl_names_the_duplicate_key() -> None:
    record = _fastapi_json("eve@example.com", is_superuser=True)
    reading = FORMATS["fastapi-users"](_twice(record, "is_superuser", False) + "\n")
    [error] = reading.errors
    assert "'is_superuser' appears twice" in error.message


def test_unreadable_supabase_metadata_costs_the_name_not_the_import() -> None:
    # Users write raw_user_meta_data themselves (auth.updateUser): it must not stop a move.
    reading = FORMATS["supabase"](
        _supabase_csv(
            [
                ("ann@example.com", '{"full_name": "Ann"}'),
                ("eve@example.com", '{"full_name": "Eve", "full_name": "Admin"}'),
                ("hal@example.com", '{"full_name": "Hal", "age": ' + HUGE + "}"),
                ("ivy@example.com", "not json"),
            ]
        )
    )
    assert reading.errors == []
    assert [u.full_name for u in reading.users] == ["Ann", None, None, None]


# --- full names another system allowed ----------------------------------------------------------


async def test_a_refused_full_name_is_left_out_with_a_note(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    # Django allows 150 + 150 characters: over authdb's 256 together.
    dump = _write(
        tmp_path,
        "dump.json",
        _array(
            [
                _django("auth.user", 1, "dora", first_name="D" * 150, last_name="E" * 150),
                _django("auth.user", 2, "eddy", first_name="Ed", last_name="Normal"),
            ]
        ),
    )
    result = _import(env, "django", dump)
    assert _ok(result) == [
        "note: line 2: full name not imported: Full name must be at most 256 characters long"
    ]
    assert result.stdout.strip() == "imported 2 users"

    # A right-to-left override in Supabase's user metadata (which users set themselves).
    users_csv = _write(
        tmp_path,
        "users.csv",
        _supabase_csv(
            [
                ("fay@example.com", '{"full_name": "Fay"}'),
                ("eve@example.com", json.dumps({"full_name": "Eve \u202eexe.gnp"})),
            ]
        ),
    )
    result = _import(env, "supabase", users_csv)
    assert _ok(result) == [
        "note: line 3: full name not imported: Full name must not contain control characters"
    ]

    # An escape sequence in a Keycloak first name.
    realm = _write(
        tmp_path, "realm.json", _realm([_kc_user("kim", firstName="Kim\x1b[2J", lastName="K")])
    )
    result = _import(env, "keycloak", realm)
    assert _ok(result) == [
        "note: line 2: full name not imported: Full name must not contain control characters"
    ]
    assert "\x1b" not in result.stderr

    users = await _users(auth)
    assert users["dora"].full_name is None and users["eddy"].full_name == "Ed Normal"
    assert users["eve"].full_name is None and users["fay"].full_name == "Fay"
    assert users["kim"].full_name is None
    assert len(users) == 5  # every user came in, names or not

    # authdb's own format is the operator's to fix: there the same names are bad lines.
    jsonl = _write(
        tmp_path,
        "users.jsonl",
        json.dumps(_jsonl_user("joan", full_name="J" * 257))
        + "\n"
        + json.dumps(_jsonl_user("jay", full_name="Jay \u202e"))
        + "\n",
    )
    assert _refused(_import(env, "jsonl", jsonl)) == [
        "error: users.jsonl line 1: Full name must be at most 256 characters long",
        "error: users.jsonl line 2: Full name must not contain control characters",
        "error: 2 bad lines; nothing imported",
    ]
    assert await _count(auth) == 5


# --- nothing from the file reaches the terminal raw ---------------------------------------------

_RAW = ("\x1b", "\x07", "\r", "\u202e")


def _no_raw_controls(result: subprocess.CompletedProcess[str]) -> None:
    for char in _RAW:
        assert char not in result.stderr and char not in result.stdout, (char, result.stderr)


async def test_values_from_the_file_are_escaped_on_the_terminal(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    # A Keycloak credential type that would retitle the terminal and clear the line.
    hostile = "otp\x1b]0;owned\x07\r\x1b[2K"
    realm = _write(
        tmp_path, "realm.json", _realm([_kc_user("kim", _kc_password(), {"type": hostile})])
    )
    result = _import(env, "keycloak", realm)
    _no_raw_controls(result)
    assert _ok(result) == [
        "note: line 2: second factor ('otp\\x1b]0;owned\\x07\\r\\x1b[2K') not carried over: "
        "they set one up again from /account"
    ]

    # A password algorithm of the same kind, refused.
    credential = _kc_password()
    credential["credentialData"] = json.dumps(
        {"hashIterations": 1000, "algorithm": "\x1b[31mmd5\r"}
    )
    realm = _write(tmp_path, "realm2.json", _realm([_kc_user("lee", credential)]))
    result = _import(env, "keycloak", realm)
    _no_raw_controls(result)
    assert _refused(result) == [
        "error: realm2.json line 2: password algorithm '\\x1b[31mmd5\\r' is not supported "
        "(supported: pbkdf2, pbkdf2-sha256, pbkdf2-sha512, argon2); nothing imported"
    ]

    # A CSV header naming its columns with escapes and a carriage return.
    # (Quoted by hand: the csv module leaves a lone "\r" unquoted, which ends the row.)
    header = 'id,email,\x1b[2Jhashed_password,"is_active\r",is_superuser,is_verified\n'
    row = _csv(list(FASTAPI_COLUMNS), [_fastapi_row("ann@example.com")]).split("\n", 1)[1]
    users_csv = _write(tmp_path, "users.csv", header + row)
    result = _import(env, "fastapi-users", users_csv)
    _no_raw_controls(result)
    [line] = _refused(result)
    assert line.startswith("error: users.csv: the CSV header has no column hashed_password, ")
    assert "'\\x1b[2Jhashed_password', 'is_active\\r', 'is_superuser'" in line

    # A Django model label, named in the hint for --model.
    dump = _write(tmp_path, "dump.json", _array([_django("shop\x1b[8m.customer", 1, "carl")]))
    result = _import(env, "django", dump)
    _no_raw_controls(result)
    assert "records of 'shop\\x1b[8m.customer' have passwords" in _refused(result)[0]
    assert sorted(await _users(auth)) == ["kim"]


# --- usernames made from emails ------------------------------------------------------------------


async def test_thousands_of_users_of_one_local_part_are_numbered_in_one_pass(
    env: dict[str, str], auth: Auth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await provisioning.create_user(
        auth.core, username="info-5", email="someone@example.org", password=PASSWORD,
        client=CLI_CLIENT,
    )  # fmt: skip
    many = 3000
    emails = [f"info@d{n}.example.com" for n in range(1, many + 1)]
    supabase = _supabase_csv([(email, "") for email in emails])
    fastapi = "\n".join(json.dumps(_fastapi_json(email)) for email in emails) + "\n"
    checked = f"checked: {many} users would be imported; nothing written (--dry-run)"
    for source, name, text in (
        ("supabase", "users.csv", supabase),
        ("fastapi-users", "u.jsonl", fastapi),
    ):
        result = _import(env, source, _write(tmp_path, name, text), "--dry-run")
        assert _ok(result) == [] and result.stdout.strip() == checked, source

    # The names the dry run chose: info, info-2 ... with the taken info-5 passed over. Each
    # lookup of taken names covers every user at once: a handful of lookups, not one a number.
    lookups: list[int] = []
    real_taken = importing._taken

    async def counted(*args: Any) -> set[str]:
        lookups.append(1)
        return await real_taken(*args)

    monkeypatch.setattr(importing, "_taken", counted)
    options = ImportOptions(source="supabase", hash_field="encrypted_password")
    planned = await importing.plan(
        auth.core, FORMATS["supabase"](supabase), options, progress=NoProgress()
    )
    names = [user.username for user in planned.users]
    assert names[:6] == ["info", "info-2", "info-3", "info-4", "info-6", "info-7"]
    assert names[-1] == f"info-{many + 1}"
    assert len(set(names)) == many and "info-5" not in names
    assert len(lookups) <= 4, len(lookups)

    # The same numbering written for real (a few users: the mechanism is the same).
    few = _write(
        tmp_path,
        "few.csv",
        _fastapi_csv([_fastapi_row(e, str(n)) for n, e in enumerate(emails[:7], 1)]),
    )
    id_map = tmp_path / "ids.csv"
    assert _ok(_import(env, "fastapi-users", few, "--id-map", str(id_map))) == []
    with id_map.open(newline="", encoding="utf-8") as rows:
        mapped = {row["source_id"]: row["username"] for row in csv.DictReader(rows)}
    assert mapped == {
        "1": "info", "2": "info-2", "3": "info-3", "4": "info-4", "5": "info-6", "6": "info-7",
        "7": "info-8",
    }  # fmt: skip
    assert sorted(await _users(auth)) == sorted([*mapped.values(), "info-5"])


# --- --id-map ----------------------------------------------------------------------------------


async def test_the_id_map_is_a_new_file_made_before_importing(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    users_csv = _write(tmp_path, "users.csv", _fastapi_csv([_fastapi_row("ann@example.com", "1")]))

    def refused(map_path: Path) -> str:
        [line] = _refused(_import(env, "fastapi-users", users_csv, "--id-map", str(map_path)))
        return line

    # An existing file: refused before anything is imported, and left as it was.
    existing = _write(tmp_path, "existing.csv", "the application's own data\n")
    assert refused(existing) == f"error: --id-map {existing} exists already: give a new file name"
    assert existing.read_text() == "the application's own data\n"
    assert await _count(auth) == 0

    # A symbolic link, to a file that does not exist yet or to one that does: never followed.
    target = tmp_path / "elsewhere.csv"
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(target)
    assert "exists already" in refused(dangling)
    assert not target.exists() and dangling.is_symlink()
    victim = _write(tmp_path, "victim.txt", "keep me\n")
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    assert "exists already" in refused(link)
    assert victim.read_text() == "keep me\n"

    # A folder, or a path in a folder that does not exist.
    folder = tmp_path / "maps"
    folder.mkdir()
    assert "exists already" in refused(folder)
    assert list(folder.iterdir()) == []
    missing = tmp_path / "no-such-folder" / "map.csv"
    assert refused(missing).startswith(f"error: cannot create the --id-map file {missing}: ")
    assert not missing.parent.exists()
    assert await _count(auth) == 0

    # Refused for a bad line: nothing imported, so no map is left behind either.
    bad = _write(
        tmp_path,
        "bad.csv",
        _fastapi_csv([_fastapi_row("bob@example.com", "2"), _fastapi_row("not an email", "3")]),
    )
    new_map = tmp_path / "new.csv"
    lines = _refused(_import(env, "fastapi-users", bad, "--id-map", str(new_map)))
    assert lines[-1].endswith("nothing imported")
    assert not new_map.exists()
    assert await _count(auth) == 0

    # The control: a new path gets the map, readable by its owner only.
    assert _ok(_import(env, "fastapi-users", users_csv, "--id-map", str(new_map))) == []
    users = await _users(auth)
    assert sorted(users) == ["ann"]
    header = "line,source_id,source_username,authdb_id,username"
    assert new_map.read_text().splitlines() == [header, f"2,1,,{users['ann'].id},ann"]
    assert stat.S_IMODE(os.stat(new_map).st_mode) & 0o077 == 0


async def test_id_map_cells_never_start_a_spreadsheet_formula(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    ids = ['=HYPERLINK("http://evil.example/","x")', "+1+2", "-3", "@SUM(A1)", "\t=1", "42"]
    rows = [_fastapi_row(f"user{n}@example.com", source_id) for n, source_id in enumerate(ids)]
    users_csv = _write(tmp_path, "users.csv", _fastapi_csv(rows))
    id_map = tmp_path / "ids.csv"
    assert _ok(_import(env, "fastapi-users", users_csv, "--id-map", str(id_map))) == []
    with id_map.open(newline="", encoding="utf-8") as source:
        written = [row["source_id"] for row in csv.DictReader(source)]
    assert written == [
        '\'=HYPERLINK("http://evil.example/","x")',
        "'+1+2",
        "'-3",
        "'@SUM(A1)",
        "'\t=1",
        "42",
    ]
    assert await _count(auth) == len(ids)


# --- superusers ----------------------------------------------------------------------------------


async def test_imported_superusers_are_listed_and_audited(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    users_csv = _write(
        tmp_path,
        "users.csv",
        _fastapi_csv(
            [
                _fastapi_row("boss@example.com", "1", superuser=True),
                _fastapi_row("ann@example.com", "2"),
                _fastapi_row("chief@example.com", "3", superuser=True),
            ]
        ),
    )
    note = "note: superusers (2): boss, chief"
    assert note in _ok(_import(env, "fastapi-users", users_csv, "--dry-run"))
    result = _import(env, "fastapi-users", users_csv)
    assert _ok(result) == [note]
    assert result.stdout.strip() == "imported 3 users"

    users = await _users(auth)
    events = [e for e in await list_events(auth.core) if e.event == "user_created"]
    details = {e.user_id: e.detail for e in events}
    assert details == {
        users["boss"].id: {"imported_from": "fastapi-users", "is_superuser": True},
        users["ann"].id: {"imported_from": "fastapi-users"},
        users["chief"].id: {"imported_from": "fastapi-users", "is_superuser": True},
    }


# --- Keycloak ----------------------------------------------------------------------------------


async def test_a_keycloak_user_with_two_password_credentials_is_a_bad_line(
    env: dict[str, str], auth: Auth, tmp_path: Path
) -> None:
    # Which of the two would be the password? Keycloak itself keeps one.
    realm = _write(
        tmp_path,
        "realm.json",
        _realm([_kc_user("alice"), _kc_user("mallory", _kc_password(), _kc_password())]),
    )
    assert _refused(_import(env, "keycloak", realm)) == [
        "error: realm.json line 3: has 2 password credentials; Keycloak uses one; nothing imported"
    ]
    assert await _count(auth) == 0
