"""Checks for setting values that a type alone cannot express.

Each function takes one raw value and returns it (possibly normalized) or raises ``ValueError``
with a short reason; ``Settings`` names the variable. They run when the process starts, so a
value that could never work stops ``authdb serve`` at once instead of failing every request.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from email import policy
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from limits import parse_many
from pydantic import ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Each HMAC algorithm and its shortest key in bytes: the size of its hash (RFC 7518 §3.2).
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
# Key-pair algorithms authdb generates keys for (authdb.signing), and their JWS names.
KEY_PAIR_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_CHOICES = "use HS256, HS384, HS512, RS256, ES256 or EdDSA"
# Known to PyJWT, but authdb does not generate keys for them.
_OTHER_ASYMMETRIC = re.compile(r"^(RS|PS|ES)(256|384|512|256K|521)$|^Ed25519$|^Ed448$")
_DATABASES = {"sqlite", "postgresql"}
# The Redis flavours the `limits` library can use for shared counters (with or without its
# "async+" prefix, which authdb adds itself).
_REDIS_SCHEMES = {
    f"{base}{variant}"
    for base in ("redis", "valkey")
    for variant in ("", "s", "+unix", "+sentinel", "+cluster")
}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_USERINFO = re.compile(r"^([^/]*//)[^/@]*@")


def _no_control_characters(value: str) -> None:
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise ValueError("contains a control character")


def jwt_algorithm(value: str) -> str:
    """An HMAC algorithm (the secret key signs) or a key-pair one (authdb makes the keys)."""
    if value in HMAC_ALGORITHMS or value in KEY_PAIR_ALGORITHMS:
        return value
    if _OTHER_ASYMMETRIC.match(value):
        raise ValueError(f"authdb does not make {value} keys; {_CHOICES}")
    if value.lower() == "none":
        raise ValueError(f"unsigned tokens are never accepted; {_CHOICES}")
    raise ValueError(f"unknown algorithm {value!r}; {_CHOICES}")


def rate_limit(value: str) -> str:
    """A single ``limits`` budget such as ``20/minute``, of at least one request."""
    try:
        items = parse_many(value)
    except ValueError:
        example = "like '20/minute' or '5 per hour'"
        raise ValueError(f"{value!r} is not a rate limit {example}") from None
    if len(items) != 1:
        raise ValueError(f"{value!r} holds {len(items)} limits; give exactly one, like '20/minute'")
    if items[0].amount < 1:
        raise ValueError(f"{value!r} allows nothing; the amount must be at least 1")
    return value.strip()


def database_url(value: str) -> str:
    """A SQLite file or a PostgreSQL database, in SQLAlchemy's URL syntax."""
    example = "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB"
    try:
        url = make_url(value.replace("postgres://", "postgresql://", 1))
        port = url.port
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL; expected {example}") from None
    backend = url.get_backend_name()
    if backend not in _DATABASES:
        raise ValueError(f"unsupported database {backend!r}; use SQLite or PostgreSQL ({example})")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    if backend == "sqlite":
        database = url.database or ""
        # Every connection (and the per-request session reader) would get its own, empty copy.
        if database in ("", ":memory:") or "mode=memory" in str(url.query):
            raise ValueError("an in-memory SQLite database is not shared; give a file path")
        folder = Path(database).parent
        if not folder.is_dir():
            raise ValueError(f"the folder of the SQLite file does not exist: {str(folder)!r}")
    return value


def _shown(url: str) -> str:
    """``url`` fit for an error message: a password in it is masked."""
    return _USERINFO.sub(r"\1***@", url)


def _split_url(value: str) -> SplitResult:
    _no_control_characters(value)
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{_shown(value)!r} contains a space")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        raise ValueError(f"{_shown(value)!r} has an invalid port") from None
    return parts


def public_url(value: str) -> str:
    """An absolute http(s) URL, perhaps with a path, without query, fragment or credentials."""
    parts = _split_url(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_shown(value)!r} is not an absolute http:// or https:// URL")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{_shown(value)!r} must not have a query or fragment (links add theirs)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password")
    return value.rstrip("/")


def origin(value: str) -> str:
    """A browser origin, ``scheme://host[:port]``, as browsers send it (lower case, no path).

    Any scheme is allowed (``capacitor://localhost`` is a real app's origin). A trailing slash,
    which a browser never sends, is dropped instead of making the entry silently never match.
    """
    if value == "*":
        return value
    parts = _split_url(value)
    if not _SCHEME.match(parts.scheme.lower()) or not parts.hostname:
        raise ValueError(f"{_shown(value)!r} is not an origin like 'https://app.example.com'")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value:
        raise ValueError(f"{_shown(value)!r} is not an origin: it has no path, query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{_shown(value)!r} is not an origin: it has a user name")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def origins(values: list[str]) -> list[str]:
    """Origins for CORS: ``*`` alone, or each an origin (duplicates removed, order kept)."""
    if "*" in values and len(values) > 1:
        raise ValueError("'*' already allows every origin; list it alone or not at all")
    return list(dict.fromkeys(origin(value) for value in values))


def redirect_origins(values: list[str]) -> list[str]:
    """Origins a browser may be sent to after sign-in: each an http(s) origin, never ``*``."""
    checked = []
    for value in values:
        if value == "*":
            raise ValueError("'*' would allow redirects anywhere: list each origin")
        allowed = origin(value).lower()
        if not allowed.startswith(("http://", "https://")):
            raise ValueError(f"{_shown(value)!r} is not an http:// or https:// origin")
        checked.append(allowed)
    return list(dict.fromkeys(checked))


def site_name(value: str) -> str:
    """A page title: printable text, trimmed."""
    _no_control_characters(value)
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


def redis_url(value: str) -> str:
    """A Redis (or Valkey) URL that the rate-limit storage can connect to."""
    parts = _split_url(value)
    scheme = parts.scheme.removeprefix("async+")
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(f"{_shown(value)!r} is not a Redis URL like 'redis://HOST:6379/0'")
    if not scheme.endswith("+unix") and not parts.hostname:
        raise ValueError(f"{_shown(value)!r} has no host")
    if not scheme.endswith(("+unix", "+sentinel", "+cluster")):
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ValueError(f"{_shown(value)!r}: the database after the host must be a number")
    return value


def mail_from(value: str) -> str:
    """One sender address, with or without a display name: ``authdb <no-reply@example.com>``."""
    _no_control_characters(value)
    problem = f"{value!r} is not a sender address like 'authdb <no-reply@example.com>'"
    try:
        header = policy.default.header_factory("From", value)
        addresses = header.addresses
        defects = header.defects
    except Exception:  # the header parser can fail with IndexError on "x@"
        raise ValueError(problem) from None
    if len(addresses) != 1 or defects:
        raise ValueError(problem)
    if not addresses[0].username or not addresses[0].domain:
        raise ValueError(problem)
    return value


def folder(value: str) -> str:
    """An existing directory."""
    if not Path(value).is_dir():
        raise ValueError(f"{value!r} is not an existing folder")
    return value


def host(value: str) -> str:
    """A host name or address, not a URL."""
    _no_control_characters(value)
    if any(ch.isspace() for ch in value) or "/" in value:
        raise ValueError(f"{value!r} is not a host name or address (no scheme, no path)")
    return value


def variable(field: str) -> str:
    """The environment variable of a setting: ``smtp_port`` is ``AUTHDB_SMTP_PORT``."""
    return f"AUTHDB_{field.upper()}"


def problem(error: ErrorDetails, name: Callable[[str], str] = variable) -> str:
    """``NAME: reason`` for one validation error, ``name`` naming the setting's field.

    The setting is the error's first location only (``cors_origins.1`` is still
    AUTHDB_CORS_ORIGINS); a check across settings has no location and names them itself.
    """
    message = error["msg"]
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    message = " ".join(message.split())
    if not error["loc"]:
        return message
    return f"{name(str(error['loc'][0]))}: {message}"


class InvalidSettings(ValidationError):
    """pydantic's ValidationError (``errors()`` as usual) whose message names each variable:
    ``invalid settings: AUTHDB_SMTP_PORT (smtp_port): Input should be ...``."""

    def __str__(self) -> str:
        problems = [problem(error, _variable_and_field) for error in self.errors()]
        return f"invalid settings: {'; '.join(problems)}"

    @classmethod
    def naming_one(cls, message: str) -> InvalidSettings:
        """A problem that names its variables itself (``AUTHDB_OAUTH_CORP_ISSUER is ...``)."""
        detail: InitErrorDetails = {
            "type": PydanticCustomError("value_error", "{message}", {"message": message}),
            "loc": (),
            "input": None,
        }
        return cls.from_exception_data("Settings", [detail], hide_input=True)

    @classmethod
    def naming(cls, error: ValidationError) -> ValidationError:
        """``error`` as an InvalidSettings (itself should pydantic refuse the conversion)."""
        try:
            details = error.errors()
            return cls.from_exception_data(error.title, details, hide_input=True)  # type: ignore[arg-type]
        except Exception:  # an error type pydantic cannot rebuild: the original says enough
            return error


def _variable_and_field(field: str) -> str:
    return f"{variable(field)} ({field})"
