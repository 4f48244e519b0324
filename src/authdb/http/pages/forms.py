"""Form input for pages: validated by the API's own schemas, errors keyed by field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from authdb import errors

ModelT = TypeVar("ModelT", bound=BaseModel)

# Words for pydantic's error types that read better on a page than the framework's.
_MESSAGES = {
    "missing": "This field is required.",
    "string_too_short": "This field is required.",
    "string_too_long": "This is too long.",
}


def parse(model: type[ModelT], values: dict[str, Any]) -> tuple[ModelT | None, dict[str, str]]:
    """``model`` from ``values``, or None and a message per offending field."""
    try:
        return model.model_validate(values), {}
    except ValidationError as exc:
        found: dict[str, str] = {}
        for error in exc.errors(include_input=False, include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "form"
            message = _MESSAGES.get(error["type"], str(error["msg"]).removeprefix("Value error, "))
            found.setdefault(name, message)
        return None, found


def field_of(exc: errors.AuthError, default: str) -> str:
    """The form field a domain error is about: its own ``field``, else by its words."""
    if isinstance(exc, errors.InvalidInput) and exc.field:
        return exc.field
    if isinstance(exc, errors.Conflict):
        detail = exc.detail.lower()
        if "email" in detail:
            return "email"
        if "username" in detail:
            return "username"
    return default


def waiting_message(exc: errors.TooManyRequests) -> str:
    minutes = max(1, -(-exc.retry_after // 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many attempts. Try again in {minutes} {unit}."
