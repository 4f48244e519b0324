"""Form input for pages: validated by the API's own schemas, errors keyed by field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.http.errors import retry_after
from authdb.services.sessions import Authenticated

ModelT = TypeVar("ModelT", bound=BaseModel)

# Words for pydantic's error types that read better on a page than the framework's.
_MESSAGES = {
    "missing": "This field is required.",
    "string_too_short": "This field is required.",
    "string_too_long": "This is too long.",
}
REQUIRED = _MESSAGES["missing"]
TOO_LONG = _MESSAGES["string_too_long"]

# An /account section's handler: the form posted, the signed-in session; a response, or None
# for "saved" (back to /account). It raises Refusal for input the page shows again.
Section = Callable[[Request, FormData, Authenticated], Awaitable[Response | None]]


class Refusal(Exception):
    """A section's input was refused: re-render the page with these errors."""

    def __init__(
        self,
        status: int,
        errors: dict[str, str],
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status, self.errors, self.error = status, errors, error
        self.headers = headers or {}


def refusal(
    exc: errors.AuthError, default_field: str, *, password_field: str = "current_password"
) -> Refusal:
    """The page's answer to a domain error: 429 with the wait, 400 for a wrong password or
    code (next to ``password_field`` or ``code``), 409 or 422 next to the field it is about.
    Any other error is raised again (an error page)."""
    if isinstance(exc, errors.TooManyRequests):
        return Refusal(429, {}, waiting_message(exc), retry_after(exc))
    if isinstance(exc, errors.IncorrectPassword):
        return Refusal(400, {password_field: exc.detail})
    if isinstance(exc, errors.InvalidMFACode):
        return Refusal(400, {"code": exc.detail})
    status = 409 if isinstance(exc, errors.Conflict) else 422
    if isinstance(exc, errors.InvalidInput | errors.Conflict):
        return Refusal(status, {field_of(exc, default_field): exc.detail})
    raise exc


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
