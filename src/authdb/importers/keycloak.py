"""Keycloak: a realm export (``kc.sh export --realm R --users realm_file``), JSON.

Users are under ``"users"``, each with ``username``, ``email``, ``emailVerified``, ``enabled``,
``firstName``, ``lastName`` and ``credentials``. A password credential keeps its hash in two
JSON strings: ``secretData`` (``value``, ``salt``: base64) and ``credentialData``
(``algorithm``, ``hashIterations``, ``additionalParameters``). ``pbkdf2``, ``pbkdf2-sha256`` and
``pbkdf2-sha512`` become a PHC PBKDF2 string, ``argon2`` (Keycloak 25's default) an argon2 PHC
string, so both verify as stored (authdb.hashers). Exports from before Keycloak 12, which keep
``hashedSaltedValue``, ``salt``, ``algorithm`` and ``hashIterations`` on the credential itself,
are read too. Service accounts are skipped; users without a password credential (federated,
social) get no password that works, and so do users Keycloak would make change their password
first (``UPDATE_PASSWORD``: an administrator's temporary password, which must not stay valid).
Second factors are not carried over; a note names each user who had one.
"""

from __future__ import annotations

from typing import Any

from authdb.hashers import phc_pbkdf2
from authdb.hashers.base import decode_base64, encode_base64
from authdb.importers import values
from authdb.importers.json_positions import loads, member_with_lines
from authdb.importers.records import (
    BadLine,
    Note,
    Reading,
    Skipped,
    SourceUser,
    UnreadableExport,
)
from authdb.importers.values import shown

_PBKDF2_DIGESTS = {"pbkdf2": "sha1", "pbkdf2-sha256": "sha256", "pbkdf2-sha512": "sha512"}
_ARGON2_VERSIONS = {"1.3": 19, "1.0": 16}


class _Refused(ValueError):
    """A credential this import cannot keep: the message says why."""


def read(text: str) -> Reading:
    """The realm's users; raises UnreadableExport for a file without a ``users`` array."""
    if text.lstrip().startswith("["):
        raise UnreadableExport(
            "this is a list, not a realm export: the admin API's user lists carry no password "
            "hashes (export with kc.sh export --realm R --users realm_file)"
        )
    _, users = member_with_lines(text, "users")
    if users is None:
        raise UnreadableExport(
            'no "users" array in this file (export the realm with --users realm_file, '
            "or import each <realm>-users-<N>.json)"
        )
    reading = Reading()
    for line, record in users:
        if not isinstance(record, dict):
            reading.errors.append(BadLine(line, "expected a user object"))
        elif record.get("serviceAccountClientId"):
            reading.skipped.append(Skipped(line, "a client's service account"))
        else:
            reading.add(_user(line, record))
            reading.notes.extend(_notes(line, record))
    return reading


def _must_change_password(record: dict[str, Any]) -> bool:
    actions = record.get("requiredActions")
    return isinstance(actions, list) and "UPDATE_PASSWORD" in actions


def _notes(line: int, record: dict[str, Any]) -> list[Note]:
    """What this user had that the import leaves behind."""
    notes = []
    if _must_change_password(record) and record.get("credentials"):
        notes.append(
            Note(
                line,
                "Keycloak required a new password (UPDATE_PASSWORD): imported without "
                "one; they choose one through 'forgot password'",
            )
        )
    credentials = record.get("credentials")
    kinds = sorted(
        {shown(c.get("type")) for c in credentials if isinstance(c, dict)} - {"'password'"}
        if isinstance(credentials, list)
        else set()
    )
    if kinds:
        notes.append(
            Note(
                line,
                f"second factor ({', '.join(kinds)}) not carried over: they set one up "
                "again from /account",
            )
        )
    return notes


def _user(line: int, record: dict[str, Any]) -> SourceUser | BadLine:
    try:
        email = values.text("email", record.get("email"))
        if email is None:
            return BadLine(line, "has no email address; authdb needs one (add it in Keycloak)")
        return SourceUser(
            line=line,
            email=email,
            username=values.text("username", record.get("username")),
            full_name=values.full_name(
                "firstName", record.get("firstName"), "lastName", record.get("lastName")
            ),
            hashed_password=None
            if _must_change_password(record)
            else _password_hash(record.get("credentials")),
            is_verified=values.boolean("emailVerified", record.get("emailVerified"), default=False),
            disabled=not values.boolean("enabled", record.get("enabled"), default=True),
            source_id=values.text("id", record.get("id")),
        )
    except (values.FieldError, _Refused) as exc:
        return BadLine(line, str(exc))


def _password_hash(credentials: Any) -> str | None:
    """The stored form of the user's password credential; None if they have none."""
    if credentials is None:
        return None
    if not isinstance(credentials, list):
        raise _Refused("credentials must be a list")
    passwords = [c for c in credentials if isinstance(c, dict) and c.get("type") == "password"]
    if not passwords:
        return None
    if len(passwords) > 1:
        raise _Refused(f"has {len(passwords)} password credentials; Keycloak uses one")
    secret, data = _parts(passwords[0])
    algorithm = data.get("algorithm")
    salt = decode_base64(str(secret.get("salt", "")), padded=True)
    key = decode_base64(str(secret.get("value", "")), padded=True)
    iterations = data.get("hashIterations")
    if salt is None or key is None or not salt or not key:
        raise _Refused("the password credential's salt or value is not base64")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise _Refused("the password credential's hashIterations must be a positive number")
    if algorithm in _PBKDF2_DIGESTS:
        return phc_pbkdf2(_PBKDF2_DIGESTS[algorithm], iterations, salt, key)
    if algorithm == "argon2":
        return _argon2(data.get("additionalParameters"), iterations, salt, key)
    raise _Refused(
        f"password algorithm {str(algorithm)[:40]!r} is not supported "
        "(supported: pbkdf2, pbkdf2-sha256, pbkdf2-sha512, argon2)"
    )


def _parts(credential: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(secret, parameters) of a password credential, in either export format."""
    if "secretData" not in credential and "hashedSaltedValue" in credential:
        # Before Keycloak 12: everything on the credential itself.
        secret = {"value": credential.get("hashedSaltedValue"), "salt": credential.get("salt")}
        return secret, credential
    return _embedded(credential, "secretData"), _embedded(credential, "credentialData")


def _embedded(credential: dict[str, Any], name: str) -> dict[str, Any]:
    """A credential's ``secretData``/``credentialData``: JSON inside a JSON string."""
    try:
        value = loads(credential.get(name) or "")
    except (TypeError, ValueError, RecursionError):
        raise _Refused(f"the password credential's {name} is not JSON") from None
    if not isinstance(value, dict):
        raise _Refused(f"the password credential's {name} is not a JSON object")
    return value


def _argon2(parameters: Any, iterations: int, salt: bytes, key: bytes) -> str:
    """The argon2 PHC string of a Keycloak argon2 credential (BouncyCastle, UTF-8 password)."""

    def first(name: str) -> str:
        found = parameters.get(name) if isinstance(parameters, dict) else None
        if not (isinstance(found, list) and found and isinstance(found[0], str)):
            raise _Refused(f"the argon2 credential has no {name}")
        return found[0]

    kind, version = first("type"), _ARGON2_VERSIONS.get(first("version"))
    if kind not in ("id", "i", "d") or version is None:
        raise _Refused("the argon2 credential's type or version is unknown")
    memory, lanes = first("memory"), first("parallelism")
    return (
        f"$argon2{kind}$v={version}$m={memory},t={iterations},p={lanes}"
        f"${encode_base64(salt)}${encode_base64(key)}"
    )
