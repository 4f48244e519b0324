"""``GET /users/me/events``: the caller's own security timeline (SPEC, "Operations")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from authdb.services import audit
from authdb.services.core import ClientInfo
from tests.conftest import PASSWORD, Harness
from tests.test_pages import csrf_field

MakeHarness = Callable[..., Awaitable[Harness]]
EVENTS = "/users/me/events"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
ENTRY_FIELDS = {"id", "time", "event", "ip_address", "device", "detail"}


async def sign_in(
    harness: Harness, username: str = "alice", password: str = PASSWORD, **headers: str
) -> httpx.Response:
    return await harness.client.post(
        "/token", data={"username": username, "password": password}, headers=headers
    )


async def bearer(harness: Harness, username: str = "alice", **headers: str) -> dict[str, str]:
    response = await sign_in(harness, username, **headers)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def timeline(harness: Harness, headers: dict[str, str], **query: Any) -> list[Any]:
    response = await harness.client.get(EVENTS, params=query, headers=headers)
    assert response.status_code == 200, response.text
    entries = list(response.json())
    for entry in entries:
        assert set(entry) == ENTRY_FIELDS, entry
    return entries


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() is not None and not moment.utcoffset()  # UTC, and says so
    return moment


async def test_the_timeline_lists_only_the_callers_events_newest_first(
    harness: Harness,
) -> None:
    alice = await harness.create_user("alice")
    bob = await harness.create_user("bob")
    headers = await bearer(harness, "alice", **{"User-Agent": FIREFOX})
    assert (await sign_in(harness, "alice", "wrong password")).status_code == 401
    changed = await harness.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
        headers=headers,
    )
    assert changed.status_code == 204, changed.text
    # Bob's events, of the same kinds, must never show in Alice's timeline.
    await bearer(harness, "bob", **{"User-Agent": SAFARI_IOS})
    assert (await sign_in(harness, "bob", "wrong password")).status_code == 401

    entries = await timeline(harness, headers)
    names = [entry["event"] for entry in entries]
    assert names == ["password_changed", "login_failed", "login_ok", "user_created"]
    ids = [entry["id"] for entry in entries]
    assert ids == sorted(ids, reverse=True)
    times = [parse_time(entry["time"]) for entry in entries]
    assert times == sorted(times, reverse=True)
    trail = await audit.list_events(harness.auth.core)
    owners = {row.id: row.user_id for row in trail}
    assert {owners[i] for i in ids} == {alice.id}
    assert bob.id in owners.values()
    assert "iOS" not in str(entries)

    signed_in = entries[names.index("login_ok")]
    assert signed_in["device"] == "Firefox on Linux"
    assert signed_in["ip_address"] == "127.0.0.1"
    assert set(signed_in["detail"]) == {"session_id", "mfa"}
    assert signed_in["detail"]["mfa"] is None
    assert entries[0]["detail"] == {"session_id": signed_in["detail"]["session_id"]}


async def test_limit_and_before_page_through_and_out_of_range_values_get_422(
    harness: Harness,
) -> None:
    user = await harness.create_user("alice")
    headers = await bearer(harness)
    # 60 more events, written as the services write them.
    async with harness.auth.core.sessionmaker.begin() as db:
        for n in range(60):
            client = ClientInfo(ip_address=f"198.51.100.{n}", user_agent=FIREFOX)
            audit.record(db, "login_failed", client=client, now=datetime.now(UTC), user_id=user.id)
    first = await timeline(harness, headers)
    assert len(first) == 50  # the default
    assert len(await timeline(harness, headers, limit=200)) == 62  # and user_created, login_ok
    one = await timeline(harness, headers, limit=1)
    assert [entry["id"] for entry in one] == [first[0]["id"]]
    page = await timeline(harness, headers, limit=3, before=first[0]["id"])
    assert [entry["id"] for entry in page] == [entry["id"] for entry in first[1:4]]
    assert await timeline(harness, headers, before=1) == []

    for query in (
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "+5"},
        {"limit": "99999999999999999999999"},
        {"before": "0"},
        {"before": "1.5"},
    ):
        response = await harness.client.get(EVENTS, params=query, headers=headers)
        assert response.status_code == 422, (query, response.text)
        (issue,) = response.json()["detail"]
        assert issue["loc"] == ["query", next(iter(query))]
        assert issue["msg"]


async def test_entries_show_whitelisted_fields_only(harness: Harness) -> None:
    user = await harness.create_user("alice")
    await harness.create_user("root", is_superuser=True)
    tokens = (await sign_in(harness)).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    admin_headers = await bearer(harness, "root")
    changed = await harness.client.patch(
        f"/users/{user.id}", json={"full_name": "Alice A."}, headers=admin_headers
    )
    assert changed.status_code == 200, changed.text
    client = ClientInfo(ip_address="203.0.113.9", user_agent=FIREFOX)
    async with harness.auth.core.sessionmaker.begin() as db:
        now = datetime.now(UTC)
        record = audit.record
        record(db, "passkey_counter_regressed", client=client, now=now, user_id=user.id,
               passkey_id=7, stored=41, presented=3)  # fmt: skip
        record(db, "login_failed", client=client, now=now, user_id=user.id, reason="internal")
        record(db, "mfa_setup_started", client=client, now=now, user_id=user.id)  # not shown
        record(db, "signing_key_rotated", client=client, now=now, user_id=user.id, kid="k1")
        record(db, "mfa_enabled", client=client, now=now, user_id=user.id, method="totp",
               secret="must never show")  # fmt: skip

    response = await harness.client.get(EVENTS, headers=headers)
    assert response.status_code == 200
    entries = {entry["event"]: entry for entry in response.json()}
    assert set(entries) == {
        "mfa_enabled",
        "login_failed",
        "passkey_counter_regressed",
        "admin_user_updated",
        "login_ok",
        "user_created",
    }
    assert entries["passkey_counter_regressed"]["detail"] == {"passkey_id": 7}
    assert entries["login_failed"]["detail"] == {}
    assert entries["mfa_enabled"]["detail"] == {"method": "totp"}
    # An administrator's change: what and that an administrator did it, not from where.
    by_admin = entries["admin_user_updated"]
    assert by_admin["detail"] == {"fields": ["full_name"], "by_administrator": True}
    assert by_admin["ip_address"] is None and by_admin["device"] is None
    for secret in (tokens["access_token"], tokens["refresh_token"], "must never show", "k1"):
        assert secret not in response.text
    assert set(by_admin) == ENTRY_FIELDS  # no actor id either
    # Made with the CLI (createuser, changepassword, users disable ...): an operator's doing.
    by_operator = entries["user_created"]
    assert by_operator["detail"].get("by_administrator") is True
    assert by_operator["ip_address"] is None and by_operator["device"] is None


async def test_cookie_sessions_read_the_timeline_and_no_credentials_get_401(
    harness: Harness,
) -> None:
    await harness.create_user("alice")
    form = await harness.client.get("/login")
    signed_in = await harness.client.post(
        "/login",
        data={"csrf_token": csrf_field(form.text), "username": "alice", "password": PASSWORD},
        headers={"User-Agent": SAFARI_IOS},
    )
    assert signed_in.status_code == 303, signed_in.text
    entries = await timeline(harness, {})  # the session cookie alone
    assert entries[0]["event"] == "login_ok"
    assert entries[0]["device"] == "Safari on iOS"

    harness.client.cookies.clear()
    anonymous = await harness.client.get(EVENTS)
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Not authenticated"}
    forged = await harness.client.get(EVENTS, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_openapi_document_describes_the_timeline(harness: Harness) -> None:
    doc = (await harness.client.get("/openapi.json")).json()
    operation = doc["paths"][EVENTS]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
    assert schema["items"]["$ref"].endswith("/SecurityEventRead")
    model = doc["components"]["schemas"]["SecurityEventRead"]
    assert set(model["properties"]) == ENTRY_FIELDS
    limit = next(p for p in operation["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 200)
