"""Request bodies the framework cannot read, answered as FastAPI's list-shaped 422.

FastAPI answers 400 ``There was an error parsing the body`` for a JSON body that is not UTF-8
or too deeply nested for Python's parser, and Starlette 400 for a broken multipart or
urlencoded form. The contract says malformed input is a 422 like any other validation error,
so :func:`unreadable_body` turns those 400s into a ``RequestValidationError``, and
:func:`check_json_body` refuses bodies that are not UTF-8 or nest too deep before the body is
parsed for the route.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

# No authdb body nests past 3 levels; 32 leaves room for an application's own routes.
MAX_JSON_DEPTH = 32

# FastAPI's words for a body it could not read (fastapi/routing.py).
_FASTAPI_PARSE_FAILED = "There was an error parsing the body"


def _invalid(msg: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": msg, "input": None}])


def unreadable_body(exc: HTTPException) -> RequestValidationError | None:
    """The 422 for a 400 the framework raised because it could not read the body, else None.

    Only the framework's own parse failures qualify (recognised by their cause), never a 400
    that a route or a domain error raised on purpose.
    """
    if exc.status_code != 400:
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, MultiPartException):
        return _invalid(f"Malformed form data: {exc.detail}", "value_error")
    if exc.detail != _FASTAPI_PARSE_FAILED:
        return None
    if isinstance(cause, UnicodeError):
        return _invalid("Body is not valid UTF-8", "json_invalid")
    if isinstance(cause, RecursionError):
        return _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_invalid")
    return _invalid("Body could not be parsed", "json_invalid")


def _nested_deeper_than(body: bytes, limit: int) -> bool:
    # Cheap bound first: a body with few brackets cannot nest deeply, and no honest one has many.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    try:
        value = json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False  # not JSON at all: FastAPI's own parse reports it
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: measuring depth must not recurse either
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _is_json(content_type: str) -> bool:
    # The content types FastAPI parses as JSON: none at all, application/json, */*+json.
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json")
    )


async def check_json_body(request: Request) -> None:
    """Refuse (422) a JSON body that is not UTF-8 (RFC 8259 8.1) or nests deeper than
    :data:`MAX_JSON_DEPTH` levels, before FastAPI parses it for the route.

    Reads the body, which Starlette caches on the request for the route to use.
    """
    if not _is_json(request.headers.get("content-type", "")):
        return
    body = await request.body()
    try:
        body.decode("utf-8")  # json.loads would also take UTF-16 and UTF-32
    except UnicodeDecodeError:
        raise _invalid("Body is not valid UTF-8", "json_invalid") from None
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise _invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_invalid")


def reads_json(route: APIRoute) -> bool:
    """Whether the route takes a JSON body (not a form): the routes to check."""
    field = route.body_field
    return field is not None and not isinstance(field.field_info, params.Form)
