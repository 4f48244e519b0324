"""The application's own password rules (``Auth(password_validators=[...])``) on every path
that sets a password, after authdb's rules; a validator that breaks refuses, never a 500."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.errors import InvalidInput
from authdb.passwords import VALIDATOR_FAILED, password_problem
from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from tests.conftest import PASSWORD, Mailbox
from tests.test_pages import csrf_field, link_token

BANNED = "Password must not contain the company name"
# Passes authdb's own rules, fails the app's.
COMPANY_PASSWORD = "acme rocket sled 42"
GOOD_PASSWORD = "a perfectly fine passphrase"


def no_company(password: str, *, username: str | None, email: str | None) -> str | None:
    return BANNED if "acme" in password.casefold() else None


class Recorder:
    """A validator remembering what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []

    def __call__(self, password: str, *, username: str | None, email: str | None) -> str | None:
        self.calls.append((password, username, email))
        return None


Started = tuple[Auth, httpx.AsyncClient]
Start = Callable[..., Awaitable[Started]]


@pytest.fixture
async def start(make_settings: Callable[..., Settings]) -> AsyncIterator[Start]:
    """``await start(validators)``: a started app whose Auth has these password validators."""
    running: list[Started] = []

    async def _start(*validators: Any, **overrides: Any) -> Started:
        auth = Auth(make_settings(**overrides), password_validators=list(validators))
        app = create_app(auth=auth)
        await migrate.upgrade(auth.core.engine)
        await auth.startup()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=auth.settings.public_url
        )
        running.append((auth, client))
        return auth, client

    yield _start
    for auth, client in running:
        await client.aclose()
        await auth.shutdown()


async def _user(auth: Auth, username: str = "alice", password: str = PASSWORD) -> int:
    user = await provisioning.create_user(
        auth.core,
        username=username,
        email=f"{username}@example.com",
        password=password,
        is_verified=True,
        client=CLI_CLIENT,
    )
    return int(user.id)


async def _bearer(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await client.post("/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _refused(response: httpx.Response, field: str, message: str = BANNED) -> None:
    assert response.status_code == 422, response.text
    [issue] = response.json()["detail"]
    assert issue["loc"][-1] == field
    assert message in issue["msg"]


# --- the policy function ---------------------------------------------------------------------


def test_validators_run_after_authdbs_rules_on_the_normalized_password() -> None:
    recorder = Recorder()
    # authdb's own rule wins; the app's validator is not even asked.
    assert password_problem("short", username="bob", email=None, validators=[recorder]) == (
        "Password must be at least 8 characters long"
    )
    assert recorder.calls == []
    # Full-width letters: the validator sees the NFKC form, the one that is hashed.
    full_width = "\uff21\uff23\uff2d\uff25 rocket sled"  # ACME in full-width letters
    problem = password_problem(
        full_width, username="bob", email="b@x.test", validators=[recorder, no_company]
    )
    assert problem == BANNED
    assert recorder.calls == [("ACME rocket sled", "bob", "b@x.test")]


def test_the_first_problem_wins_in_order() -> None:
    def second(password: str, *, username: str | None, email: str | None) -> str | None:
        return "second"

    problem = password_problem(
        COMPANY_PASSWORD, username=None, email=None, validators=[no_company, second]
    )
    assert problem == BANNED
    problem = password_problem(GOOD_PASSWORD, username=None, email=None, validators=[second])
    assert problem == "second"


def test_a_validator_that_raises_refuses_and_logs_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(password: str, *, username: str | None, email: str | None) -> str | None:
        raise RuntimeError(f"lookup failed for {password}")

    with caplog.at_level(logging.ERROR, logger="authdb.passwords"):
        problem = password_problem(GOOD_PASSWORD, username=None, email=None, validators=[broken])
    assert problem == VALIDATOR_FAILED
    [record] = caplog.records
    logged = record.getMessage()
    assert "broken" in logged and "RuntimeError" in logged
    assert GOOD_PASSWORD not in logged and "[redacted]" in logged


@pytest.mark.parametrize("answer", [False, "", "   ", 0, ["x"]])
def test_a_validator_answering_nonsense_refuses(
    answer: object, caplog: pytest.LogCaptureFixture
) -> None:
    def odd(password: str, *, username: str | None, email: str | None) -> Any:
        return answer

    with caplog.at_level(logging.ERROR, logger="authdb.passwords"):
        problem = password_problem(GOOD_PASSWORD, username=None, email=None, validators=[odd])
    assert problem == VALIDATOR_FAILED
    assert "odd" in caplog.text and "not None or a sentence" in caplog.text


def test_an_async_validator_refuses_with_a_clear_log(caplog: pytest.LogCaptureFixture) -> None:
    async def remote(password: str, *, username: str | None, email: str | None) -> str | None:
        return None

    with caplog.at_level(logging.ERROR, logger="authdb.passwords"):
        problem = password_problem(
            GOOD_PASSWORD,
            username=None,
            email=None,
            validators=[remote],  # type: ignore[list-item]
        )
    assert problem == VALIDATOR_FAILED
    assert "is async" in caplog.text


# --- every path that sets a password (both databases) -----------------------------------------


async def test_register_applies_the_validators(start: Start) -> None:
    recorder = Recorder()
    _, client = await start(recorder, no_company)
    body = {"username": "carol", "email": "carol@example.com", "password": COMPANY_PASSWORD}
    _refused(await client.post("/register", json=body), "password")
    assert recorder.calls == [(COMPANY_PASSWORD, "carol", "carol@example.com")]
    created = await client.post("/register", json={**body, "password": GOOD_PASSWORD})
    assert created.status_code == 201, created.text


async def test_a_broken_validator_is_a_422_not_a_500(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(password: str, *, username: str | None, email: str | None) -> str | None:
        raise ConnectionError("breach list unreachable")

    _, client = await start(broken)
    body = {"username": "carol", "email": "carol@example.com", "password": GOOD_PASSWORD}
    with caplog.at_level(logging.ERROR, logger="authdb.passwords"):
        response = await client.post("/register", json=body)
    _refused(response, "password", VALIDATOR_FAILED)
    assert "breach list unreachable" in caplog.text
    assert GOOD_PASSWORD not in caplog.text


async def test_change_password_applies_the_validators(start: Start) -> None:
    auth, client = await start(no_company)
    await _user(auth)
    headers = await _bearer(client, "alice", PASSWORD)
    path = "/users/me/password"
    body = {"current_password": PASSWORD, "new_password": COMPANY_PASSWORD}
    _refused(await client.post(path, json=body, headers=headers), "new_password")
    body["new_password"] = GOOD_PASSWORD
    assert (await client.post(path, json=body, headers=headers)).status_code == 204


async def test_reset_applies_the_validators_and_keeps_the_token(
    start: Start, mailbox: Mailbox
) -> None:
    auth, client = await start(no_company)
    await _user(auth)
    assert (await client.post("/password/forgot", json={"email": "alice@example.com"})).status_code
    [message] = await mailbox.wait_for(1)
    token = link_token(message, "reset-password")
    refused = await client.post(
        "/password/reset", json={"token": token, "password": COMPANY_PASSWORD}
    )
    _refused(refused, "password")
    done = await client.post("/password/reset", json={"token": token, "password": GOOD_PASSWORD})
    assert done.status_code == 204, done.text


async def test_admin_set_password_applies_the_validators(start: Start) -> None:
    auth, client = await start(no_company)
    await _user(auth, "root")
    async with auth.core.sessionmaker.begin() as db:
        from authdb.db.models import User

        root = await db.get(User, 1)
        assert root is not None
        root.is_superuser = True
    bob = await _user(auth, "bob")
    headers = await _bearer(client, "root", PASSWORD)
    refused = await client.patch(
        f"/users/{bob}", json={"password": COMPANY_PASSWORD}, headers=headers
    )
    _refused(refused, "password")
    fine = await client.patch(f"/users/{bob}", json={"password": GOOD_PASSWORD}, headers=headers)
    assert fine.status_code == 200, fine.text


async def test_library_and_cli_services_apply_the_validators(start: Start) -> None:
    auth, _ = await start(no_company)
    with pytest.raises(InvalidInput) as refused:
        await _user(auth, "dave", COMPANY_PASSWORD)
    assert refused.value.detail == BANNED and refused.value.field == "password"
    await _user(auth, "erin")
    with pytest.raises(InvalidInput, match=BANNED):
        await provisioning.set_password(auth.core, "erin", COMPANY_PASSWORD, CLI_CLIENT)
    await provisioning.set_password(auth.core, "erin", GOOD_PASSWORD, CLI_CLIENT)
    # The application's own service object: the same rules.
    with pytest.raises(InvalidInput, match=BANNED):
        await auth.users.create(
            username="gina", email="gina@example.com", password=COMPANY_PASSWORD
        )
    gina = await auth.users.create(
        username="gina", email="gina@example.com", password=GOOD_PASSWORD
    )
    with pytest.raises(InvalidInput, match=BANNED):
        await auth.users.set_password(gina.id, COMPANY_PASSWORD)
    with pytest.raises(InvalidInput, match=BANNED):
        await provisioning.prepare_user(
            auth.core.hasher,
            validators=auth.core.password_validators,
            username="frank",
            email="frank@example.com",
            password=COMPANY_PASSWORD,
        )


async def test_the_register_page_shows_the_validators_message(start: Start) -> None:
    _, client = await start(no_company)
    page = await client.get("/register")
    assert page.status_code == 200
    form = {
        "csrf_token": csrf_field(page.text),
        "username": "carol",
        "email": "carol@example.com",
        "password": COMPANY_PASSWORD,
    }
    response = await client.post("/register", data=form)
    assert response.status_code == 422
    assert 'id="password-error"' in response.text
    assert BANNED in response.text
