"""`authdb users import --from keycloak` of a realm export.

No Keycloak server here: the export is written as ``kc.sh export --users realm_file`` writes it
(Jackson's layout, each password credential's hash in the ``secretData``/``credentialData`` JSON
strings), the hashes computed as Keycloak's providers compute them: PBKDF2-HMAC-SHA256 (27,500
iterations, 256-bit key), PBKDF2-HMAC-SHA512 (210,000, 512-bit: Keycloak 24's default),
the legacy ``pbkdf2`` (HMAC-SHA1) and argon2id (Keycloak 25's default).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli import invoke_cli, migrated_env
from tests.conftest import Harness
from tests.import_helpers_django_keycloak import (
    UPGRADED_PREFIX,
    bad_lines,
    keycloak_otp,
    keycloak_password,
    keycloak_realm,
    keycloak_record_line,
    keycloak_user,
    stored_hash,
    stored_users,
    token,
)

MakeHarness = Callable[..., Awaitable[Harness]]
FILE = "demo-realm.json"  # kc.sh export --dir DIR --realm demo --users realm_file
# Not NFKC-stable ("ﬁ" becomes "fi"): Keycloak hashed it as typed, authdb re-hashes it
# normalized, and the same typed password still signs in afterwards.
NON_ASCII = "Grüße aus Köln, ﬁne ☕ 密码"


@dataclass(frozen=True)
class Person:
    username: str
    password: str | None  # None: no password credential
    algorithm: str | None = None
    iterations: int = 0
    stored_prefix: str = ""
    full_name: str | None = None
    verified: bool = True
    enabled: bool = True


PEOPLE = (
    Person("alice", "alice's keycloak pass", "pbkdf2-sha256", 27500, "$pbkdf2-sha256$i=27500$",
           "Alice Liddell"),
    Person("bob", "bob's keycloak pass", "pbkdf2-sha512", 210000, "$pbkdf2-sha512$i=210000$",
           verified=False),
    Person("carol", NON_ASCII, "argon2", 5, "$argon2id$v=19$m=7168,t=5,p=1$", "Carol Ó Briain"),
    Person("dave", "dave's legacy pass", "pbkdf2", 20000, "$pbkdf2-sha1$i=20000$",
           enabled=False),
    Person("erin", None),  # signs in through GitHub: no password in Keycloak
)  # fmt: skip


@dataclass(frozen=True)
class Realm:
    path: Path
    text: str
    users: dict[str, dict[str, Any]]


def _user(person: Person) -> dict[str, Any]:
    first, _, last = (person.full_name or "").partition(" ")
    credentials = []
    extra: dict[str, Any] = {}
    if person.password is not None and person.algorithm is not None:
        credentials.append(keycloak_password(person.password, person.algorithm, person.iterations))
    else:
        extra["federatedIdentities"] = [
            {"identityProvider": "github", "userId": "583231", "userName": person.username}
        ]
    if person.username == "alice":
        credentials.insert(0, keycloak_otp())  # not carried over, and not in the way
    return keycloak_user(
        person.username,
        credentials=credentials,
        first_name=first or None,
        last_name=last or None,
        email_verified=person.verified,
        enabled=person.enabled,
        **extra,
    )


def _service_account() -> dict[str, Any]:
    return keycloak_user(
        "service-account-ci",
        credentials=[],
        email=None,
        email_verified=False,
        serviceAccountClientId="ci",
    )


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    users = [_user(p) for p in PEOPLE[:2]] + [_service_account()] + [_user(p) for p in PEOPLE[2:]]
    text = keycloak_realm(users)
    path = tmp_path_factory.mktemp("keycloak") / FILE
    path.write_text(text, encoding="utf-8")
    return Realm(path, text, {u["username"]: u for u in users})


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return migrated_env(database_url, "s" * 40)


def _import(env: dict[str, str], path: Path, *flags: str) -> tuple[int, str, str]:
    done = invoke_cli(["users", "import", "--from", "keycloak", *flags, str(path)], env=env)
    return done.returncode, done.stdout, done.stderr


def test_the_export_is_laid_out_as_keycloak_writes_it(realm: Realm) -> None:
    lines = realm.text.splitlines()
    assert lines[0] == "{" and '  "realm" : "demo",' in lines
    assert '  "users" : [ {' in lines and "  }, {" in lines
    alice = realm.users["alice"]["credentials"][1]
    assert json.loads(alice["credentialData"]) == {
        "hashIterations": 27500, "algorithm": "pbkdf2-sha256", "additionalParameters": {}
    }  # fmt: skip
    assert alice["secretData"].startswith('{"value":"')
    assert f'      "secretData" : {json.dumps(alice["secretData"])},' in lines
    assert keycloak_record_line(realm.text, "alice") == lines.index('  "users" : [ {') + 1


async def test_keycloak_users_sign_in_with_their_passwords(
    env: dict[str, str], realm: Realm, make_harness: MakeHarness, tmp_path: Path
) -> None:
    code, out, err = _import(env, realm.path)
    assert code == 0, err
    assert out.strip() == f"imported {len(PEOPLE)} users, skipped 1"
    line = keycloak_record_line(realm.text, "service-account-ci")
    alice = keycloak_record_line(realm.text, "alice")
    assert err.strip().splitlines() == [
        f"note: line {line}: skipped: a client's service account",
        f"note: line {alice}: second factor ('otp') not carried over: they set one up again "
        "from /account",
    ]

    harness = await make_harness()
    users = await stored_users(harness)
    assert sorted(users) == sorted(p.username for p in PEOPLE)
    for person in PEOPLE:
        stored = users[person.username]
        assert stored.email == f"{person.username}@example.com"
        assert stored.full_name == person.full_name
        assert stored.is_verified is person.verified
        assert stored.disabled is not person.enabled
        assert stored.is_superuser is False
        if person.password is None:
            assert stored.hashed_password.startswith("!")
        else:
            assert stored.hashed_password.startswith(person.stored_prefix), stored.hashed_password

    for person in PEOPLE:
        name = person.username
        before = await stored_hash(harness, name)
        wrong = await token(harness, name, (person.password or "any password") + "x")
        assert wrong.status_code == 401, (name, wrong.text)
        assert await stored_hash(harness, name) == before
        if person.password is None:
            for guess in ("", "any password", before):
                assert (await token(harness, name, guess)).status_code in (401, 422)
            assert await stored_hash(harness, name) == before
            continue
        right = await token(harness, name, person.password)
        if not person.enabled:
            assert right.status_code == 400, right.text
            assert right.json()["detail"] == "Inactive user"
            assert await stored_hash(harness, name) == before
            continue
        assert right.status_code == 200, (name, right.text)
        upgraded = await stored_hash(harness, name)
        assert upgraded.startswith(UPGRADED_PREFIX), (name, upgraded)
        again = await token(harness, f"{name}@example.com", person.password)
        assert again.status_code == 200, again.text
        assert await stored_hash(harness, name) == upgraded


async def test_bad_lines_are_named_and_nothing_is_imported(
    env: dict[str, str], realm: Realm, make_harness: MakeHarness, tmp_path: Path
) -> None:
    good = realm.users["alice"]
    pbkdf2 = good["credentials"][1]

    def with_credential(username: str, **changes: Any) -> dict[str, Any]:
        credential = {**pbkdf2, **changes}
        return {**good, "id": f"id-{username}", "username": username,
                "email": f"{username}@example.com", "credentials": [credential]}  # fmt: skip

    def algorithm(name: str) -> str:
        data = json.loads(pbkdf2["credentialData"])
        return json.dumps({**data, "algorithm": name}, separators=(",", ":"))

    no_email = {**with_credential("henry"), "email": None}
    del no_email["email"]
    users = [
        good,
        with_credential("frank", credentialData=algorithm("bcrypt")),
        with_credential("grace", secretData="not json"),
        no_email,
        with_credential("ivan", credentialData=algorithm("sha256")),
    ]
    text = keycloak_realm(users)
    path = tmp_path / FILE
    path.write_text(text, encoding="utf-8")

    code, out, err = _import(env, path)
    assert code == 1
    assert out == ""
    found = bad_lines(err, FILE)
    expected = [
        (keycloak_record_line(text, "frank"), "password algorithm 'bcrypt' is not supported"),
        (keycloak_record_line(text, "grace"), "the password credential's secretData is not JSON"),
        (keycloak_record_line(text, "henry"), "has no email address"),
        (keycloak_record_line(text, "ivan"), "password algorithm 'sha256' is not supported"),
    ]
    assert [n for n, _ in found] == [n for n, _ in expected], err
    for (_, message), (_, words) in zip(found, expected, strict=True):
        assert message.startswith(words), (message, words)
    assert await stored_users(await make_harness()) == {}


async def test_older_exports_and_pending_password_changes(
    env: dict[str, str], realm: Realm, make_harness: MakeHarness, tmp_path: Path
) -> None:
    # Before Keycloak 12 a credential kept its hash on itself (hashedSaltedValue, salt ...).
    modern = keycloak_password("an old keycloak pass", "pbkdf2-sha256", 27500)
    secret, data = json.loads(modern["secretData"]), json.loads(modern["credentialData"])
    old = {
        "type": "password",
        "hashedSaltedValue": secret["value"],
        "salt": secret["salt"],
        "hashIterations": data["hashIterations"],
        "algorithm": data["algorithm"],
        "digits": 0, "period": 0, "counter": 0, "config": {},
    }  # fmt: skip
    # An administrator's temporary password, which Keycloak would make them change first.
    temporary = {
        **keycloak_user(
            "tina", credentials=[keycloak_password("temporary pass 1", "pbkdf2-sha256", 1000)]
        ),
        "requiredActions": ["UPDATE_PASSWORD"],
    }
    text = keycloak_realm([keycloak_user("olga", credentials=[old]), temporary])
    path = tmp_path / FILE
    path.write_text(text, encoding="utf-8")
    code, out, err = _import(env, path)
    assert code == 0, err
    assert out.strip() == "imported 2 users"
    line = keycloak_record_line(text, "tina")
    assert f"note: line {line}: Keycloak required a new password (UPDATE_PASSWORD)" in err
    harness = await make_harness()
    assert (await token(harness, "olga", "an old keycloak pass")).status_code == 200
    assert (await stored_hash(harness, "olga")).startswith(UPGRADED_PREFIX)
    assert (await token(harness, "tina", "temporary pass 1")).status_code == 401
    assert (await stored_hash(harness, "tina")).startswith("!")


def test_a_user_list_is_not_a_realm_export(env: dict[str, str], tmp_path: Path) -> None:
    # The admin REST API's GET /users: valid JSON, but no hashes in it.
    path = tmp_path / "users.json"
    path.write_text(json.dumps([{"username": "alice", "email": "alice@example.com"}]))
    code, _, err = _import(env, path)
    assert code == 1
    assert "this is a list, not a realm export" in err and len(err.strip().splitlines()) == 1
