"""JSON documents read with the line each array element starts on, so errors can name it.

``json.loads`` gives values without positions; these walk the top level with
``JSONDecoder.raw_decode`` instead, which reports where each element ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from authdb.importers.records import BadLine, UnreadableExport


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members; a key given twice is an error (which of them would count?)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        found[key] = value
    return found


# No field of an export needs an integer this long; Python itself stops at 4,300 digits.
_MAX_DIGITS = 30


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_integer)


def loads(text: str) -> Any:
    """``json.loads`` refusing duplicate keys; raises ValueError (JSONDecodeError among them)
    or RecursionError."""
    return _decoder.decode(text)


def json_lines(text: str) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Each non-blank line of a JSON Lines text with its number: its object, or why it is
    not one (bad JSON, a duplicate key, an overlong number, not an object)."""
    # Only \n ends a line: JSON may hold U+2028 or U+0085 unescaped (PostgreSQL's row_to_json
    # writes them as they are), and str.splitlines() would split there.
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, _json_line(number, line)


def _json_line(number: int, line: str) -> dict[str, Any] | BadLine:
    try:
        record = loads(line)
    except json.JSONDecodeError as exc:
        return BadLine(number, f"not valid JSON ({exc.msg})")
    except ValueError as exc:  # a duplicate key, an overlong number
        return BadLine(number, f"not valid JSON ({exc})")
    except RecursionError:
        return BadLine(number, "not valid JSON (nested too deeply)")
    return record if isinstance(record, dict) else BadLine(number, "expected a JSON object")


_SPACE = re.compile(r"[ \t\n\r]*")


class _Cursor:
    """A position in the text and its line, advanced only forward (lines counted once)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line, self._counted = text, 0, 1, 0

    def skip(self) -> str:
        """Skip white space; the next character ('' at the end)."""
        self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
        self.line += self.text.count("\n", self._counted, self.pos)
        self._counted = self.pos
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str, what: str) -> None:
        if self.skip() != char:
            raise UnreadableExport(f"line {self.line}: not valid JSON (expected {what})")
        self.pos += 1

    def value(self) -> Any:
        """Decode the value here; names the line of a syntax error."""
        self.skip()
        try:
            value, self.pos = _decoder.raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise UnreadableExport(f"line {exc.lineno}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:  # a duplicate key, an integer past Python's digit limit
            raise UnreadableExport(f"line {self.line}: not valid JSON ({exc})") from None
        except RecursionError:
            raise UnreadableExport(f"line {self.line}: not valid JSON (too deep)") from None
        return value

    def end(self) -> None:
        if self.skip():
            raise UnreadableExport(f"line {self.line}: not valid JSON (extra data after the end)")


def _elements(cursor: _Cursor) -> list[tuple[int, Any]]:
    cursor.expect("[", "an array")
    items: list[tuple[int, Any]] = []
    if cursor.skip() == "]":
        cursor.pos += 1
        return items
    while True:
        cursor.skip()
        line = cursor.line
        items.append((line, cursor.value()))
        following = cursor.skip()
        cursor.pos += 1
        if following == "]":
            return items
        if following != ",":
            raise UnreadableExport(f"line {cursor.line}: not valid JSON (expected ',' or ']')")


def array_with_lines(text: str) -> list[tuple[int, Any]]:
    """The elements of a top-level JSON array, each with the line it starts on."""
    cursor = _Cursor(text)
    items = _elements(cursor)
    cursor.end()
    return items


def member_with_lines(text: str, key: str) -> tuple[dict[str, Any], list[tuple[int, Any]] | None]:
    """A top-level JSON object: its other members, and the array under ``key`` with lines
    (None if the object has no such member)."""
    cursor = _Cursor(text)
    cursor.expect("{", "an object")
    others: dict[str, Any] = {}
    found: list[tuple[int, Any]] | None = None
    if cursor.skip() == "}":
        cursor.pos += 1
        cursor.end()
        return others, found
    while True:
        name = cursor.value()
        if not isinstance(name, str):
            raise UnreadableExport(f"line {cursor.line}: not valid JSON (expected a key)")
        cursor.expect(":", "':'")
        if name == key and cursor.skip() == "[":
            found = _elements(cursor)
        else:
            others[name] = cursor.value()
        following = cursor.skip()
        cursor.pos += 1
        if following == "}":
            cursor.end()
            return others, found
        if following != ",":
            raise UnreadableExport(f"line {cursor.line}: not valid JSON (expected ',' or '}}')")
