"""The error answers of authdb's routes, declared for the OpenAPI document.

Every route lists the error statuses it can answer (``responses=error_responses(401, 404)``),
each with the ``{"detail": ...}`` model the body really has, so that a client generated from
``/openapi.json``, or a fuzzer checking answers against it, sees the truth.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Responses = dict[int | str, dict[str, Any]]


class ErrorResponse(BaseModel):
    """Every error but a validation error: one sentence, safe to show a user."""

    detail: str = Field(examples=["Could not validate credentials"])


class ValidationIssue(BaseModel):
    """One problem with the input, as FastAPI reports it (the input itself is never echoed)."""

    loc: list[str | int] = Field(examples=[["body", "password"]])
    msg: str = Field(examples=["Password must be at least 8 characters long"])
    type: str = Field(examples=["value_error"])


class ValidationErrorResponse(BaseModel):
    """422: the input is malformed or breaks a rule; one entry per problem."""

    detail: list[ValidationIssue]


class OAuthErrorResponse(BaseModel):
    """An error from ``POST /token``: ``detail`` as everywhere, and RFC 6749 (5.2) fields."""

    detail: str | list[ValidationIssue]
    error: str | None = Field(None, examples=["invalid_grant"])
    error_description: str | None = Field(None, examples=["Incorrect username or password"])
    # Only with 403 "MFA required": what the MFA grant completes, and with what.
    mfa_token: str | None = None
    mfa_methods: list[str] | None = Field(None, examples=[["totp", "recovery_code"]])


class MFARequiredResponse(BaseModel):
    """403 ``MFA required`` from a passkey sign-in: finish with the MFA grant of ``/token``."""

    detail: str = Field(examples=["MFA required"])
    mfa_token: str
    mfa_methods: list[str] = Field(examples=[["totp", "recovery_code"]])


class ProbeStatus(BaseModel):
    """The body of ``/healthz`` and ``/readyz``."""

    status: str = Field(examples=["ok"])


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "Always `Bearer`", "schema": {"type": "string"}}
}

# status: (description, headers)
_STATUSES: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The request cannot be carried out (see `detail`)", {}),
    401: ("Missing, invalid or expired credentials", _WWW_AUTHENTICATE),
    403: ("Not allowed", {}),
    404: ("Not found", {}),
    409: ("Conflicts with the current state (an existing account, the last superuser)", {}),
    413: ("Request body too large", {}),
    422: ("Malformed input, or input that breaks a rule", {}),
    429: ("Too many requests", _RETRY_AFTER),
    431: ("Request headers too large", {}),
    501: ("An optional feature is not installed: `detail` names the extra", {}),
    503: ("A backing service (the database) is unavailable", _RETRY_AFTER),
}


def error_responses(*statuses: int, model: type[BaseModel] = ErrorResponse) -> Responses:
    """OpenAPI ``responses`` for these error statuses; 422 gets the validation model."""
    responses: Responses = {}
    for status in statuses:
        description, headers = _STATUSES[status]
        body = ValidationErrorResponse if status == 422 and model is ErrorResponse else model
        responses[status] = {"model": body, "description": description}
        if headers:
            responses[status]["headers"] = headers
    return responses


# What each error of /token means for a client, beyond the generic wording.
_TOKEN_MEANINGS = {
    401: (
        "Wrong credentials. With the MFA grant: `Invalid MFA code` (ask again, same "
        "`mfa_token`) or `Invalid or expired MFA token` (start over with the password)"
    ),
    403: (
        "`MFA required` (`error: mfa_required`): the password was right and the account has a "
        "second factor. Ask for a code, then post `grant_type="
        "urn:authdb:params:oauth:grant-type:mfa` with this `mfa_token` (valid 5 minutes) and "
        "`otp` or `recovery_code`"
    ),
}


def token_errors(*statuses: int) -> Responses:
    """Like :func:`error_responses`, for ``/token``, whose errors also carry OAuth 2.0 fields."""
    responses = error_responses(*statuses, model=OAuthErrorResponse)
    for status, meaning in _TOKEN_MEANINGS.items():
        if status in responses:
            responses[status]["description"] = meaning
    return responses


# Answered by the standalone service's middleware, on any route: see authdb.http.middleware.
SERVICE_ERRORS: Responses = error_responses(413, 431)
