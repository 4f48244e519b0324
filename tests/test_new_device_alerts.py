"""``AUTHDB_NEW_DEVICE_ALERTS``: an email when a sign-in comes from a device and network not seen
in the last 90 days (SPEC, "Operations").

The client's address is set as a reverse proxy would (the test client's peer, 127.0.0.1, is a
trusted proxy, and ``X-Forwarded-For`` names the client); the device is its User-Agent. Mail
goes to the real SMTP server of ``tests.conftest``; the check runs as a background task, which
the in-process transport finishes before it returns the response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import event

from authdb.services.new_device import network_of
from tests.conftest import PASSWORD, Harness, Mailbox, free_port
from tests.mfa_helpers import FrozenClock, enable_mfa, freeze, mfa_grant, mfa_token, totp_code
from tests.test_pages import csrf_field
from tests.test_passkeys_api import account_with_passkey, passkey_login, passkey_site

MakeHarness = Callable[..., Awaitable[Harness]]
SUBJECT = "New sign-in to your authdb account"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
FIREFOX_NEXT = "Mozilla/5.0 (X11; Linux x86_64; rv:129.0) Gecko/20100101 Firefox/129.0"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
ALERTING = {"new_device_alerts": True, "trusted_proxies": "127.0.0.1"}


async def sign_in(
    harness: Harness, user_agent: str, address: str, username: str = "alice"
) -> dict[str, Any]:
    """``POST /token`` from ``user_agent`` at ``address``; the token pair."""
    response = await harness.client.post(
        "/token",
        data={"username": username, "password": PASSWORD},
        headers={"User-Agent": user_agent, "X-Forwarded-For": address},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def alerts(mailbox: Mailbox, username: str = "alice") -> list[EmailMessage]:
    return [m for m in mailbox.to(f"{username}@example.com") if m["Subject"] == SUBJECT]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def html_of(message: EmailMessage) -> str:
    body = message.get_body(("html",))
    assert body is not None
    return str(body.get_content())


@contextmanager
def trail_reads(harness: Harness) -> Iterator[list[str]]:
    """The queries for earlier sign-ins (``login_ok`` rows) that the app runs meanwhile."""
    seen: list[str] = []

    def look(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "login_ok" in str(parameters):
            seen.append(statement)

    engine = harness.auth.core.engine.sync_engine
    event.listen(engine, "before_cursor_execute", look)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", look)


# --- the rule ------------------------------------------------------------------------------


async def test_the_first_sign_in_and_known_places_send_no_mail(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(**ALERTING)
    await harness.create_user("alice")
    await sign_in(harness, FIREFOX, "198.51.100.7")  # the first: nothing to compare
    # A browser update and another address of the same /24 are still the same place.
    await sign_in(harness, FIREFOX_NEXT, "198.51.100.200")
    await sign_in(harness, FIREFOX, "198.51.100.7")
    assert alerts(mailbox) == []


async def test_a_new_device_gets_one_mail_naming_it_the_address_and_what_to_do(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(**ALERTING)
    await harness.create_user("alice")
    await harness.create_user("bob")
    await sign_in(harness, FIREFOX, "198.51.100.7")
    await sign_in(harness, CHROME, "198.51.100.7", "bob")  # Bob's places are not Alice's
    tokens = await sign_in(harness, CHROME, "198.51.100.7")
    (message,) = await mailbox.wait_for(1)
    assert message["To"] == "alice@example.com" and message["Subject"] == SUBJECT
    text = text_of(message)
    assert "Chrome on Linux" in text and "198.51.100.7" in text
    assert "http://auth.example.test/account" in text
    assert datetime.now(UTC).strftime("%Y-%m-%d") in text and "UTC" in text
    html = html_of(message)
    assert "Chrome on Linux" in html and 'href="http://auth.example.test/account"' in html
    for secret in (tokens["access_token"], tokens["refresh_token"], PASSWORD):
        assert secret not in text and secret not in html
    # Now known: no second mail for the same place.
    await sign_in(harness, CHROME, "198.51.100.8")
    assert len(alerts(mailbox)) == 1 and alerts(mailbox, "bob") == []


async def test_a_new_network_gets_a_mail_ipv4_per_24_and_ipv6_per_64(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(**ALERTING)
    await harness.create_user("alice")
    await sign_in(harness, FIREFOX, "198.51.100.7")
    await sign_in(harness, FIREFOX, "203.0.113.7")  # another /24
    (message,) = await mailbox.wait_for(1)
    assert "203.0.113.7" in text_of(message) and "Firefox on Linux" in text_of(message)
    await sign_in(harness, FIREFOX, "2001:db8:1:2::1")  # IPv6: new
    await mailbox.wait_for(2)
    await sign_in(harness, FIREFOX, "2001:db8:1:2:ffff:ffff:ffff:ffff")  # the same /64
    assert len(alerts(mailbox)) == 2
    await sign_in(harness, FIREFOX, "2001:db8:1:3::1")  # the neighbouring /64
    await mailbox.wait_for(3)
    assert "2001:db8:1:3::1" in text_of(alerts(mailbox)[-1])


async def test_with_the_setting_off_nothing_is_looked_up_or_sent(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(trusted_proxies="127.0.0.1")
    await harness.create_user("alice")
    with trail_reads(harness) as reads:
        await sign_in(harness, FIREFOX, "198.51.100.7")
        await sign_in(harness, CHROME, "203.0.113.7")
    assert reads == [] and mailbox.messages == []
    # On the same database with the setting on, a sign-in reads the trail and alerts.
    alerting = await make_harness(**ALERTING)
    with trail_reads(alerting) as reads:
        await sign_in(alerting, SAFARI_IOS, "198.51.100.7")
    assert reads
    await mailbox.wait_for(1)


async def test_a_sign_in_more_than_90_days_ago_does_not_count(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await make_harness(**ALERTING)
    await harness.create_user("alice")
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=200))
    harness.auth.core.clock = clock
    await sign_in(harness, FIREFOX, "198.51.100.7")
    clock.advance(days=89)
    await sign_in(harness, FIREFOX, "198.51.100.7")  # seen 89 days ago
    assert alerts(mailbox) == []
    clock.advance(days=91)
    await sign_in(harness, FIREFOX, "198.51.100.7")  # last seen 91 days ago
    (message,) = await mailbox.wait_for(1)
    assert clock.now.strftime("%Y-%m-%d %H:%M UTC") in text_of(message)


async def test_a_broken_mail_server_never_touches_the_sign_in(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await make_harness(**ALERTING, smtp_port=free_port(), smtp_timeout_seconds=2)
    await harness.create_user("alice")
    await sign_in(harness, FIREFOX, "198.51.100.7")
    await sign_in(harness, CHROME, "203.0.113.7")  # answered 200 all the same
    assert "could not send the 'new_device' email" in caplog.text


# --- every sign-in path ---------------------------------------------------------------------


async def test_mfa_passkey_and_page_sign_ins_alert_too(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    harness = await passkey_site(make_harness, **ALERTING)
    clock = freeze(harness)
    # Each first sign-in (python-httpx at 127.0.0.1) happens while setting the account up.
    account = await account_with_passkey(harness, "alice")
    await harness.create_user("bob")
    secret, _codes, _ = await enable_mfa(harness, "bob")
    await harness.create_user("carol")
    await harness.bearer("carol")
    clock.advance(minutes=2)
    assert alerts(mailbox) == [] and alerts(mailbox, "bob") == [] and alerts(mailbox, "carol") == []
    mail_before = len(mailbox.messages)  # "passkey added", "MFA on"

    # A passkey sign-in from a phone.
    harness.client.headers["User-Agent"] = CHROME_ANDROID
    response = await passkey_login(harness, account.authenticator)
    assert response.status_code == 200, response.text
    await mailbox.wait_for(mail_before + 1)
    (alice,) = alerts(mailbox)
    assert alice["To"] == "alice@example.com" and "Chrome on Android" in text_of(alice)

    # The MFA grant completes a password sign-in from another device.
    harness.client.headers["User-Agent"] = SAFARI_IOS
    token = await mfa_token(harness, "bob")
    assert len(mailbox.messages) == mail_before + 1  # a right password alone is no sign-in
    granted = await mfa_grant(harness, token, otp=totp_code(secret, clock.now))
    assert granted.status_code == 200, granted.text
    await mailbox.wait_for(mail_before + 2)
    (bob,) = alerts(mailbox, "bob")
    assert "Safari on iOS" in text_of(bob)

    # The sign-in page.
    form = await harness.client.get("/login", headers={"User-Agent": FIREFOX})
    signed_in = await harness.client.post(
        "/login",
        data={"csrf_token": csrf_field(form.text), "username": "carol", "password": PASSWORD},
        headers={"User-Agent": FIREFOX},
    )
    assert signed_in.status_code == 303, signed_in.text
    await mailbox.wait_for(mail_before + 3)
    (carol,) = alerts(mailbox, "carol")
    assert "Firefox on Linux" in text_of(carol)
    assert "http://localhost:8000/account" in text_of(carol)


# --- networks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("198.51.100.7", "198.51.100.0/24"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("testclient", "testclient"),
        (None, None),
    ],
)
def test_networks_are_ipv4_slash_24_and_ipv6_slash_64(
    address: str | None, network: str | None
) -> None:
    assert network_of(address) == network


async def test_unverified_addresses_get_no_alert_and_alerts_are_capped(
    make_harness: MakeHarness, mailbox: Mailbox
) -> None:
    """Anyone can register a stranger's address: no alert goes to an unverified one. And a
    verified account gets at most AUTHDB_RATE_LIMIT_EMAIL_REQUESTS alerts, however many new
    User-Agents a holder of the password signs in with."""
    harness = await make_harness(**ALERTING, rate_limit_email_requests="2/hour")
    await harness.create_user("mallory", is_verified=False)
    await sign_in(harness, FIREFOX, "198.51.100.7", "mallory")
    for number in range(3):
        await sign_in(harness, f"URGENT call +1-800-555-01{number:02d}", "198.51.100.7", "mallory")
    await harness.create_user("alice")
    await sign_in(harness, FIREFOX, "198.51.100.7")
    for number in range(4):
        await sign_in(harness, f"Agent/{number}", f"203.0.{number}.1")
    # The in-process transport answers once the background tasks (the alerts) have run.
    assert len(alerts(mailbox)) == 2
    assert alerts(mailbox, "mallory") == []
