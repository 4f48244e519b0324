"""Passkeys after attack: adding one takes a recent sign-in or the password; oversized,
deeply nested and framed responses are refused with a 4xx; long non-ASCII names still make
usable flows; failures are audited with their reason; the pages' words for a failed passkey.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fido2 import cbor

from authdb.http.pages.signin_passkey import PASSKEY_FAILED
from authdb.services.passkeys import RECENT_SIGN_IN
from tests.conftest import PASSWORD, Harness
from tests.mfa_helpers import freeze
from tests.soft_authenticator import SoftAuthenticator, b64url_decode, b64url_encode
from tests.test_passkeys_api import (
    INVALID,
    LOGIN,
    PASSKEYS,
    REG_OPTIONS,
    account_with_passkey,
    assert_error,
    assert_refused,
    events,
    login_options,
    passkey_login,
    passkey_site,
    registration_options,
    signed_in_as,
    submit_registration,
    user_id_of,
)

MakeHarness = Callable[..., Awaitable[Harness]]
STALE = "Confirm your password to do this: you signed in more than 10 minutes ago"


async def test_adding_a_passkey_takes_a_recent_sign_in_or_the_password(
    make_harness: MakeHarness,
) -> None:
    """A stolen access token alone must not buy a passkey, which would outlive the token, a
    password change and a reset of MFA."""
    harness = await passkey_site(make_harness, login_max_failures=3)
    clock = freeze(harness)
    await harness.create_user()
    headers = await harness.bearer()
    assert (await harness.client.post(REG_OPTIONS, headers=headers)).status_code == 200

    clock.advance(seconds=RECENT_SIGN_IN.total_seconds() + 1)
    assert_error(await harness.client.post(REG_OPTIONS, headers=headers), 403, STALE)
    wrong = await harness.client.post(
        REG_OPTIONS, headers=headers, json={"password": "not the password"}
    )
    assert_error(wrong, 400, "Incorrect password")
    user_id = await user_id_of(harness, headers)
    assert ("password_failed", {}) in await events(harness, user_id)

    confirmed = await harness.client.post(REG_OPTIONS, headers=headers, json={"password": PASSWORD})
    assert confirmed.status_code == 200, confirmed.text
    authenticator = SoftAuthenticator()
    created = await submit_registration(harness, headers, authenticator.register(confirmed.json()))
    assert created.status_code == 201, created.text

    # A refresh is no new sign-in: its tokens are as old as the session.
    tokens = await harness.login()
    refreshed = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    clock.advance(seconds=RECENT_SIGN_IN.total_seconds() + 1)
    bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert_error(await harness.client.post(REG_OPTIONS, headers=bearer), 403, STALE)


async def test_deep_or_oversized_client_data_is_a_4xx_never_a_500(
    make_harness: MakeHarness,
) -> None:
    harness = await passkey_site(make_harness)
    await harness.create_user()
    headers = await harness.bearer()
    for payload in (b"[" * 5000, b'{"a":' * 5000, b" " * 20_000):
        encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        credential = {"response": {"clientDataJSON": encoded}}
        answer = await harness.client.post(
            PASSKEYS, headers=headers, json={"credential": credential}
        )
        assert_error(answer, 400, INVALID)
        flow = await login_options(harness)
        signed = await harness.client.post(
            LOGIN, json={"flow_id": flow["flow_id"], "credential": {"rawId": "AA", **credential}}
        )
        assert_refused(signed)


def _with_cose_padding(credential: dict[str, Any], extra: int) -> dict[str, Any]:
    """The registration with ``extra`` bytes of junk in its COSE key (a label of its own)."""
    attestation = cbor.decode(b64url_decode(credential["response"]["attestationObject"]))
    auth_data = attestation["authData"]
    # rpIdHash (32) + flags (1) + counter (4) + aaguid (16) + id length (2) + id + COSE key.
    id_length = int.from_bytes(auth_data[53:55], "big")
    start = 55 + id_length
    key = cbor.decode(auth_data[start:])
    key[-70000] = b"x" * extra
    attestation["authData"] = auth_data[:start] + cbor.encode(key)
    response = {
        **credential["response"],
        "attestationObject": b64url_encode(cbor.encode(attestation)),
    }
    return {**credential, "response": response}


async def test_a_public_key_padded_past_2_kib_is_refused(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness)
    await harness.create_user()
    headers = await harness.bearer()
    authenticator = SoftAuthenticator()
    small = _with_cose_padding(
        authenticator.register(await registration_options(harness, headers)), 16
    )
    assert (await submit_registration(harness, headers, small)).status_code == 201
    big = authenticator.register(
        await registration_options(harness, headers), respect_exclude=False
    )
    answer = await submit_registration(harness, headers, _with_cose_padding(big, 600_000))
    assert_error(answer, 400, INVALID)


async def test_a_framed_ceremony_is_refused(make_harness: MakeHarness) -> None:
    """``crossOrigin: true`` in clientDataJSON: the ceremony ran in a frame of another site."""
    harness = await passkey_site(make_harness)
    await harness.create_user()
    headers = await harness.bearer()
    authenticator = SoftAuthenticator()
    framed = {"crossOrigin": True, "topOrigin": "https://evil.example"}
    registration = authenticator.register(
        await registration_options(harness, headers), client_data_extra=framed, store=False
    )
    assert_error(await submit_registration(harness, headers, registration), 400, INVALID)

    account = await account_with_passkey(harness, "bob")
    assert_refused(await passkey_login(harness, account.authenticator, client_data_extra=framed))
    ok = await passkey_login(
        harness, account.authenticator, client_data_extra={"crossOrigin": False}
    )
    assert await signed_in_as(harness, ok) == "bob"


async def test_a_long_non_ascii_username_makes_a_flow_that_can_finish(
    make_harness: MakeHarness,
) -> None:
    harness = await passkey_site(make_harness)
    name = "é" * 64
    account = await account_with_passkey(harness, name, email="long@example.com")
    flow = await login_options(harness, "é" * 64)
    assert len(flow["flow_id"]) < 1024
    answer = await passkey_login(harness, account.authenticator, flow=flow)
    assert await signed_in_as(harness, answer) == name


async def test_failures_are_audited_with_their_reason(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness)
    account = await account_with_passkey(harness)
    assert_refused(await passkey_login(harness, account.authenticator, bad_signature=True))
    flow = await login_options(harness)
    assert (await passkey_login(harness, account.authenticator, flow=flow)).status_code == 200
    assert_refused(await passkey_login(harness, account.authenticator, flow=flow))
    assert_refused(await passkey_login(harness, account.authenticator, user_handle=b"x" * 32))
    reasons = [
        detail.get("reason")
        for event, detail in await events(harness, account.user_id)
        if event == "passkey_failed"
    ]
    assert reasons == [
        "assertion does not verify",
        "replayed challenge",
        "user handle is not the passkey's",
    ]


async def test_the_sign_in_page_says_a_failed_passkey_may_have_been_removed(
    make_harness: MakeHarness,
) -> None:
    harness = await passkey_site(make_harness)
    account = await account_with_passkey(harness)
    client = harness.client
    page = await client.get("/login")
    csrf = client.cookies["authdb_csrf"]
    flow = await login_options(harness)
    assertion = account.authenticator.authenticate(flow["options"], bad_signature=True)
    answer = await client.post(
        "/login/passkey",
        json={"flow_id": flow["flow_id"], "credential": assertion, "next": ""},
        headers={"X-CSRF-Token": csrf},
    )
    assert page.status_code == 200
    assert (answer.status_code, answer.json()) == (401, {"detail": PASSKEY_FAILED})
    # Without the header bound to this browser: refused before any passkey work.
    flow = await login_options(harness)
    assertion = account.authenticator.authenticate(flow["options"])
    refused = await client.post(
        "/login/passkey", json={"flow_id": flow["flow_id"], "credential": assertion}
    )
    assert refused.status_code == 403
    assert json.loads(refused.text)["detail"] == "CSRF token missing or invalid"
