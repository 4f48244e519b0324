"""What a check finds (a status and one line) and what every check is given (the deployment)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from authdb.settings import Settings

if TYPE_CHECKING:
    from authdb.doctor.database import Database

# ok: fine; warn: works, but look at it; error: broken or unsafe (exit 1); skip: could not be
# checked because another check failed (that one is the error to fix).
Status = Literal["ok", "warn", "error", "skip"]

# Every network check (database, Redis, SMTP) gives up after this long, so that an address
# that drops packets costs seconds, not the minute of a TCP connect.
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's outcome: a status and a one-line message (never a secret)."""

    status: Status
    message: str


@dataclass(frozen=True, slots=True)
class Result:
    """A named check's outcome, as ``authdb doctor`` prints it."""

    status: Status
    name: str
    message: str


@dataclass(frozen=True, slots=True)
class Deployment:
    """What the checks look at: the settings, the database as opened read-only, the
    clock to compare with the database's (UTC, timezone-aware), and how many authdb processes
    share the database: ``workers`` on each of ``hosts`` (``authdb doctor --workers --hosts``)."""

    settings: Settings
    database: Database
    clock: Callable[[], datetime]
    hosts: int = 1
    workers: int = 1


def ok(message: str) -> Verdict:
    return Verdict("ok", message)


def warn(message: str) -> Verdict:
    return Verdict("warn", message)


def error(message: str) -> Verdict:
    return Verdict("error", message)


def skip(message: str) -> Verdict:
    return Verdict("skip", message)


def shown_url(url: str) -> str:
    """``scheme://host:port/path`` of ``url``: no user name, password or query (which may
    hold a password), so it can be printed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def reason(exc: BaseException) -> str:
    """A one-line reason for a failure: the exception's first line, or its type."""
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    text = str(cause).strip().splitlines()
    if isinstance(cause, TimeoutError) and not text:
        return f"no answer within {TIMEOUT_SECONDS:g} s"
    return text[0] if text else type(cause).__name__


def public_host(settings: Settings) -> str:
    """The host of ``AUTHDB_PUBLIC_URL``, lower case."""
    return (urlsplit(settings.public_url).hostname or "").lower()
