"""Self-service accounts over HTTP: registration, verification, recovery, changes, deletion.

Every test runs on SQLite and PostgreSQL; emails go through a real SMTP server on loopback and
tokens are taken from the links in the delivered messages, as a user would follow them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from authdb.db.models import LoginFailure, utcnow
from authdb.services import accounts as accounts_service
from authdb.services.audit import list_events
from tests.conftest import PASSWORD, Harness, Mailbox, free_port

PUBLIC = "http://auth.example.test"  # conftest's public_url; the client talks to testserver
NEW_PASSWORD = "a different, long passphrase"
_LINK = re.compile(r"(https?://[^\s\"<>]+/(verify|reset-password)\?token=([A-Za-z0-9_\-]+))")

MakeHarness = Callable[..., Awaitable[Harness]]


# --- helpers ------------------------------------------------------------------------------------


def text_of(message: EmailMessage) -> str:
    """The text/plain part, which every message must have."""
    part = message.get_body(("plain",))
    assert part is not None, "no text/plain part"
    return str(part.get_content())


def link_in(message: EmailMessage) -> tuple[str, str, str]:
    """(link, kind, token) from the text of a delivered message."""
    found = _LINK.search(text_of(message))
    assert found is not None, text_of(message)
    return found.group(1), found.group(2), found.group(3)


async def mail_to(mailbox: Mailbox, to: str, number: int = 1) -> EmailMessage:
    """Wait for the ``number``-th message to ``to`` (counting from 1) and return it."""
    for _ in range(500):
        if len(mailbox.to(to)) >= number:
            return mailbox.to(to)[number - 1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {number} message(s) to {to}, got {len(mailbox.to(to))}")


async def token_mailed(
    mailbox: Mailbox, to: str, kind: str, send: Awaitable[httpx.Response], status: int
) -> str:
    """Make a request that mails ``to`` a link of ``kind``; return the link's token."""
    seen = len(mailbox.to(to))
    response = await send
    assert response.status_code == status, response.text
    for _ in range(500):
        if len(mailbox.to(to)) > seen:
            break
        await asyncio.sleep(0.02)
    link, found_kind, token = link_in(mailbox.to(to)[-1])
    assert found_kind == kind
    assert link.startswith(f"{PUBLIC}/{kind}?token=")
    return token


def register(
    harness: Harness,
    username: str = "alice",
    email: str | None = None,
    password: str = PASSWORD,
    **extra: Any,
) -> Awaitable[httpx.Response]:
    body = {"username": username, "email": email or f"{username}@example.com", "password": password}
    return harness.client.post("/register", json={**body, **extra})


def forgot(harness: Harness, email: str, **kwargs: Any) -> Awaitable[httpx.Response]:
    return harness.client.post("/password/forgot", json={"email": email}, **kwargs)


def verify_request(harness: Harness, email: str) -> Awaitable[httpx.Response]:
    return harness.client.post("/verify/request", json={"email": email})


def reset(harness: Harness, token: str, password: str = NEW_PASSWORD) -> Awaitable[httpx.Response]:
    return harness.client.post("/password/reset", json={"token": token, "password": password})


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def refresh(harness: Harness, tokens: dict[str, Any]) -> httpx.Response:
    return await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )


async def me_status(harness: Harness, tokens: dict[str, Any]) -> int:
    return (await harness.client.get("/users/me", headers=bearer(tokens))).status_code


async def login_status(harness: Harness, username: str, password: str) -> int:
    response = await harness.client.post(
        "/token", data={"username": username, "password": password}
    )
    return response.status_code


def shift_clock(harness: Harness, delta: timedelta) -> None:
    """Move the service's clock; the JWT library keeps the real one, so shift back after."""
    harness.auth.core.clock = lambda: utcnow() + delta


def restore_clock(harness: Harness) -> None:
    harness.auth.core.clock = utcnow


# --- the whole journey --------------------------------------------------------------------------


async def test_full_account_lifecycle(harness: Harness, mailbox: Mailbox) -> None:
    # Register: 201 with a User, and a verification link in the mail.
    response = await register(harness, "alice", "Alice@Example.com", full_name="Alice L.")
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    user = response.json()
    assert user["username"] == "alice"
    assert user["email"] == "Alice@example.com"  # email-validator normalizes the domain
    assert user["full_name"] == "Alice L."
    assert user["is_verified"] is False and user["is_superuser"] is False
    assert user["disabled"] is False
    assert isinstance(user["id"], int)
    assert user["created_at"].endswith(("Z", "+00:00"))
    assert not {"hashed_password", "password"} & set(user)
    message = await mail_to(mailbox, "alice@example.com")
    assert message["From"] == "authdb <auth@example.com>"
    _, kind, token = link_in(message)
    assert kind == "verify"

    # Verify with the emailed token.
    verified = await harness.client.post("/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json()["is_verified"] is True
    assert verified.json()["id"] == user["id"]

    # Forgot: the reset link arrives; reset with it; the new password logs in.
    token = await token_mailed(
        mailbox, "alice@example.com", "reset-password", forgot(harness, "ALICE@example.com"), 202
    )
    assert (await reset(harness, token)).status_code == 204
    assert await login_status(harness, "alice", PASSWORD) == 401
    tokens = await harness.login("alice", NEW_PASSWORD)

    # Change email (the password confirms): pending until the link mailed to the new address
    # is followed; the old address gets a notice.
    changed = await harness.client.patch(
        "/users/me",
        json={"email": "alice@new.example", "current_password": NEW_PASSWORD},
        headers=bearer(tokens),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == "Alice@example.com"
    assert changed.json()["pending_email"] == "alice@new.example"
    assert changed.json()["is_verified"] is True
    new_mail = await mail_to(mailbox, "alice@new.example")
    _, kind, token = link_in(new_mail)
    assert kind == "verify"
    # Old address: the verification, the reset and now the notice of the change.
    assert "alice@new.example" in text_of(await mail_to(mailbox, "alice@example.com", 3))
    confirmed = await harness.client.post("/verify", json={"token": token})
    assert confirmed.status_code == 200
    assert confirmed.json()["email"] == "alice@new.example"
    assert confirmed.json()["pending_email"] is None
    assert confirmed.json()["is_verified"] is True

    # Delete: the password confirms; then the account and its sessions are gone.
    deleted = await harness.client.request(
        "DELETE", "/users/me", json={"password": NEW_PASSWORD}, headers=bearer(tokens)
    )
    assert deleted.status_code == 204
    assert await me_status(harness, tokens) == 401
    assert (await refresh(harness, tokens)).status_code == 401
    assert await login_status(harness, "alice", NEW_PASSWORD) == 401
    events = [e.event for e in await list_events(harness.auth.core)]
    for event in (
        "registered",
        "email_verified",
        "password_reset_requested",
        "password_reset",
        "account_updated",
        "account_deleted",
    ):
        assert event in events


# --- registration -------------------------------------------------------------------------------


async def test_concurrent_registrations_of_one_name_have_one_winner(harness: Harness) -> None:
    names = [("racer", "RACER", "Racer", "rAcEr")[i % 4] for i in range(20)]
    responses = await asyncio.gather(
        *(register(harness, name, f"racer{i}@example.com") for i, name in enumerate(names))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses]
    assert {r.json()["detail"] for r in responses if r.status_code == 409} == {
        "Username already registered"
    }


async def test_concurrent_registrations_of_one_email_have_one_winner(harness: Harness) -> None:
    emails = [
        ("same@example.com", "SAME@example.com", "Same@Example.COM")[i % 3] for i in range(20)
    ]
    responses = await asyncio.gather(
        *(register(harness, f"user{i}", email) for i, email in enumerate(emails))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses]
    assert {r.json()["detail"] for r in responses if r.status_code == 409} == {
        "Email already registered"
    }


async def test_duplicates_are_case_insensitive(harness: Harness) -> None:
    assert (await register(harness, "alice", "alice@example.com")).status_code == 201
    taken_name = await register(harness, "ALICE", "other@example.com")
    assert (taken_name.status_code, taken_name.json()) == (
        409,
        {"detail": "Username already registered"},
    )
    taken_email = await register(harness, "alice2", "ALICE@EXAMPLE.COM")
    assert (taken_email.status_code, taken_email.json()) == (
        409,
        {"detail": "Email already registered"},
    )


async def test_usernames_are_nfkc_normalized_unicode(harness: Harness) -> None:
    fullwidth_john = "\uff4a\uff4f\uff48\uff4e"
    response = await register(harness, fullwidth_john, "john@example.com")
    assert response.status_code == 201
    assert response.json()["username"] == "john"
    assert (await register(harness, "JOHN", "john2@example.com")).status_code == 409
    unicode_name = await register(harness, "Zoë.o_k-1", "zoe@example.com")
    assert unicode_name.status_code == 201
    assert unicode_name.json()["username"] == "Zoë.o_k-1"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"username": "al"}, "Username must be 3 to 64 characters long"),
        ({"username": "a" * 65}, "Username must be 3 to 64 characters long"),
        ({"username": "bad name"}, "Username may contain only"),
        ({"username": "bad<name>"}, "Username may contain only"),
        ({"password": "short"}, "at least 8 characters"),
        ({"password": "x" * 1025}, "at most 1024 characters"),
        ({"password": "password123"}, "too common"),
        ({"username": "charlie_brown", "password": "Charlie_Brown"}, "username"),
        ({"email": "peppermint.patty@example.com", "password": "Peppermint.Patty"}, "email"),
    ],
)
async def test_register_rules_are_422_with_a_detail_naming_the_rule(
    harness: Harness, body: dict[str, str], detail: str
) -> None:
    full = {"username": "someone", "email": "someone@example.com", "password": PASSWORD, **body}
    response = await harness.client.post("/register", json=full)
    assert response.status_code == 422, response.text
    [issue] = response.json()["detail"]  # FastAPI's list shape, like the framework's own 422s
    assert issue["type"] == "value_error"
    assert issue["loc"][0] == "body"
    assert detail in issue["msg"]


@pytest.mark.parametrize(
    "body",
    [
        {"username": "someone", "email": "not-an-email", "password": PASSWORD},
        {"username": "someone", "email": "a@b", "password": PASSWORD},
        {"username": "someone", "password": PASSWORD},
        {"username": 5, "email": "someone@example.com", "password": PASSWORD},
        [],
    ],
)
async def test_malformed_registration_is_422(harness: Harness, body: Any) -> None:
    response = await harness.client.post("/register", json=body)
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_registration_disabled_is_403(make_harness: MakeHarness, mailbox: Mailbox) -> None:
    harness = await make_harness(registration_enabled=False)
    response = await register(harness)
    assert response.status_code == 403
    assert response.json() == {"detail": "Registration is disabled"}
    assert mailbox.messages == []


async def test_registration_is_rate_limited_per_client_address(make_harness: MakeHarness) -> None:
    harness = await make_harness(rate_limit_register="2/minute")
    assert (await register(harness, "user1")).status_code == 201
    assert (await register(harness, "user2")).status_code == 201
    limited = await register(harness, "user3")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


async def test_require_verified_email_refuses_login_only_after_a_correct_password(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(require_verified_email=True)
    token = await token_mailed(mailbox, "alice@example.com", "verify", register(harness), 201)
    wrong = await harness.client.post("/token", data={"username": "alice", "password": "nope" * 3})
    assert wrong.status_code == 401
    right = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert (right.status_code, right.json()["detail"]) == (400, "Email not verified")
    assert (await harness.client.post("/verify", json={"token": token})).status_code == 200
    assert await login_status(harness, "alice", PASSWORD) == 200


# --- no enumeration -----------------------------------------------------------------------------


def _shape(response: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    return (
        response.status_code,
        response.json(),
        response.headers.get("content-type"),
        response.headers.get("cache-control"),
    )


async def test_forgot_answers_alike_for_known_and_unknown_addresses(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice")
    known = await forgot(harness, "alice@example.com")
    await mail_to(mailbox, "alice@example.com")
    unknown = await forgot(harness, "nobody@example.com")
    assert _shape(known) == _shape(unknown)
    assert known.status_code == 202
    await asyncio.sleep(0.2)
    assert len(mailbox.messages) == 1
    assert mailbox.to("nobody@example.com") == []


async def test_verify_request_answers_alike_for_known_and_unknown_addresses(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice", is_verified=False)
    await harness.create_user("bob", is_verified=True)
    known = await verify_request(harness, "alice@example.com")
    message = await mail_to(mailbox, "alice@example.com")
    assert link_in(message)[1] == "verify"
    unknown = await verify_request(harness, "nobody@example.com")
    already = await verify_request(harness, "bob@example.com")
    assert _shape(known) == _shape(unknown) == _shape(already)
    assert known.status_code == 202
    await asyncio.sleep(0.2)
    assert len(mailbox.messages) == 1


async def test_mail_requests_are_422_for_malformed_addresses(harness: Harness) -> None:
    for path in ("/password/forgot", "/verify/request"):
        assert (await harness.client.post(path, json={"email": "nope"})).status_code == 422
        assert (await harness.client.post(path, json={})).status_code == 422


async def test_disabled_accounts_get_no_reset_mail(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user("alice", disabled=True)
    assert (await forgot(harness, "alice@example.com")).status_code == 202
    await asyncio.sleep(0.2)
    assert mailbox.messages == []


async def test_mail_requests_are_limited_per_email_alike_for_unknown_addresses(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(rate_limit_email_requests="2/hour")
    # The mail sent at registration does not count against the address.
    assert (await register(harness, "alice", "alice@example.com")).status_code == 201
    for email in ("alice@example.com", "nobody@example.com"):
        assert (await forgot(harness, email)).status_code == 202
        # Verify and forgot requests share the budget, and case does not make a new address.
        assert (await verify_request(harness, email.upper())).status_code == 202
        limited = await forgot(harness, email)
        assert limited.status_code == 429, email
        assert int(limited.headers["retry-after"]) >= 1
    # Another address still has its own budget.
    assert (await forgot(harness, "carol@example.com")).status_code == 202


async def test_mail_requests_are_limited_per_client_address(make_harness: MakeHarness) -> None:
    harness = await make_harness(rate_limit_email_requests_per_address="3/minute")
    for i in range(3):
        assert (await forgot(harness, f"person{i}@example.com")).status_code == 202
    limited = await verify_request(harness, "someone-else@example.com")
    assert limited.status_code == 429
    assert "retry-after" in limited.headers


# --- verification tokens ------------------------------------------------------------------------


async def test_verify_token_works_once(harness: Harness, mailbox: Mailbox) -> None:
    token = await token_mailed(mailbox, "alice@example.com", "verify", register(harness), 201)
    assert (await harness.client.post("/verify", json={"token": token})).status_code == 200
    again = await harness.client.post("/verify", json={"token": token})
    assert (again.status_code, again.json()) == (400, {"detail": "Invalid or expired token"})


@pytest.mark.parametrize("token", ["nonsense", "x" * 43, "' OR 1=1 --"])
async def test_unknown_tokens_are_400(harness: Harness, token: str) -> None:
    for response in (
        await harness.client.post("/verify", json={"token": token}),
        await reset(harness, token),
    ):
        assert (response.status_code, response.json()) == (
            400,
            {"detail": "Invalid or expired token"},
        )
    assert (await harness.client.post("/verify", json={"token": ""})).status_code == 422


async def test_verify_token_expires_after_24_hours(harness: Harness, mailbox: Mailbox) -> None:
    token = await token_mailed(mailbox, "alice@example.com", "verify", register(harness), 201)
    shift_clock(harness, timedelta(hours=24, seconds=1))
    expired = await harness.client.post("/verify", json={"token": token})
    assert (expired.status_code, expired.json()) == (400, {"detail": "Invalid or expired token"})
    shift_clock(harness, timedelta(hours=23, minutes=59))
    assert (await harness.client.post("/verify", json={"token": token})).status_code == 200


async def test_verify_token_is_bound_to_the_address_it_was_sent_to(
    harness: Harness, mailbox: Mailbox
) -> None:
    token = await token_mailed(mailbox, "alice@example.com", "verify", register(harness), 201)
    tokens = await harness.login("alice")
    changed = await harness.client.patch(
        "/users/me",
        json={"email": "alice@new.example", "current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert changed.status_code == 200
    new_token = link_in(await mail_to(mailbox, "alice@new.example"))[2]
    assert (await harness.client.post("/verify", json={"token": new_token})).status_code == 200
    # The old link would otherwise act on an address the account no longer has.
    stale = await harness.client.post("/verify", json={"token": token})
    assert stale.status_code == 400
    me = (await harness.client.get("/users/me", headers=bearer(tokens))).json()
    assert (me["email"], me["is_verified"]) == ("alice@new.example", True)


# --- reset tokens -------------------------------------------------------------------------------


async def _reset_token(harness: Harness, mailbox: Mailbox, email: str = "alice@example.com") -> str:
    return await token_mailed(mailbox, email, "reset-password", forgot(harness, email), 202)


async def test_reset_token_works_once(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user("alice")
    token = await _reset_token(harness, mailbox)
    assert (await reset(harness, token)).status_code == 204
    again = await reset(harness, token, "yet another fine passphrase")
    assert (again.status_code, again.json()) == (400, {"detail": "Invalid or expired token"})
    assert await login_status(harness, "alice", NEW_PASSWORD) == 200


async def test_concurrent_resets_with_one_token_have_one_winner(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice")
    token = await _reset_token(harness, mailbox)
    responses = await asyncio.gather(
        *(reset(harness, token, f"{NEW_PASSWORD} number {i}") for i in range(6))
    )
    assert sorted(r.status_code for r in responses) == [204] + [400] * 5


async def test_reset_token_expires_after_an_hour(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user("alice")
    token = await _reset_token(harness, mailbox)
    shift_clock(harness, timedelta(minutes=60, seconds=1))
    assert (await reset(harness, token)).status_code == 400
    shift_clock(harness, timedelta(minutes=59))
    assert (await reset(harness, token)).status_code == 204


async def test_reset_token_lifetime_follows_the_setting(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(reset_token_expire_minutes=5)
    await harness.create_user("alice")
    token = await _reset_token(harness, mailbox)
    assert "5 minutes" in text_of(mailbox.to("alice@example.com")[-1])
    shift_clock(harness, timedelta(minutes=5, seconds=1))
    assert (await reset(harness, token)).status_code == 400


async def test_new_reset_request_invalidates_earlier_tokens(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice")
    first = await _reset_token(harness, mailbox)
    second = await _reset_token(harness, mailbox)
    assert first != second
    assert (await reset(harness, first)).status_code == 400
    assert (await reset(harness, second)).status_code == 204


async def test_weak_password_does_not_use_up_the_reset_token(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice")
    token = await _reset_token(harness, mailbox)
    for weak in ("short", "password1", "alice", "ALICE"):
        refused = await reset(harness, token, weak)
        assert refused.status_code == 422, weak
        [issue] = refused.json()["detail"]
        assert (issue["loc"], issue["type"]) == (["body", "password"], "value_error")
        assert issue["msg"].startswith("Password")
    assert (await reset(harness, token)).status_code == 204


async def test_invalid_token_wins_over_weak_password(harness: Harness) -> None:
    response = await reset(harness, "not-a-token", "short")
    assert response.status_code == 400


async def test_reset_and_change_invalidate_outstanding_reset_tokens(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user("alice")
    await harness.create_user("bob")
    # Bob's reset must not touch Alice's outstanding token.
    alice_token = await _reset_token(harness, mailbox)
    bob_token = await _reset_token(harness, mailbox, "bob@example.com")
    assert (await reset(harness, bob_token)).status_code == 204
    # A password change (by Alice) kills her outstanding reset token.
    tokens = await harness.login("alice")
    changed = await harness.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(tokens),
    )
    assert changed.status_code == 204
    assert (await reset(harness, alice_token, "some other passphrase")).status_code == 400


async def test_reset_token_dies_when_the_email_changes(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user("alice")
    token = await _reset_token(harness, mailbox)
    tokens = await harness.login("alice")
    changed = await harness.client.patch(
        "/users/me",
        json={"email": "alice@new.example", "current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert changed.status_code == 200
    confirm = link_in(await mail_to(mailbox, "alice@new.example"))[2]
    assert (await harness.client.post("/verify", json={"token": confirm})).status_code == 200
    assert (await reset(harness, token)).status_code == 400


# --- sessions -----------------------------------------------------------------------------------


async def test_reset_ends_every_session(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user("alice")
    laptop = await harness.login("alice")
    phone = await harness.login("alice")
    token = await _reset_token(harness, mailbox)
    assert (await reset(harness, token)).status_code == 204
    for tokens in (laptop, phone):
        assert await me_status(harness, tokens) == 401
        assert (await refresh(harness, tokens)).status_code == 401


async def test_reset_lifts_a_lockout(make_harness: MakeHarness, mailbox: Mailbox) -> None:
    harness = await make_harness(login_max_failures=2)
    user = await harness.create_user("alice")
    for _ in range(2):
        await harness.client.post("/token", data={"username": "alice", "password": "wrong" * 3})
    assert await _locked_until(harness, f"user:{user.id}") is not None
    token = await _reset_token(harness, mailbox)
    assert (await reset(harness, token)).status_code == 204
    assert await _locked_until(harness, f"user:{user.id}") is None
    assert await login_status(harness, "alice", NEW_PASSWORD) == 200


async def _locked_until(harness: Harness, key: str) -> datetime | None:
    async with harness.auth.core.sessionmaker() as db:
        return await db.scalar(select(LoginFailure.locked_until).where(LoginFailure.key == key))


async def test_password_change_keeps_this_session_and_ends_the_others(harness: Harness) -> None:
    await harness.create_user("alice")
    here = await harness.login("alice")
    elsewhere = await harness.login("alice")
    response = await harness.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(here),
    )
    assert response.status_code == 204
    assert response.headers["cache-control"] == "no-store"
    assert await me_status(harness, here) == 200
    assert (await refresh(harness, here)).status_code == 200
    assert await me_status(harness, elsewhere) == 401
    assert (await refresh(harness, elsewhere)).status_code == 401
    assert await login_status(harness, "alice", PASSWORD) == 401
    assert await login_status(harness, "alice", NEW_PASSWORD) == 200


async def test_password_change_checks_the_current_password_and_the_policy(
    harness: Harness,
) -> None:
    await harness.create_user("alice")
    headers = await harness.bearer("alice")
    path = "/users/me/password"
    wrong = await harness.client.post(
        path,
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert (wrong.status_code, wrong.json()) == (400, {"detail": "Incorrect password"})
    weak = await harness.client.post(
        path, json={"current_password": PASSWORD, "new_password": "123456789"}, headers=headers
    )
    assert weak.status_code == 422
    [issue] = weak.json()["detail"]
    assert issue["loc"] == ["body", "new_password"]
    assert "common" in issue["msg"]
    missing = await harness.client.post(path, json={"new_password": NEW_PASSWORD}, headers=headers)
    assert missing.status_code == 422
    anonymous = await harness.client.post(
        path, json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")
    assert await login_status(harness, "alice", PASSWORD) == 200


async def test_wrong_current_passwords_count_as_failed_logins(make_harness: MakeHarness) -> None:
    harness = await make_harness(rate_limit_login_failures="2/minute")
    await harness.create_user("alice")
    headers = await harness.bearer("alice")
    body = {"current_password": "guess number one", "new_password": NEW_PASSWORD}
    statuses = [
        (await harness.client.post("/users/me/password", json=body, headers=headers)).status_code
        for _ in range(3)
    ]
    assert statuses == [400, 400, 429]


# --- account changes ----------------------------------------------------------------------------


async def test_update_me_changes_username_and_full_name(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user("alice", full_name="Alice")
    headers = await harness.bearer("alice")
    response = await harness.client.patch(
        "/users/me", json={"username": "\uff21licia", "full_name": "Alicia L."}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "Alicia"
    assert response.json()["full_name"] == "Alicia L."
    assert response.json()["is_verified"] is True  # the email did not change
    cleared = await harness.client.patch("/users/me", json={"full_name": None}, headers=headers)
    assert cleared.json()["full_name"] is None
    assert cleared.json()["username"] == "Alicia"
    same_email = await harness.client.patch(
        "/users/me", json={"email": "ALICE@example.com"}, headers=headers
    )
    assert same_email.json()["is_verified"] is True  # the same address in other case
    assert await login_status(harness, "alicia", PASSWORD) == 200
    await asyncio.sleep(0.1)
    assert mailbox.messages == []
    events = [e for e in await list_events(harness.auth.core) if e.event == "account_updated"]
    assert events[0].detail == {"fields": ["username", "full_name"]}


async def test_update_me_conflicts_and_bad_input(harness: Harness) -> None:
    await harness.create_user("alice")
    await harness.create_user("bob")
    headers = await harness.bearer("alice")
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"username": "BOB"}, 409, "Username already registered"),
        (
            {"email": "Bob@Example.com", "current_password": PASSWORD},
            409,
            "Email already registered",
        ),
        ({"email": "new@example.com"}, 400, "Incorrect password"),
        ({"username": "x"}, 422, "Username must be 3 to 64 characters long"),
        ({"username": None}, 422, "Username cannot be removed"),
        ({"email": None}, 422, "Email cannot be removed"),
        ({"email": "not-an-email"}, 422, None),
        ({"is_superuser": True}, 422, None),
        ({"disabled": True}, 422, None),
    ]
    for body, status, detail in cases:
        response = await harness.client.patch("/users/me", json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        if detail is not None and status == 422:
            [issue] = response.json()["detail"]
            assert issue["msg"] == detail
            assert issue["loc"][0] == "body"
        elif detail is not None:
            assert response.json() == {"detail": detail}
    me = (await harness.client.get("/users/me", headers=headers)).json()
    assert (me["username"], me["email"], me["is_superuser"]) == (
        "alice",
        "alice@example.com",
        False,
    )
    # Changing one's own name's case is no conflict with oneself.
    own = await harness.client.patch("/users/me", json={"username": "Alice"}, headers=headers)
    assert (own.status_code, own.json()["username"]) == (200, "Alice")
    assert (await harness.client.patch("/users/me", json={"username": "carol"})).status_code == 401


async def test_delete_me_needs_the_password(harness: Harness) -> None:
    await harness.create_user("alice")
    tokens = await harness.login("alice")
    other = await harness.login("alice")
    wrong = await harness.client.request(
        "DELETE", "/users/me", json={"password": "not my password"}, headers=bearer(tokens)
    )
    assert (wrong.status_code, wrong.json()) == (400, {"detail": "Incorrect password"})
    missing = await harness.client.request("DELETE", "/users/me", headers=bearer(tokens))
    assert missing.status_code == 422
    assert await me_status(harness, tokens) == 200
    gone = await harness.client.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert gone.status_code == 204
    for session in (tokens, other):
        assert await me_status(harness, session) == 401
        assert (await refresh(harness, session)).status_code == 401
    # The name and address are free again.
    assert (await register(harness, "alice")).status_code == 201


# --- mail delivery ------------------------------------------------------------------------------


async def test_messages_are_multipart_with_text_and_html(
    harness: Harness, mailbox: Mailbox
) -> None:
    assert (await register(harness)).status_code == 201
    message = await mail_to(mailbox, "alice@example.com")
    assert message.get_content_type() == "multipart/alternative"
    types = [part.get_content_type() for part in message.iter_parts()]
    assert types == ["text/plain", "text/html"]
    link, _, _ = link_in(message)
    html = message.get_body(("html",))
    assert html is not None and link in html.get_content()
    assert message["Subject"] == "Confirm your email address"
    assert message["Message-ID"] and message["Date"]


async def test_links_use_public_url_whatever_the_host_header(
    harness: Harness, mailbox: Mailbox
) -> None:
    spoofed = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    response = await harness.client.post(
        "/register",
        json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        headers=spoofed,
    )
    assert response.status_code == 201
    verify_link, _, _ = link_in(await mail_to(mailbox, "alice@example.com"))
    assert verify_link.startswith(f"{PUBLIC}/verify?token=")
    await forgot(harness, "alice@example.com", headers=spoofed)
    reset_mail = await mail_to(mailbox, "alice@example.com", 2)
    reset_link, _, _ = link_in(reset_mail)
    assert reset_link.startswith(f"{PUBLIC}/reset-password?token=")
    for message in mailbox.messages:
        assert "evil.example" not in message.as_string()


async def test_smtp_down_changes_no_answer(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await make_harness(smtp_port=free_port(), smtp_timeout_seconds=2)
    with caplog.at_level("INFO", logger="authdb.mail"):
        registered = await register(harness)
        assert registered.status_code == 201
        assert (await forgot(harness, "alice@example.com")).status_code == 202
        assert (await forgot(harness, "nobody@example.com")).status_code == 202
        assert (await verify_request(harness, "alice@example.com")).status_code == 202
    errors = [r for r in caplog.records if r.name == "authdb.mail" and r.levelname == "ERROR"]
    assert len(errors) == 3
    assert all("alice@example.com" in r.getMessage() for r in errors)
    assert not any("token=" in r.getMessage() for r in caplog.records)
    # The account exists and works although its mail never left.
    assert await login_status(harness, "alice", PASSWORD) == 200


async def test_without_smtp_host_the_link_is_logged(
    make_harness: MakeHarness, mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await make_harness(smtp_host=None)
    with caplog.at_level("INFO", logger="authdb.mail"):
        assert (await register(harness)).status_code == 201
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "authdb.mail")
    found = _LINK.search(logged)
    assert found is not None, logged
    assert found.group(1).startswith(f"{PUBLIC}/verify?token=")
    assert mailbox.messages == []
    assert (await harness.client.post("/verify", json={"token": found.group(3)})).status_code == 200


# --- audit --------------------------------------------------------------------------------------


async def test_audit_trail_has_the_events_and_never_a_secret(
    harness: Harness, mailbox: Mailbox
) -> None:
    secrets = [PASSWORD, NEW_PASSWORD]
    secrets.append(
        await token_mailed(mailbox, "alice@example.com", "verify", register(harness), 201)
    )
    secrets.append(
        await token_mailed(
            mailbox,
            "alice@example.com",
            "verify",
            verify_request(harness, "alice@example.com"),
            202,
        )
    )
    assert (await harness.client.post("/verify", json={"token": secrets[-1]})).status_code == 200
    secrets.append(await _reset_token(harness, mailbox))
    assert (await reset(harness, secrets[-1])).status_code == 204
    tokens = await harness.login("alice", NEW_PASSWORD)
    await harness.client.post(
        "/users/me/password",
        json={"current_password": NEW_PASSWORD, "new_password": PASSWORD},
        headers=bearer(tokens),
    )
    await harness.client.patch("/users/me", json={"full_name": "A"}, headers=bearer(tokens))
    await harness.client.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    events = await list_events(harness.auth.core)
    names = [e.event for e in events]
    for expected in (
        "registered",
        "verification_requested",
        "email_verified",
        "password_reset_requested",
        "password_reset",
        "password_changed",
        "account_updated",
        "account_deleted",
    ):
        assert expected in names
    user_id = next(e.user_id for e in events if e.event == "registered")
    assert all(e.user_id == user_id for e in events)
    dump = repr([(e.event, e.detail, e.user_agent) for e in events])
    for secret in secrets:
        assert secret not in dump
    assert all(isinstance(e.created_at, datetime) for e in events)


async def test_trouble_behind_a_mail_request_is_logged_not_answered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(accounts_service, "request_password_reset", broken)
    await harness.create_user("alice")
    with caplog.at_level("INFO", logger="authdb"):
        response = await forgot(harness, "alice@example.com")
    assert response.status_code == 202
    assert "database went away" in caplog.text
