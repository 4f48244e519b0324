"""Real exports of Django and Keycloak users, for the ``authdb users import`` tests.

Django's is made by Django itself: a minimal project in a temporary directory, migrated, users
created through ``django.contrib.auth`` with each of its password hashers, then dumped with
``python -m django dumpdata auth.user --indent 2``. Keycloak's (no server here) is written as
``kc.sh export --users realm_file`` writes it: Jackson's pretty printer, each password
credential's hash in the ``secretData``/``credentialData`` JSON strings, computed as Keycloak's
hash providers compute them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from argon2.low_level import Type, hash_secret_raw
from sqlalchemy import select

from authdb.db.models import User
from tests.cli import FAST_HASHING
from tests.conftest import Harness

# What a hash upgraded by authdb starts with (the tests' argon2id parameters).
UPGRADED_PREFIX = (
    f"$argon2id$v=19$m={FAST_HASHING['password_hash_memory_kib']},"
    f"t={FAST_HASHING['password_hash_time_cost']},p={FAST_HASHING['password_hash_parallelism']}$"
)


# --- Django ---------------------------------------------------------------------------------

_SETTINGS = """\
from pathlib import Path

SECRET_KEY = "django-insecure-test-key-for-the-authdb-import-tests-0123456789"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(__file__).resolve().parent / "django.sqlite3"),
    }
}
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.BCryptPasswordHasher",
]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

# Creates the users described in the JSON file argv[1]; writes what else the tests need
# (a hash of a hasher authdb does not read) to the JSON file argv[2].
_MAKE_USERS = """\
import json
import sys

import django

django.setup()

from django.contrib.auth.hashers import ScryptPasswordHasher, make_password
from django.contrib.auth.models import User

with open(sys.argv[1], encoding="utf-8") as specs:
    for spec in json.load(specs):
        names = {"first_name": spec["first_name"], "last_name": spec["last_name"]}
        if spec["superuser"]:
            user = User.objects.create_superuser(
                spec["username"], spec["email"], spec["password"], **names
            )
            continue
        user = User(username=spec["username"], email=spec["email"], **names)
        if spec["hasher"] is None:
            user.set_password(spec["password"])
        else:
            user.password = make_password(spec["password"], hasher=spec["hasher"])
        if spec["unusable"]:
            user.set_unusable_password()
        user.is_active = spec["active"]
        user.save()

scrypt = ScryptPasswordHasher()
with open(sys.argv[2], "w", encoding="utf-8") as out:
    json.dump({"scrypt": scrypt.encode("scrypt password 1", scrypt.salt())}, out)
"""


@dataclass(frozen=True)
class DjangoUser:
    """One user of the Django project; ``hasher`` None: the default (PBKDF2PasswordHasher)."""

    username: str
    password: str
    hasher: str | None = None
    first_name: str = ""
    last_name: str = ""
    superuser: bool = False
    active: bool = True
    unusable: bool = False

    @property
    def email(self) -> str:
        return f"{self.username.split('+')[0]}@example.com"

    @property
    def full_name(self) -> str | None:
        return f"{self.first_name} {self.last_name}".strip() or None


DJANGO_USERS = (
    DjangoUser(
        "root", "Analytical Engine 1843", first_name="Ada", last_name="Lovelace", superuser=True
    ),
    DjangoUser("bob", "bob's sha1 passphrase", "pbkdf2_sha1"),
    DjangoUser("carol", "Grüße aus Köln, Carol", "argon2"),
    # Longer than bcrypt's 72 bytes: bcrypt_sha256 exists for exactly that.
    DjangoUser("dave", "dave's very long passphrase " * 4, "bcrypt_sha256"),
    DjangoUser("erin", "erin's bcrypt passphrase", "bcrypt"),
    # Django allows "@" and "+" in usernames, authdb does not.
    DjangoUser("frank+dev@corp", "frank's passphrase", "argon2"),
    DjangoUser("grace", "grace's passphrase", "argon2", active=False),
    DjangoUser("nopass", "once had this one", "argon2", unusable=True),
)


@dataclass(frozen=True)
class DjangoExport:
    """``users.json`` as dumpdata wrote it, its records, and a scrypt hash Django made."""

    path: Path
    text: str
    records: dict[str, dict[str, Any]]  # by username
    scrypt_hash: str


def build_django_export(directory: Path) -> DjangoExport:
    """A Django project in ``directory``: migrated, DJANGO_USERS created, users dumped."""
    (directory / "authdb_import_settings.py").write_text(_SETTINGS)
    (directory / "make_users.py").write_text(_MAKE_USERS)
    specs = [{**asdict(u), "email": u.email} for u in DJANGO_USERS]
    (directory / "specs.json").write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHDB_", "DJANGO_"))}
    env |= {"DJANGO_SETTINGS_MODULE": "authdb_import_settings", "PYTHONPATH": str(directory)}
    out = directory / "export"
    out.mkdir()
    for command in (
        [sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
        [sys.executable, "make_users.py", "specs.json", "extra.json"],
        [
            sys.executable,
            "-m",
            "django",
            "dumpdata",
            "auth.user",
            "--indent",
            "2",
            "-o",
            str(out / "users.json"),
        ],
    ):
        done = subprocess.run(
            command, cwd=directory, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    text = (out / "users.json").read_text(encoding="utf-8")
    records = {r["fields"]["username"]: r for r in json.loads(text)}
    scrypt_hash = json.loads((directory / "extra.json").read_text())["scrypt"]
    return DjangoExport(out / "users.json", text, records, scrypt_hash)


def django_record_line(text: str, username: str) -> int:
    """The line (from 1) where the dumped record of ``username`` opens its ``{``: dumpdata
    writes each record's braces alone on a line, unindented."""
    lines = text.splitlines()
    at = lines.index(f'    "username": {json.dumps(username)},')
    while lines[at] != "{":
        at -= 1
    return at + 1


# --- Keycloak -------------------------------------------------------------------------------

# Keycloak's hash providers: algorithm -> (HMAC digest, derived key bytes).
_KEYCLOAK_PBKDF2 = {
    "pbkdf2": ("sha1", 64),
    "pbkdf2-sha256": ("sha256", 32),
    "pbkdf2-sha512": ("sha512", 64),
}
_CREATED = 1718000000000  # createdTimestamp / createdDate: Java milliseconds


def _compact(value: Any) -> str:
    """JSON as Keycloak's JsonSerialization.writeValueAsString writes it (no spaces)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")  # java.util.Base64: padded


def keycloak_password(password: str, algorithm: str, iterations: int) -> dict[str, Any]:
    """A password credential as Keycloak stores and exports it, its hash computed as Keycloak
    computes it (PBKDF2WithHmacSHA* or BouncyCastle's Argon2, password as UTF-8, 16-byte
    random salt)."""
    salt = os.urandom(16)
    secret = password.encode("utf-8")
    parameters: dict[str, Any] = {}
    if algorithm == "argon2":
        key = hash_secret_raw(
            secret,
            salt,
            time_cost=iterations,
            memory_cost=7168,
            parallelism=1,
            hash_len=32,
            type=Type.ID,
            version=19,
        )
        parameters = {
            "hashLength": ["32"],
            "memory": ["7168"],
            "type": ["id"],
            "version": ["1.3"],
            "parallelism": ["1"],
        }
    else:
        digest, length = _KEYCLOAK_PBKDF2[algorithm]
        key = hashlib.pbkdf2_hmac(digest, secret, salt, iterations, dklen=length)
    return {
        "id": str(uuid.uuid4()),
        "type": "password",
        "userLabel": "My password",
        "createdDate": _CREATED,
        "secretData": _compact(
            {"value": _b64(key), "salt": _b64(salt), "additionalParameters": {}}
        ),
        "credentialData": _compact(
            {
                "hashIterations": iterations,
                "algorithm": algorithm,
                "additionalParameters": parameters,
            }
        ),
    }


def keycloak_otp() -> dict[str, Any]:
    """A TOTP credential as Keycloak exports it (not carried over)."""
    return {
        "id": str(uuid.uuid4()),
        "type": "otp",
        "userLabel": "phone",
        "createdDate": _CREATED,
        "secretData": _compact({"value": "JBSWY3DPEHPK3PXPJBSWY3DP"}),
        "credentialData": _compact(
            {"subType": "totp", "digits": 6, "counter": 0, "period": 30, "algorithm": "HmacSHA1"}
        ),
    }


def keycloak_user(
    username: str,
    *,
    credentials: list[dict[str, Any]],
    email: str | None = "",
    first_name: str | None = None,
    last_name: str | None = None,
    email_verified: bool = True,
    enabled: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A UserRepresentation in the order Keycloak exports its fields; ``email=""``: made
    from the username, None: no email at all (Keycloak then leaves the field out)."""
    user: dict[str, Any] = {"id": str(uuid.uuid4()), "username": username}
    if first_name is not None:
        user["firstName"] = first_name
    if last_name is not None:
        user["lastName"] = last_name
    if email is not None:
        user["email"] = email or f"{username}@example.com"
    user |= {
        "emailVerified": email_verified,
        "createdTimestamp": _CREATED,
        "enabled": enabled,
        "totp": any(c["type"] == "otp" for c in credentials),
        **extra,
        "credentials": credentials,
        "disableableCredentialTypes": [],
        "requiredActions": [],
        "realmRoles": ["default-roles-demo"],
        "notBefore": 0,
        "groups": [],
    }
    return user


def keycloak_realm(users: list[dict[str, Any]]) -> str:
    """A realm export holding ``users``, as ``kc.sh export --users realm_file`` writes it."""
    realm = {
        "id": "b0a9f1d4-3c1e-4d0e-9a57-0f5a4c7e2d11",
        "realm": "demo",
        "notBefore": 0,
        "defaultSignatureAlgorithm": "RS256",
        "enabled": True,
        "sslRequired": "external",
        "registrationAllowed": False,
        "roles": {
            "realm": [
                {
                    "id": str(uuid.uuid4()),
                    "name": "default-roles-demo",
                    "composite": True,
                    "clientRole": False,
                    "attributes": {},
                }
            ],
            "client": {"ci": []},
        },
        "requiredCredentials": ["password"],
        "passwordPolicy": "length(8)",
        "users": users,
        "clients": [
            {
                "id": str(uuid.uuid4()),
                "clientId": "ci",
                "enabled": True,
                "serviceAccountsEnabled": True,
                "redirectUris": [],
                "attributes": {},
            }
        ],
        "keycloakVersion": "25.0.6",
    }
    return jackson(realm) + "\n"


def jackson(value: Any, level: int = 0) -> str:
    """JSON as Jackson's DefaultPrettyPrinter writes it: ``"key" : value``, two spaces an
    object level, arrays inline (``[ {`` ... ``}, {`` ... ``} ]``, ``[ ]``), ``{ }``."""
    pad = "  " * level
    if isinstance(value, dict):
        if not value:
            return "{ }"
        members = ",\n".join(
            f"{pad}  {json.dumps(key, ensure_ascii=False)} : {jackson(item, level + 1)}"
            for key, item in value.items()
        )
        return "{\n" + members + "\n" + pad + "}"
    if isinstance(value, list):
        if not value:
            return "[ ]"
        return "[ " + ", ".join(jackson(item, level) for item in value) + " ]"
    return json.dumps(value, ensure_ascii=False)


def keycloak_record_line(text: str, username: str) -> int:
    """The line (from 1) where the user object of ``username`` opens its ``{``: on the
    ``"users" : [ {`` line for the first, on ``}, {`` for the others."""
    lines = text.splitlines()
    at = lines.index(f'    "username" : {json.dumps(username, ensure_ascii=False)},')
    while not (lines[at].endswith("{") and lines[at].startswith("  ") and lines[at][2] != " "):
        at -= 1
    return at + 1


# --- authdb ---------------------------------------------------------------------------------


async def stored_users(harness: Harness) -> dict[str, User]:
    """Every user row in authdb's database, by username."""
    async with harness.auth.core.sessionmaker() as db:
        return {u.username: u for u in await db.scalars(select(User))}


async def stored_hash(harness: Harness, username: str) -> str:
    return (await stored_users(harness))[username].hashed_password


async def token(harness: Harness, login: str, password: str) -> httpx.Response:
    """POST /token with a username (or email) and password."""
    return await harness.client.post("/token", data={"username": login, "password": password})


def bad_lines(stderr: str, file: str) -> list[tuple[int, str]]:
    """The ``error: FILE line N: message`` lines of an import refused for several bad lines,
    as (N, message), after checking that the last line counts them and says nothing was
    imported."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == f"error: {len(lines) - 1} bad lines; nothing imported", stderr
    found = []
    for line in lines[:-1]:
        match = re.fullmatch(rf"error: {re.escape(file)} line (\d+): (.+)", line)
        assert match is not None, line
        found.append((int(match[1]), match[2]))
    return found
