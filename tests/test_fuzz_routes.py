"""Every route, driven with generated input (Hypothesis strategies from schemathesis), on both
databases.

For each operation in the app's own ``/openapi.json``, Hypothesis draws requests that fit the
document (positive) and requests that break it (negative: wrong types, missing fields, values
out of range, malformed path and query parameters), and every answer is checked by
schemathesis: never a 5xx, a status the document declares, a body matching the declared schema,
the declared content type and headers, invalid input refused with a 4xx, and authentication
enforced where the document asks for it (a probe without and with a bad token must get 401).

Secured operations are sent as a superuser made for that one example, so admin routes and the
caller's own routes are both reached, and an example that logs out, changes a password, disables
or deletes a user, or takes superuser rights away cannot spoil the next one.

The document cannot say everything the product checks (which usernames are valid, which
passwords are weak), so most purely random "valid" bodies stop at a 422. To reach the code
behind that too, positive examples mostly get plausible values for the fields that carry
those rules: Unicode usernames and e-mail addresses, strong passwords, the right password, an
existing user's name.

Bounded for CI: ``MAX_EXAMPLES`` per operation, derandomized (the same inputs every run), no
example database. One route: ``pytest tests/test_fuzz_routes.py -k "sqlite and token"``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

from authdb import Auth, Settings
from authdb.app import create_app
from tests.conftest import PASSWORD, Harness

# Per operation; FUZZ_MAX_EXAMPLES=1000 runs a longer search locally.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "50"))

# The schemathesis configuration: which checks, with which expectations.
CHECKS_CONFIG = {
    "checks": {
        # A request that fits the document can still break a rule the document cannot express
        # (a common password, a wrong current password, an expired token): 400 and 422 with a
        # `detail` are correct answers to it, not a refusal of valid input.
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422", "429"]
        },
    },
}


def _operation_labels() -> list[str]:
    """``METHOD /path`` of every documented operation, read from an app that is never started."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'unused.db'}"
        app = create_app(Settings(_env_file=None, database_url=url))  # type: ignore[call-arg]
        document = app.openapi()
    paths = document["paths"]
    return [f"{method.upper()} {path}" for path, methods in paths.items() for method in methods]


OPERATIONS = _operation_labels()

# A user who exists from the start, so that generated logins can succeed (or lock her out).
KNOWN_USER = "alice"

# Values that pass the rules behind the document's lenient schemas, keyed by field name. Each
# is still drawn by Hypothesis: non-ASCII letters (case folding can grow them), edge lengths.
_USERNAMES = st.one_of(st.just(KNOWN_USER), st.from_regex(r"[\w.-]{3,64}", fullmatch=True))
_PASSWORDS = st.one_of(
    st.just(PASSWORD),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=8, max_size=64),
    st.text(min_size=8, max_size=100),
)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "username": _USERNAMES,
    "email": st.emails(),
    "full_name": st.one_of(st.none(), st.text(max_size=120)),
    "password": _PASSWORDS,
    "current_password": _PASSWORDS,
    "new_password": _PASSWORDS,
    "grant_type": st.sampled_from(["password", "refresh_token"]),
}


_MOSTLY = st.sampled_from([True, True, True, False])


def _body_fields(document: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """The property names of an operation's request body (JSON or form), from its document."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        schema = media.get("schema", {})
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return set(schema.get("properties", {}))
    return set()


def _make_plausible(case: schemathesis.Case, fields: set[str], data: st.DataObject) -> None:
    """Give most of a positive example's rule-bound fields values that pass the rules."""
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if not positive or not isinstance(case.body, dict):
        return
    for name in sorted(fields & PLAUSIBLE.keys()):
        # Mostly plausible: one field left random usually makes the whole request a 422.
        if data.draw(_MOSTLY, label=f"plausible {name}"):
            case.body[name] = data.draw(PLAUSIBLE[name], label=name)


@dataclass
class FuzzTarget:
    """The service app on a test database, its schema, and fresh superusers on demand."""

    app: FastAPI
    schema: schemathesis.BaseSchema
    harness: Harness
    loop: asyncio.AbstractEventLoop
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def superuser_bearer(self) -> dict[str, str]:
        """A new superuser's bearer header, made through the harness on the test's own loop."""
        name = f"fuzzroot{next(self._names)}"

        async def _mint() -> dict[str, str]:
            await self.harness.create_user(name, is_superuser=True)
            return await self.harness.bearer(name)

        return self.loop.run_until_complete(_mint())


@pytest.fixture
async def fuzz_target(
    make_harness: Callable[..., Awaitable[Harness]],
) -> AsyncIterator[FuzzTarget]:
    """The harness's database and settings, served by a second app that schemathesis starts.

    schemathesis calls an ASGI app from its own event loop thread and runs the app's lifespan
    there, so the app under test opens its connections in that loop; the harness (on the test's
    loop) migrates the database and makes the superusers.
    """
    harness = await make_harness()
    await harness.create_user(KNOWN_USER)
    app = create_app(auth=Auth(harness.auth.settings))
    config = schemathesis.Config.from_dict(CHECKS_CONFIG)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    try:
        yield FuzzTarget(app, schema, harness, asyncio.get_running_loop())
    finally:
        # Runs auth.shutdown() in schemathesis's loop, where the connections were opened.
        asgi.shutdown_lifespans()


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_route_answers_generated_input_as_documented(
    fuzz_target: FuzzTarget, label: str
) -> None:
    operation = fuzz_target.schema.find_operation_by_label(label)
    assert operation is not None
    secured = bool(operation.definition.raw.get("security"))
    fields = _body_fields(fuzz_target.schema.raw_schema, operation.definition.raw)
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # Requests to a database are slow for Hypothesis's taste, and schemathesis filters and
        # builds big bodies on purpose; none of that is a problem with the test.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(case=cases, data=st.data())
    def answers_as_documented(case: schemathesis.Case, data: st.DataObject) -> None:
        _make_plausible(case, fields, data)
        if not secured:
            case.call_and_validate()
            return
        response = case.call_and_validate(headers=fuzz_target.superuser_bearer())
        if 200 <= response.status_code < 300:
            _assert_refused_without_valid_token(case)

    answers_as_documented()


def _assert_refused_without_valid_token(case: schemathesis.Case) -> None:
    """The request that just succeeded, sent again without a token and with a forged one.

    schemathesis's own `ignored_auth` check only knows API-key and HTTP schemes, not the OAuth2
    password flow this document declares, so the probe is made here.
    """
    forged = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    for headers in ({}, {"Authorization": forged}):
        response = case.call(headers=headers)
        assert response.status_code == 401, (headers, response.status_code, response.text)
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
        case.validate_response(response)
