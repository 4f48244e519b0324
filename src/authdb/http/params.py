"""Integers from paths and queries: canonical decimal only, and never out of the key range.

Pydantic's lax ``int`` takes ``"+5"``, ``" 5"``, ``"5.0"``, ``"05"`` and ``"5_0"`` (= 50), so
one resource would have many URLs, and it hands 2**64 on to a database that overflows on it.
Every id in a path and every integer in a query goes through these types instead: a malformed
value is a 422, and a well-formed id that no row can have (0, negatives, past 2**63-1) is a 404
without a query.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import PlainValidator, WithJsonSchema
from starlette.convertors import Convertor, register_url_convertor

from authdb.db.models import MAX_ID
from authdb.errors import NotFound

_DIGITS = len(str(MAX_ID))
_CANONICAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
_INT64 = {"type": "integer", "format": "int64"}


def _canonical(value: object) -> int | None:
    """The integer ``value`` spells, or None when it is past the 64-bit range.

    Raises ValueError (a 422) when ``value`` is not a canonical decimal integer.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not _CANONICAL.fullmatch(value):
        raise ValueError("must be an integer written with ASCII digits only")
    if len(value.lstrip("-")) > _DIGITS:
        return None  # not parsed: Python refuses to convert over 4300 digits anyway
    return int(value)


def id_parser(what: str) -> Callable[[object], int]:
    """The validator of a ``{what}_id`` path parameter: 1..2**63-1, else 404 ``{What} not found``.

    Raising ``NotFound`` (not a ValueError) from the validator makes pydantic let it through,
    so the route's error translation answers 404 before any handler or query runs.
    """
    detail = f"{what.capitalize()} not found"

    def parse(value: object) -> int:
        number = _canonical(value)
        if number is None or not 1 <= number <= MAX_ID:
            raise NotFound(detail)
        return number

    return parse


def bounded_parser(minimum: int, maximum: int = MAX_ID) -> Callable[[object], int]:
    """The validator of an integer query parameter in ``minimum..maximum`` (else 422)."""

    def parse(value: object) -> int:
        number = _canonical(value)
        if number is None or not minimum <= number <= maximum:
            raise ValueError(f"must be an integer from {minimum} to {maximum}")
        return number

    return parse


def int_schema(minimum: int, maximum: int = MAX_ID) -> WithJsonSchema:
    """The OpenAPI schema of such an integer: a 64-bit integer with its bounds."""
    return WithJsonSchema({**_INT64, "minimum": minimum, "maximum": maximum})


UserId = Annotated[int, PlainValidator(id_parser("user")), int_schema(1)]
SessionId = Annotated[int, PlainValidator(id_parser("session")), int_schema(1)]


def _segment_except(*literals: str) -> Convertor[str]:
    """A path convertor for any one segment but the literal names of sibling routes, kept as
    text for ``id_parser`` to judge: ``/users/me/passkeys/options`` is not the passkey
    "options", so the id's route is not offered there (``Allow``, 405), while ``+5`` still
    reaches ``id_parser`` (422)."""

    class SegmentExcept(Convertor[str]):
        regex = "(?!(?:" + "|".join(map(re.escape, literals)) + ")(?:/|$))[^/]+"

        def convert(self, value: str) -> str:
            return value

        def to_string(self, value: str) -> str:
            return str(value)

    return SegmentExcept()


PASSKEY_ID = "authdb_passkey_id"
register_url_convertor(PASSKEY_ID, _segment_except("options"))

PasskeyId = Annotated[int, PlainValidator(id_parser("passkey")), int_schema(1)]
Offset = Annotated[int, PlainValidator(bounded_parser(0)), int_schema(0)]
