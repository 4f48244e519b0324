"""Issue 9's faults, each turned into tests of its whole kind, on SQLite and PostgreSQL.

Integers from paths, queries and token claims; control characters in every text field; limits
after normalization; stable lookup keys; normalized passwords; the email change; concurrent
logins and the lockout; the last superuser; current-password guessing.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from sqlalchemy import select

from authdb.db.models import User
from authdb.services.audit import list_events
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.test_accounts import link_in, mail_to

WRONG = "not the right password"
TOO_BIG = str(2**63)  # one past the largest id
NON_CANONICAL = ["+5", "05", " 5", "5 ", "5.0", "5_0", "1e3", "0x5", "\u0665", "five", ""]


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _superuser(harness: Harness) -> dict[str, str]:
    await harness.create_user("root", is_superuser=True)
    return await harness.bearer("root")


async def _openapi(harness: Harness) -> dict[str, Any]:
    return dict((await harness.client.get("/openapi.json")).json())


# --- 1. integers from paths, queries and claims -------------------------------------------------


async def test_huge_session_ids_are_404_not_500(harness: Harness) -> None:
    await harness.create_user()
    headers = await harness.bearer()
    for value in ("2147483648", "9223372036854775807", TOO_BIG, "9" * 5000, "0", "-1"):
        response = await harness.client.delete(f"/users/me/sessions/{value}", headers=headers)
        assert response.status_code == 404, (value, response.text)
        assert response.json() == {"detail": "Session not found"}


async def test_every_path_id_refuses_non_canonical_and_impossible_values(
    harness: Harness,
) -> None:
    headers = await _superuser(harness)
    document = await _openapi(harness)
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            for name in names:

                def url(value: str, path: str = path, name: str = name) -> str:
                    return path.replace("{" + name + "}", value)

                for value in NON_CANONICAL:
                    if not value.strip():
                        continue  # an empty segment is another path
                    response = await harness.client.request(
                        method, url(value), headers=headers, json={}
                    )
                    assert response.status_code == 422, (method, path, value, response.text)
                for value in ("0", "-7", TOO_BIG, "1" * 400):
                    response = await harness.client.request(
                        method, url(value), headers=headers, json={}
                    )
                    assert response.status_code == 404, (method, path, value, response.text)
                checked += 1
    assert checked >= 4  # DELETE /users/me/sessions/{id}, GET/PATCH/DELETE /users/{id}


async def test_every_query_integer_refuses_non_canonical_and_out_of_range_values(
    harness: Harness,
) -> None:
    headers = await _superuser(harness)
    document = await _openapi(harness)
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query" or parameter["schema"].get("type") != "integer":
                    continue
                for value in [*NON_CANONICAL, TOO_BIG, "-1"]:
                    params = {parameter["name"]: value}
                    response = await harness.client.request(
                        method, path, params=params, headers=headers
                    )
                    assert response.status_code == 422, (path, params, response.text)
                checked += 1
    assert checked >= 2  # offset and limit of GET /users


async def test_admin_user_ids_past_32_bits_are_404(harness: Harness) -> None:
    headers = await _superuser(harness)
    for method in ("GET", "PATCH", "DELETE"):
        response = await harness.client.request(
            method, "/users/2147483648", headers=headers, json={"full_name": "x"}
        )
        assert (response.status_code, response.json()) == (404, {"detail": "User not found"})
    page = await harness.client.get("/users", params={"offset": 2**62}, headers=headers)
    assert page.status_code == 200
    assert page.json()["items"] == []


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "1", "sid": 2**63},
        {"sub": "1", "sid": 2**31},
        {"sub": str(2**64), "sid": 1},
        {"sub": "01", "sid": 1},
        {"sub": "+1", "sid": 1},
        {"sub": " 1", "sid": 1},
        {"sub": "1", "sid": "1"},
        {"sub": "1", "sid": True},
        {"sub": "1", "sid": 0},
        {"sub": "-1", "sid": 1},
        {"sub": 1, "sid": 1},
    ],
)
async def test_id_claims_out_of_range_or_non_canonical_are_401(
    harness: Harness, claims: dict[str, Any]
) -> None:
    # Signed with the real key: only the claims themselves are wrong.
    settings = harness.auth.settings
    assert settings.secret_key is not None
    now = datetime.now(UTC)
    token = jwt.encode(
        {
            **claims,
            "iat": now,
            "exp": now + timedelta(minutes=5),
            "jti": "x",
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
        },
        settings.secret_key.get_secret_value(),
        algorithm="HS256",
    )
    response = await harness.client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}


async def test_ids_are_64_bit_on_both_databases(harness: Harness) -> None:
    engine = harness.auth.core.engine
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # An INTEGER PRIMARY KEY is the 64-bit rowid; BIGINT would not be.
            tables = ("users", "auth_sessions", "refresh_tokens", "email_tokens", "audit_events")
            for name in tables:
                columns = (await connection.exec_driver_sql(f"PRAGMA table_info({name})")).all()
                assert ("id", "INTEGER", 1) in {(c[1], c[2], c[5]) for c in columns}, name
            return
        rows = (
            await connection.exec_driver_sql(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND (column_name = 'id' OR column_name LIKE "
                "'%\\_id') AND table_name <> 'alembic_version'"
            )
        ).all()
        sequences = (
            await connection.exec_driver_sql("SELECT sequencename, data_type FROM pg_sequences")
        ).all()
    types = {(table, column): kind for table, column, kind in rows}
    # WebAuthn's credential ID is the authenticator's bytes, not a number of ours.
    assert types.pop(("passkeys", "credential_id")) == "bytea"
    assert types[("passkeys", "id")] == types[("passkeys", "user_id")] == "bigint"
    assert types[("auth_sessions", "id")] == "bigint"
    assert types[("audit_events", "id")] == "bigint"
    assert all(kind == "bigint" for kind in types.values()), types
    assert sequences and all(kind == "bigint" for _, kind in sequences), sequences


# --- 2, 3, 4: text fields, limits after normalization, stable keys -------------------------------

CONTROLS = ["\x00", "\x1b[31m", "a\nb", "\x7f", "\x85", "\u202e", "\u2066", "\u2028", "\ud800"]


@pytest.mark.parametrize("bad", CONTROLS)
async def test_control_characters_are_422_in_every_text_field(harness: Harness, bad: str) -> None:
    await harness.create_user()
    headers = await harness.bearer()
    bodies: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
        (
            "POST",
            "/register",
            {
                "username": "bob",
                "email": "b@example.com",
                "password": PASSWORD,
                "full_name": f"B{bad}",
            },
            {},
        ),
        (
            "POST",
            "/register",
            {"username": f"bo{bad}b", "email": "b@example.com", "password": PASSWORD},
            {},
        ),
        (
            "POST",
            "/register",
            {"username": "bob", "email": "b@example.com", "password": f"{PASSWORD}{bad}"},
            {},
        ),
        ("PATCH", "/users/me", {"full_name": f"A{bad}"}, headers),
        ("PATCH", "/users/me", {"username": f"al{bad}ice"}, headers),
        ("POST", "/verify", {"token": f"t{bad}"}, {}),
        ("POST", "/password/reset", {"token": "t", "password": f"{PASSWORD}{bad}"}, {}),
        (
            "POST",
            "/users/me/password",
            {"current_password": PASSWORD, "new_password": f"{PASSWORD}{bad}"},
            headers,
        ),
    ]
    for method, path, body, extra in bodies:
        # json.dumps escapes as a client would: "\\ud800", "\\u0000" travel as text.
        response = await harness.client.request(
            method,
            path,
            content=json.dumps(body),
            headers={**extra, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (path, body, response.text)
        assert isinstance(response.json()["detail"], list)
    form = f"username={quote(f'al{bad}ice', errors='surrogatepass')}&password=x"
    login = await harness.client.post(
        "/token",
        content=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login.status_code in (401, 422), login.text
    me = (await harness.client.get("/users/me", headers=headers)).json()
    assert me["full_name"] is None and me["username"] == "alice"


async def test_a_nul_full_name_is_refused_on_every_path(harness: Harness) -> None:
    from authdb.errors import InvalidInput

    with pytest.raises(InvalidInput):
        await harness.create_user("carol", full_name="C\x00")
    headers = await _superuser(harness)
    created = await harness.create_user("dave")
    response = await harness.client.patch(
        f"/users/{created.id}", json={"full_name": "D\x00"}, headers=headers
    )
    assert response.status_code == 422


async def test_username_limits_hold_after_case_folding(harness: Harness) -> None:
    # "ß" * 33 is 33 characters, but its key "ss" * 33 would be 66 (the column holds 64).
    for name in ("ß" * 33, "ﬃ" * 22):
        response = await harness.client.post(
            "/register", json={"username": name, "email": "x@example.com", "password": PASSWORD}
        )
        assert response.status_code == 422, (name, response.text)
    fits = await harness.client.post(
        "/register", json={"username": "ß" * 32, "email": "x@example.com", "password": PASSWORD}
    )
    assert fits.status_code == 201
    assert (
        await harness.client.post("/token", data={"username": "SS" * 32, "password": PASSWORD})
    ).status_code == 200


@pytest.mark.parametrize("name", ["ΐota1", "ǅemal", "ﬀinn", "Straße", "İstanbul", "ǰohn"])
async def test_every_case_variant_of_a_registered_name_logs_in(harness: Harness, name: str) -> None:
    registered = await harness.client.post(
        "/register", json={"username": name, "email": "n@example.com", "password": PASSWORD}
    )
    assert registered.status_code == 201, registered.text
    for variant in {
        name.upper(),
        name.lower(),
        name.casefold(),
        name.title(),
        name.swapcase(),
        unicodedata.normalize("NFD", name.upper()),
    }:
        response = await harness.client.post(
            "/token", data={"username": variant, "password": PASSWORD}
        )
        assert response.status_code == 200, (variant, response.text)


# --- 5, 16: passwords ---------------------------------------------------------------------------


async def test_a_password_registered_in_nfc_works_typed_in_nfd(harness: Harness) -> None:
    password = "Crème brûlée façade"  # NFC
    registered = await harness.client.post(
        "/register", json={"username": "chef", "email": "c@example.com", "password": password}
    )
    assert registered.status_code == 201
    for form in ("NFD", "NFC", "NFKD"):
        typed = unicodedata.normalize(form, password)
        response = await harness.client.post("/token", data={"username": "chef", "password": typed})
        assert response.status_code == 200, form


async def test_a_hash_of_an_unnormalized_password_still_verifies_and_is_upgraded(
    harness: Harness,
) -> None:
    # Stored before the rule: the hash is of the NFD form exactly as typed then.
    password = unicodedata.normalize("NFD", "Crème brûlée façade")
    user = await harness.create_user("chef", password="placeholder pass 123")
    legacy = harness.auth.core.hasher._hash.hash(password)
    async with harness.auth.core.sessionmaker.begin() as db:
        row = await db.get(User, user.id)
        assert row is not None
        row.hashed_password = legacy
    response = await harness.client.post("/token", data={"username": "chef", "password": password})
    assert response.status_code == 200
    async with harness.auth.core.sessionmaker() as db:
        upgraded = await db.scalar(select(User.hashed_password).where(User.id == user.id))
    assert upgraded != legacy
    nfc = unicodedata.normalize("NFC", password)
    assert (
        await harness.client.post("/token", data={"username": "chef", "password": nfc})
    ).status_code == 200


async def test_a_password_equal_to_the_whole_email_is_refused(harness: Harness) -> None:
    for password in ("alice.smith@example.com", "ALICE.SMITH@EXAMPLE.COM", "alice.smith"):
        response = await harness.client.post(
            "/register",
            json={"username": "alice2", "email": "alice.smith@example.com", "password": password},
        )
        assert response.status_code == 422, password
        assert "email" in response.json()["detail"][0]["msg"]


async def test_unknown_and_known_names_cost_the_same_hash_work(harness: Harness) -> None:
    await harness.create_user()
    hasher = harness.auth.core.hasher
    for name in ("alice", "nobody-by-this-name", "alice@example.com", "ghost@example.com"):
        for password in (WRONG, unicodedata.normalize("NFD", "Crème brûlée façade")):
            before = hasher.verifications
            response = await harness.client.post(
                "/token", data={"username": name, "password": password}
            )
            assert response.status_code == 401
            expected = 1 if unicodedata.is_normalized("NFKC", password) else 2
            assert hasher.verifications - before == expected, (name, password)


# --- 6: changing the email address --------------------------------------------------------------


async def test_an_email_change_needs_the_password(harness: Harness, mailbox: Mailbox) -> None:
    await harness.create_user()
    headers = await harness.bearer()
    for body in (
        {"email": "thief@example.com"},
        {"email": "thief@example.com", "current_password": WRONG},
    ):
        response = await harness.client.patch("/users/me", json=body, headers=headers)
        assert (response.status_code, response.json()) == (400, {"detail": "Incorrect password"})
    me = (await harness.client.get("/users/me", headers=headers)).json()
    assert (me["email"], me["pending_email"]) == ("alice@example.com", None)
    await asyncio.sleep(0.1)
    assert mailbox.to("thief@example.com") == []


async def test_a_pending_email_changes_nothing_until_confirmed(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user()
    headers = await harness.bearer()
    response = await harness.client.patch(
        "/users/me",
        json={"email": "thief@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"
    assert response.json()["pending_email"] == "thief@example.com"
    notice = await mail_to(mailbox, "alice@example.com")
    assert "thief@example.com" in notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # Forgot-password mail still goes to the old address, never to the pending one.
    await harness.client.post("/password/forgot", json={"email": "thief@example.com"})
    await harness.client.post("/password/forgot", json={"email": "alice@example.com"})
    await mailbox.wait_for(3)
    await asyncio.sleep(0.1)
    kinds = [link_in(m)[1] for m in mailbox.to("thief@example.com")]
    assert kinds == ["verify"]
    assert [link_in(m)[1] for m in mailbox.to("alice@example.com")[1:]] == ["reset-password"]
    # Logging in with the pending address does not work either.
    assert (
        await harness.client.post(
            "/token", data={"username": "thief@example.com", "password": PASSWORD}
        )
    ).status_code == 401


async def test_email_changes_share_the_mail_budgets(make_harness: Any, mailbox: Mailbox) -> None:
    harness = await make_harness(rate_limit_email_requests="3/hour")
    await harness.create_user()
    headers = await harness.bearer()
    statuses = []
    for number in range(5):
        response = await harness.client.patch(
            "/users/me",
            json={"email": f"new{number}@example.com", "current_password": PASSWORD},
            headers=headers,
        )
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    assert "retry-after" in response.headers
    # The per-account budget is the one forgot-password spends too.
    forgot = await harness.client.post("/password/forgot", json={"email": "alice@example.com"})
    assert forgot.status_code == 429


async def test_a_taken_address_is_told_only_after_the_password(harness: Harness) -> None:
    await harness.create_user()
    await harness.create_user("bob")
    headers = await harness.bearer()
    blind = await harness.client.patch(
        "/users/me", json={"email": "bob@example.com"}, headers=headers
    )
    assert blind.status_code == 400
    told = await harness.client.patch(
        "/users/me",
        json={"email": "bob@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    assert (told.status_code, told.json()) == (409, {"detail": "Email already registered"})


async def test_a_confirmed_change_loses_to_an_address_taken_meanwhile(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user()
    headers = await harness.bearer()
    await harness.client.patch(
        "/users/me",
        json={"email": "new@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    token = link_in(await mail_to(mailbox, "new@example.com"))[2]
    await harness.create_user("carol", email="new@example.com")
    response = await harness.client.post("/verify", json={"token": token})
    assert (response.status_code, response.json()) == (409, {"detail": "Email already registered"})
    me = (await harness.client.get("/users/me", headers=headers)).json()
    assert me["email"] == "alice@example.com"


# --- 7, 12: the lockout -------------------------------------------------------------------------


async def test_concurrent_correct_logins_never_meet_the_lockout(make_harness: Any) -> None:
    # The default limits: 30 at once is more than the address's failure budget (20) can hold
    # in flight, so some wait for a place; right passwords spend none, so all go through.
    harness = await make_harness(login_max_failures=10, rate_limit_login_failures="20/minute")
    await harness.create_user()
    responses = await asyncio.gather(
        *(
            harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
            for _ in range(30)
        )
    )
    assert [r.status_code for r in responses] == [200] * 30


async def test_a_burst_of_wrong_logins_gets_exactly_the_limit_of_401s(make_harness: Any) -> None:
    harness = await make_harness(login_max_failures=10, rate_limit_login_failures="20/minute")
    await harness.create_user()
    responses = await asyncio.gather(
        *(
            harness.client.post("/token", data={"username": "alice", "password": WRONG})
            for _ in range(40)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 10 + [429] * 30
    locked = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429


async def test_a_right_password_in_a_burst_of_wrong_ones_is_no_oracle(make_harness: Any) -> None:
    harness = await make_harness(login_max_failures=5)
    await harness.create_user()
    guesses = [WRONG] * 20 + [PASSWORD]
    responses = await asyncio.gather(
        *(
            harness.client.post("/token", data={"username": "alice", "password": guess})
            for guess in guesses
        )
    )
    statuses = [r.status_code for r in responses]
    # The right guess either came before the lock (200) or is hidden behind a 429.
    assert statuses.count(401) == 5
    assert statuses.count(200) + statuses.count(429) == 16


@pytest.mark.parametrize("route", ["password", "delete", "email"])
async def test_current_password_guesses_count_toward_the_lockout(
    make_harness: Any, route: str
) -> None:
    harness = await make_harness(login_max_failures=3)
    await harness.create_user()
    headers = await harness.bearer()

    async def guess(password: str) -> httpx.Response:
        if route == "password":
            return await harness.client.post(
                "/users/me/password",
                json={"current_password": password, "new_password": "a brand new passphrase"},
                headers=headers,
            )
        if route == "delete":
            return await harness.client.request(
                "DELETE", "/users/me", json={"password": password}, headers=headers
            )
        return await harness.client.patch(
            "/users/me",
            json={"email": "x@example.com", "current_password": password},
            headers=headers,
        )

    assert [(await guess(WRONG)).status_code for _ in range(3)] == [400, 400, 400]
    locked = await guess(PASSWORD)
    assert locked.status_code == 429
    assert "retry-after" in locked.headers
    # The account itself is locked: a login with the right password waits too.
    login = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert login.status_code == 429
    events = [e.event for e in await list_events(harness.auth.core)]
    assert events.count("password_failed") == 3
    assert "lockout" in events


# --- 10: the last superuser ---------------------------------------------------------------------


async def test_the_last_active_superuser_cannot_delete_themselves(harness: Harness) -> None:
    headers = await _superuser(harness)
    response = await harness.client.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=headers
    )
    assert (response.status_code, response.json()) == (
        409,
        {"detail": "Cannot remove the last active superuser"},
    )
    assert (await harness.client.get("/users/me", headers=headers)).status_code == 200
    # With a second administrator, leaving is fine.
    await harness.create_user("admin2", is_superuser=True)
    gone = await harness.client.request(
        "DELETE", "/users/me", json={"password": PASSWORD}, headers=headers
    )
    assert gone.status_code == 204


async def test_control_characters_in_the_user_agent_are_not_stored(harness: Harness) -> None:
    await harness.create_user()
    agent = b"Evil\x85\x9b31mAgent"  # C1 controls arrive as Latin-1 bytes
    response = await harness.client.post(
        "/token",
        data={"username": "alice", "password": PASSWORD},
        headers={"User-Agent": agent},  # type: ignore[dict-item]
    )
    assert response.status_code == 200
    listed = await harness.client.get("/users/me/sessions", headers=bearer(response.json()))
    stored = listed.json()[0]["user_agent"]
    assert stored == "Evil\ufffd\ufffd31mAgent"
    events = await list_events(harness.auth.core)
    assert all("\x85" not in (e.user_agent or "") for e in events)


async def _request_change(harness: Harness, headers: dict[str, str], mailbox: Mailbox) -> str:
    """Ask to move alice to evil@example.com; returns the token mailed to the new address."""
    response = await harness.client.patch(
        "/users/me",
        json={"email": "evil@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    assert response.json()["pending_email"] == "evil@example.com"
    await mail_to(mailbox, "alice@example.com")  # the notice, so later mails come after it
    return link_in(await mail_to(mailbox, "evil@example.com"))[2]


async def test_a_password_reset_cancels_a_pending_email_change(
    harness: Harness, mailbox: Mailbox
) -> None:
    # Someone who knew the password asked to move the account; its owner resets the password.
    await harness.create_user()
    stolen = await harness.bearer()
    token = await _request_change(harness, stolen, mailbox)
    # alice@ has the notice of the request (message 1); the reset link is message 2.
    await harness.client.post("/password/forgot", json={"email": "alice@example.com"})
    reset_token = link_in(await mail_to(mailbox, "alice@example.com", 2))[2]
    new = "a brand new passphrase"
    reset = await harness.client.post(
        "/password/reset", json={"token": reset_token, "password": new}
    )
    assert reset.status_code == 204
    # The link mailed to the attacker's address no longer moves the account.
    hijack = await harness.client.post("/verify", json={"token": token})
    assert hijack.status_code == 400
    me = (await harness.client.get("/users/me", headers=await harness.bearer("alice", new))).json()
    assert (me["email"], me["pending_email"]) == ("alice@example.com", None)


async def test_a_pending_change_is_withdrawn_by_asking_for_the_current_address(
    harness: Harness, mailbox: Mailbox
) -> None:
    await harness.create_user()
    headers = await harness.bearer()
    token = await _request_change(harness, headers, mailbox)
    withdrawn = await harness.client.patch(
        "/users/me", json={"email": "ALICE@example.com"}, headers=headers
    )
    assert withdrawn.status_code == 200
    assert withdrawn.json()["pending_email"] is None
    assert (await harness.client.post("/verify", json={"token": token})).status_code == 400


async def test_disabling_an_account_cancels_its_pending_change(
    harness: Harness, mailbox: Mailbox
) -> None:
    user = await harness.create_user()
    token = await _request_change(harness, await harness.bearer(), mailbox)
    root = await _superuser(harness)
    disabled = await harness.client.patch(
        f"/users/{user.id}", json={"disabled": True}, headers=root
    )
    assert disabled.json()["pending_email"] is None
    assert (await harness.client.post("/verify", json={"token": token})).status_code == 400
    shown = (await harness.client.get(f"/users/{user.id}", headers=root)).json()
    assert shown["email"] == "alice@example.com"


async def test_a_burst_from_one_address_is_cut_at_its_failure_budget(make_harness: Any) -> None:
    # Different names, so no account lock interferes: only the address budget (10) speaks.
    harness = await make_harness(rate_limit_login_failures="10/minute")
    await harness.create_user()
    guesses = [(f"user{i}", "Summer2024!") for i in range(60)]
    responses = await asyncio.gather(
        *(
            harness.client.post("/token", data={"username": name, "password": password})
            for name, password in guesses
        )
    )
    statuses = [r.status_code for r in responses]
    # At most the budget's worth of guesses is evaluated; the others never reach a hash.
    assert sorted(statuses) == [401] * 10 + [429] * 50
    after = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert after.status_code == 429  # the address is over its budget: no oracle


async def test_refusals_before_the_route_speak_oauth_on_token(harness: Harness) -> None:
    big_body = await harness.client.post("/token", content=b"a=" + b"x" * (2 * 1024 * 1024))
    big_head = await harness.client.post(
        "/token", data={"username": "a", "password": "b"}, headers={"X-Pad": "x" * 20000}
    )
    for response, status in ((big_body, 413), (big_head, 431)):
        assert response.status_code == status
        assert response.json()["error"] == "invalid_request"
        assert response.json()["error_description"] == response.json()["detail"]
    other = await harness.client.post("/register", content=b"x" * (2 * 1024 * 1024))
    assert other.status_code == 413
    assert "error" not in other.json()
