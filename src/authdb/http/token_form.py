"""``POST /token``'s form (RFC 6749 section 4.3.2, 6 and the MFA grant), read in one pass.

FastAPI reads a route's ``Form`` parameters one field at a time, re-deriving each field's
shape on every request: for /token's eight fields that was about a sixth of a login's time on
the event loop. Here the body is parsed once and validated by one pydantic model, with the
same answers FastAPI gives:

* an empty value counts as absent (FastAPI's rule for form fields), so ``grant_type=`` is the
  password grant and ``username=`` is a missing username;
* a repeated field: its last value wins (even an empty one); unknown fields are ignored;
* a too-long or non-text value is a 422 whose issue names ``("body", field)``;
* ``multipart/form-data`` is read by Starlette, whose broken-form 400 ``unreadable_body``
  turns into a 422; any other media type reads as an empty form.

The route declares the body through ``openapi_extra`` (:data:`OPENAPI`), so the document is
as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

_FIELD = 1024
# The MFA grant: an extension grant type is an absolute URI (RFC 6749 section 4.5).
MFA_GRANT = "urn:authdb:params:oauth:grant-type:mfa"
_URLENCODED = "application/x-www-form-urlencoded"
# /token has eight fields; a form of more is no client's (parse_qsl stops counting there).
MAX_FIELDS = 64


class TokenForm(BaseModel):
    """The fields of a token request (RFC 6749 sections 4.3.2 and 6, and the MFA grant)."""

    model_config = ConfigDict(extra="ignore", title="TokenRequest")

    grant_type: str = Field(
        "password",
        max_length=64,
        description=f"`password` (default), `refresh_token`, or `{MFA_GRANT}`",
    )
    username: str | None = Field(None, max_length=_FIELD)
    password: str | None = Field(None, max_length=4096)
    refresh_token: str | None = Field(None, max_length=_FIELD)
    scope: str = Field("", max_length=_FIELD)
    mfa_token: str | None = Field(
        None, max_length=_FIELD, description="MFA grant: from the 403 `MFA required` answer"
    )
    otp: str | None = Field(
        None, max_length=64, description="MFA grant: a 6-digit code from the authenticator"
    )
    recovery_code: str | None = Field(
        None, max_length=64, description="MFA grant, instead of `otp`: a recovery code"
    )


_NAMES = frozenset(TokenForm.model_fields)

OPENAPI: dict[str, Any] = {
    "requestBody": {
        "content": {_URLENCODED: {"schema": TokenForm.model_json_schema()}},
    }
}


async def read_token_form(request: Request) -> TokenForm:
    """The token request's fields from ``request``'s body.

    Raises RequestValidationError (a 422 in FastAPI's shape) for a value that breaks a field's
    rule or a form of more than ``MAX_FIELDS`` fields, and Starlette's HTTPException 400 for
    a broken multipart body (see the module's docstring).
    """
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    pairs: Sequence[tuple[str, object]]  # a multipart field may be a file: pydantic refuses it
    if media == _URLENCODED:
        pairs = _urlencoded(await request.body())
    else:
        async with request.form(max_fields=MAX_FIELDS) as form:
            pairs = list(form.multi_items())
    last = {name: value for name, value in pairs if name in _NAMES}  # the last one wins
    values = {name: value for name, value in last.items() if value != ""}
    try:
        return TokenForm.model_validate(values)
    except ValidationError as exc:
        issues = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**issue, "loc": ("body", *issue["loc"])} for issue in issues]
        ) from None


def _urlencoded(body: bytes) -> list[tuple[str, str]]:
    # As Starlette reads a form: bytes as Latin-1 until unquoted, then UTF-8, bad bytes
    # replaced (WHATWG's application/x-www-form-urlencoded parser does the same).
    try:
        return parse_qsl(
            body.decode("latin-1"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="replace",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:  # more fields than that
        issue = {"type": "value_error", "loc": ("body",), "input": None}
        msg = f"Malformed form data: more than {MAX_FIELDS} fields"
        raise RequestValidationError([{**issue, "msg": msg}]) from None
