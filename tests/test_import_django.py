"""`authdb users import --from django` of a real ``dumpdata auth.user`` export.

The export is made once per module by Django itself (tests/import_helpers_django_keycloak.py):
a project with each of Django's password hashers, its default PBKDF2 at Django's own iteration
count. Each user then signs in to authdb with the password they had in Django, and the stored
hash becomes argon2id.
"""

from __future__ import annotations

import csv
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.cli import invoke_cli, migrated_env
from tests.conftest import Harness
from tests.import_helpers_django_keycloak import (
    DJANGO_USERS,
    UPGRADED_PREFIX,
    DjangoExport,
    bad_lines,
    build_django_export,
    django_record_line,
    stored_hash,
    stored_users,
    token,
)

MakeHarness = Callable[..., Awaitable[Harness]]
# What the username Django allowed becomes in authdb.
RENAMED = {"frank+dev@corp": "frank_dev_corp"}


@pytest.fixture(scope="module")
def django_export(tmp_path_factory: pytest.TempPathFactory) -> DjangoExport:
    return build_django_export(tmp_path_factory.mktemp("django"))


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return migrated_env(database_url, "s" * 40)


def _import(env: dict[str, str], path: Path, *flags: str) -> tuple[int, str, str]:
    done = invoke_cli(["users", "import", "--from", "django", *flags, str(path)], env=env)
    return done.returncode, done.stdout, done.stderr


def test_the_export_is_what_django_writes(django_export: DjangoExport) -> None:
    """The fixture itself: one record per user, each hash of the hasher asked for."""
    prefixes = {
        None: "pbkdf2_sha256$",
        "pbkdf2_sha1": "pbkdf2_sha1$",
        "argon2": "argon2$argon2id$v=19$",
        "bcrypt_sha256": "bcrypt_sha256$$2b$12$",
        "bcrypt": "bcrypt$$2b$12$",
    }
    for user in DJANGO_USERS:
        password = django_export.records[user.username]["fields"]["password"]
        expected = "!" if user.unusable else prefixes[user.hasher]
        assert password.startswith(expected), (user.username, password)
    # Django's own iteration count: 1,000,000 in 5.2, 1,200,000 in 6.0.
    root = django_export.records["root"]["fields"]["password"]
    assert int(root.split("$")[1]) >= 1_000_000
    assert django_export.text.startswith("[\n{\n")
    assert django_export.scrypt_hash.startswith("scrypt$")


async def test_django_users_sign_in_with_their_passwords(
    env: dict[str, str], django_export: DjangoExport, make_harness: MakeHarness, tmp_path: Path
) -> None:
    path, text = django_export.path, django_export.text
    frank_line = django_record_line(text, "frank+dev@corp")
    rename_note = (
        f"note: line {frank_line}: username 'frank+dev@corp' is not allowed in authdb; "
        "imported as 'frank_dev_corp'"
    )
    superusers_note = "note: superusers (1): root"

    code, out, err = _import(env, path, "--dry-run")
    assert code == 0, err
    count = len(DJANGO_USERS)
    assert out.strip() == f"checked: {count} users would be imported; nothing written (--dry-run)"
    assert err.strip().splitlines() == [
        rename_note.replace("imported as", "would be imported as"),
        superusers_note,
    ]
    harness = await make_harness()
    assert await stored_users(harness) == {}

    id_map = tmp_path / "map.csv"
    code, out, err = _import(env, path, "--id-map", str(id_map))
    assert code == 0, err
    assert out.strip() == f"imported {count} users"
    assert err.strip().splitlines() == [rename_note, superusers_note]

    users = await stored_users(harness)
    assert sorted(users) == sorted(RENAMED.get(u.username, u.username) for u in DJANGO_USERS)
    with id_map.open(newline="") as rows:
        mapped = list(csv.DictReader(rows))
    assert len(mapped) == count
    for row in mapped:
        stored = users[row["username"]]
        source = next(
            r for name, r in django_export.records.items()
            if RENAMED.get(name, name) == row["username"]
        )  # fmt: skip
        assert row["source_id"] == str(source["pk"])
        assert row["authdb_id"] == str(stored.id)
        assert row["line"] == str(django_record_line(text, source["fields"]["username"]))

    for user in DJANGO_USERS:
        stored = users[RENAMED.get(user.username, user.username)]
        exported = django_export.records[user.username]["fields"]["password"]
        assert stored.email == user.email
        assert stored.full_name == user.full_name
        assert stored.is_superuser is user.superuser
        assert stored.disabled is not user.active
        assert stored.is_verified is False  # Django keeps no such flag
        if user.unusable:
            assert stored.hashed_password.startswith("!")
            assert stored.hashed_password != exported
        else:
            assert stored.hashed_password == exported  # stored as Django wrote it
    assert users["root"].full_name == "Ada Lovelace"

    for user in DJANGO_USERS:
        name = RENAMED.get(user.username, user.username)
        before = await stored_hash(harness, name)
        wrong = await token(harness, name, user.password + "x")
        assert wrong.status_code == 401, (name, wrong.text)
        assert await stored_hash(harness, name) == before
        right = await token(harness, name, user.password)
        if user.unusable:
            assert right.status_code == 401, right.text
            assert (await token(harness, name, before)).status_code == 401
            assert await stored_hash(harness, name) == before
        elif not user.active:
            assert right.status_code == 400, right.text
            assert right.json()["detail"] == "Inactive user"
            assert await stored_hash(harness, name) == before
        else:
            assert right.status_code == 200, (name, right.text)
            upgraded = await stored_hash(harness, name)
            assert upgraded.startswith(UPGRADED_PREFIX), (name, upgraded)
            again = await token(harness, user.email, user.password)
            assert again.status_code == 200, again.text
            assert await stored_hash(harness, name) == upgraded


def _edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _password_of(export: DjangoExport, username: str) -> str:
    return str(export.records[username]["fields"]["password"])


async def test_bad_lines_are_named_and_nothing_is_imported(
    env: dict[str, str], django_export: DjangoExport, make_harness: MakeHarness, tmp_path: Path
) -> None:
    text = django_export.text
    # A real pbkdf2_sha256 hash, its parts to break one at a time.
    _, _, salt, key = _password_of(django_export, "root").split("$")
    broken = _edit(
        text,
        ('"email": "bob@example.com"', '"email": ""'),
        (_password_of(django_export, "carol"), django_export.scrypt_hash),
        (_password_of(django_export, "dave"), f"pbkdf2_sha256$1000000${salt}$not*base64"),
        ('"email": "erin@example.com"', '"email": "ROOT@example.com"'),
        (_password_of(django_export, "frank+dev@corp"), f"pbkdf2_sha256$0${salt}${key}"),
        (_password_of(django_export, "grace"), f"pbkdf2_sha256$3000001${salt}${key}"),
    )
    path = tmp_path / "users.json"
    path.write_text(broken, encoding="utf-8")

    code, out, err = _import(env, path)
    assert code == 1
    assert out == ""

    def line(username: str) -> int:
        return django_record_line(broken, username)

    invalid = "password is not a valid Django pbkdf2_sha256 hash: "
    expected = [
        (line("bob"), "has no email address"),
        (line("carol"), "password is not a supported password hash (scheme 'scrypt'"),
        (line("dave"), invalid + "the hash must be 16 to 64 bytes of base64"),
        (line("erin"), f"email 'root@example.com' is also on line {line('root')}"),
        (line("frank+dev@corp"), invalid + "iterations must be a positive number"),
        (line("grace"), invalid + "iterations times output blocks must be at most 3,000,000"),
    ]
    found = bad_lines(err, "users.json")
    assert [n for n, _ in found] == [n for n, _ in expected], err
    for (_, message), (_, words) in zip(found, expected, strict=True):
        assert message.startswith(words), (message, words)
    assert salt not in err and key not in err  # no hash is echoed
    assert await stored_users(await make_harness()) == {}


async def test_an_email_already_in_authdb_refuses_the_file_or_is_skipped(
    env: dict[str, str], django_export: DjangoExport, make_harness: MakeHarness
) -> None:
    created = invoke_cli(
        ["createuser", "--username", "ada", "--email", "Root@Example.com", "--password-stdin"],
        env=env,
        stdin="an authdb passphrase\n",
    )
    assert created.returncode == 0, created.stderr
    code, out, err = _import(env, django_export.path)
    assert code == 1
    line = django_record_line(django_export.text, "root")
    assert err.strip().splitlines() == [
        f"error: users.json line {line}: email 'root@example.com' is already registered in "
        "authdb; nothing imported (--skip-existing skips the users authdb already has)"
    ]
    harness = await make_harness()
    assert list(await stored_users(harness)) == ["ada"]

    # Django keeps no "email verified" flag: --mark-verified vouches for every address.
    code, out, err = _import(env, django_export.path, "--skip-existing", "--mark-verified")
    assert code == 0, err
    count = len(DJANGO_USERS)
    assert out.strip() == f"imported {count - 1} users, skipped 1"
    assert (
        f"note: line {line}: skipped: email 'root@example.com' is already registered in authdb"
        in err.splitlines()
    )
    users = await stored_users(harness)
    assert len(users) == count
    assert users["ada"].is_superuser is False  # the account authdb had is left as it was
    assert all(u.is_verified for name, u in users.items() if name != "ada")
