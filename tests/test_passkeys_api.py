"""Passkeys (WebAuthn) through the HTTP API (SPEC, "Passkeys (WebAuthn)"), with the software
authenticator of ``tests.soft_authenticator`` standing in for a browser and its platform
authenticator: registration, the list, removal, sign-in and the ways a sign-in is refused.

The second factor, MFA and lockout are in ``tests/test_passkeys_mfa.py``. Every HTTP test runs
on SQLite and PostgreSQL. The relying party is ``http://localhost:8000`` (rp id ``localhost``):
passkeys need a domain name, and the in-process client's own base URL does not matter, only
the origin the authenticator writes into ``clientDataJSON``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from fido2 import cbor
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidJSONStructure,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from authdb.db.models import Passkey, User
from authdb.services import audit
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.mfa_helpers import freeze
from tests.soft_authenticator import (
    AuthenticatorError,
    SoftAuthenticator,
    b64url_decode,
    b64url_encode,
)

MakeHarness = Callable[..., Awaitable[Harness]]

PUBLIC_URL = "http://localhost:8000"
RP_ID = "localhost"
REG_OPTIONS = "/users/me/passkeys/options"
PASSKEYS = "/users/me/passkeys"
LOGIN_OPTIONS = "/passkeys/login/options"
LOGIN = "/passkeys/login"
INVALID = "Invalid passkey"
NEEDS_DOMAIN = (
    "Passkeys need a domain name in AUTHDB_PUBLIC_URL (use http://localhost:PORT for development)"
)
_DELETE: Any = type("Delete", (), {"__repr__": lambda self: "<absent>"})()
CHROME_ON_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


# --- helpers (also used by tests/test_passkeys_mfa.py) ----------------------------------------


async def passkey_site(make_harness: MakeHarness, **overrides: Any) -> Harness:
    """A harness whose relying party is ``http://localhost:8000``."""
    return await make_harness(**{"public_url": PUBLIC_URL, **overrides})


async def user_id_of(harness: Harness, headers: Mapping[str, str]) -> int:
    me = await harness.client.get("/users/me", headers=dict(headers))
    assert me.status_code == 200, me.text
    return int(me.json()["id"])


async def events(harness: Harness, user_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await audit.list_events(harness.auth.core, user_id=user_id)
    return [(row.event, dict(row.detail or {})) for row in rows]


async def event_names(harness: Harness, user_id: int) -> list[str]:
    return [name for name, _ in await events(harness, user_id)]


def assert_error(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["detail"] == detail, response.text


def assert_refused(response: httpx.Response, detail: str = INVALID) -> None:
    """A refused passkey sign-in: 401 with ``detail`` and no tokens."""
    assert_error(response, 401, detail)
    assert "access_token" not in response.json()


async def signed_in_as(harness: Harness, response: httpx.Response) -> str:
    """The token pair of a 200 works on /users/me; returns the username it names."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["refresh_token"] and body["expires_in"] > 0
    assert response.headers["cache-control"] == "no-store"
    me = await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200, me.text
    return str(me.json()["username"])


async def registration_options(harness: Harness, headers: Mapping[str, str]) -> dict[str, Any]:
    response = await harness.client.post(REG_OPTIONS, headers=dict(headers))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def submit_registration(
    harness: Harness,
    headers: Mapping[str, str],
    credential: Any,
    *,
    name: str | None = None,
    user_agent: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"credential": credential}
    if name is not None:
        body["name"] = name
    sent = dict(headers)
    if user_agent is not None:
        sent["User-Agent"] = user_agent
    return await harness.client.post(PASSKEYS, json=body, headers=sent)


async def add_passkey(
    harness: Harness,
    headers: Mapping[str, str],
    authenticator: SoftAuthenticator,
    *,
    name: str | None = None,
    **knobs: Any,
) -> dict[str, Any]:
    """Options, ``navigator.credentials.create()``, POST: the 201 body, plus the new
    credential's base64url id under ``"credential_id"``."""
    options = await registration_options(harness, headers)
    credential = authenticator.register(options, **knobs)
    response = await submit_registration(harness, headers, credential, name=name)
    assert response.status_code == 201, response.text
    return {**response.json(), "credential_id": credential["id"]}


async def login_options(harness: Harness, username: str | None = None) -> dict[str, Any]:
    """``POST /passkeys/login/options`` (no body without ``username``): flow_id and options."""
    if username is None:
        response = await harness.client.post(LOGIN_OPTIONS)
    else:
        response = await harness.client.post(LOGIN_OPTIONS, json={"username": username})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def passkey_login(
    harness: Harness,
    authenticator: SoftAuthenticator,
    *,
    username: str | None = None,
    mfa_token: str | None = None,
    flow: Mapping[str, Any] | None = None,
    **knobs: Any,
) -> httpx.Response:
    """A whole passkey sign-in: options (or ``flow``), ``navigator.credentials.get()``, POST."""
    if flow is None:
        flow = await login_options(harness, username)
    credential = authenticator.authenticate(flow["options"], **knobs)
    body: dict[str, Any] = {"flow_id": flow["flow_id"], "credential": credential}
    if mfa_token is not None:
        body["mfa_token"] = mfa_token
    return await harness.client.post(LOGIN, json=body)


@dataclass
class Account:
    """A user with one passkey, held by ``authenticator``."""

    username: str
    user_id: int
    headers: dict[str, str]
    authenticator: SoftAuthenticator
    passkey: dict[str, Any]

    @property
    def credential_id(self) -> str:
        return str(self.passkey["credential_id"])

    @property
    def passkey_id(self) -> int:
        return int(self.passkey["id"])


async def account_with_passkey(
    harness: Harness,
    username: str = "alice",
    *,
    authenticator: SoftAuthenticator | None = None,
    **user_fields: Any,
) -> Account:
    """Create ``username`` and register one passkey for it (in a new authenticator unless
    one is given)."""
    await harness.create_user(username, **user_fields)
    headers = await harness.bearer(username)
    authenticator = authenticator if authenticator is not None else SoftAuthenticator()
    passkey = await add_passkey(harness, headers, authenticator)
    return Account(username, await user_id_of(harness, headers), headers, authenticator, passkey)


async def list_passkeys(harness: Harness, headers: Mapping[str, str]) -> list[dict[str, Any]]:
    response = await harness.client.get(PASSKEYS, headers=dict(headers))
    assert response.status_code == 200, response.text
    return list(response.json())


async def delete_passkey(
    harness: Harness, headers: Mapping[str, str], passkey_id: Any, password: str | None = PASSWORD
) -> httpx.Response:
    body = {"password": password} if password is not None else {}
    return await harness.client.request(
        "DELETE", f"{PASSKEYS}/{passkey_id}", json=body, headers=dict(headers)
    )


async def stored_passkey(harness: Harness, passkey_id: int) -> Passkey:
    async with harness.auth.core.sessionmaker() as db:
        row = await db.scalar(select(Passkey).where(Passkey.id == passkey_id))
    assert row is not None
    return row


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
async def site(make_harness: MakeHarness) -> Harness:
    return await passkey_site(make_harness)


# --- the software authenticator against py_webauthn (no database) ---------------------------


def _py_webauthn_creation_options() -> dict[str, Any]:
    selection = AuthenticatorSelectionCriteria(
        resident_key=ResidentKeyRequirement.REQUIRED,
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    options = generate_registration_options(
        rp_id=RP_ID, rp_name="Test", user_name="alice", authenticator_selection=selection
    )
    return dict(json.loads(options_to_json(options)))


def _py_webauthn_request_options() -> dict[str, Any]:
    return dict(json.loads(options_to_json(generate_authentication_options(rp_id=RP_ID))))


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
@pytest.mark.parametrize("verified", [True, False])
def test_soft_authenticator_ceremonies_verify_with_py_webauthn(
    algorithm: str, verified: bool
) -> None:
    authenticator = SoftAuthenticator(algorithm=algorithm, user_verified=verified)
    creation = _py_webauthn_creation_options()
    registration = authenticator.register(creation)
    assert registration["type"] == "public-key" and registration["id"] == registration["rawId"]
    assert registration["authenticatorAttachment"] == "platform"
    made = verify_registration_response(
        credential=registration,
        expected_challenge=b64url_decode(creation["challenge"]),
        expected_rp_id=RP_ID,
        expected_origin=PUBLIC_URL,
        require_user_verification=verified,
    )
    assert made.fmt == "none" and made.user_verified is verified and made.sign_count == 0
    assert b64url_encode(made.credential_id) == registration["id"]
    count = 0
    for _ in range(2):
        request = _py_webauthn_request_options()
        assertion = authenticator.authenticate(request)
        assert assertion["response"]["userHandle"] == creation["user"]["id"]
        checked = verify_authentication_response(
            credential=assertion,
            expected_challenge=b64url_decode(request["challenge"]),
            expected_rp_id=RP_ID,
            expected_origin=PUBLIC_URL,
            credential_public_key=made.credential_public_key,
            credential_current_sign_count=count,
            require_user_verification=verified,
        )
        assert checked.new_sign_count == count + 1 and checked.user_verified is verified
        count = checked.new_sign_count


@pytest.mark.parametrize(
    "knobs",
    [
        {"origin": "http://evil.example"},
        {"rp_id": "evil.example"},
        {"challenge": b64url_encode(b"another challenge of 32 bytes...")},
        {"client_data_type": "webauthn.create"},
        {"user_present": False},
        {"bad_signature": True},
        {"replace_client_data": b'{"type":"webauthn.get"}'},
        {"counter": 3},
        {"credential_type": "password"},
    ],
    ids=lambda knobs: next(iter(knobs)),
)
def test_soft_authenticator_tampering_is_refused_by_py_webauthn(knobs: dict[str, Any]) -> None:
    authenticator = SoftAuthenticator()
    creation = _py_webauthn_creation_options()
    made = verify_registration_response(
        credential=authenticator.register(creation),
        expected_challenge=b64url_decode(creation["challenge"]),
        expected_rp_id=RP_ID,
        expected_origin=PUBLIC_URL,
    )
    request = _py_webauthn_request_options()
    with pytest.raises((InvalidAuthenticationResponse, InvalidJSONStructure)):
        verify_authentication_response(
            credential=authenticator.authenticate(request, **knobs),
            expected_challenge=b64url_decode(request["challenge"]),
            expected_rp_id=RP_ID,
            expected_origin=PUBLIC_URL,
            credential_public_key=made.credential_public_key,
            credential_current_sign_count=3,
        )


@pytest.mark.parametrize(
    "knobs",
    [
        {"origin": "http://evil.example"},
        {"rp_id": "evil.example"},
        {"client_data_type": "webauthn.get"},
        {"user_present": False},
        {"att_stmt": {"sig": b"\x00"}},
    ],
    ids=lambda knobs: next(iter(knobs)),
)
def test_soft_authenticator_bad_registrations_are_refused_by_py_webauthn(
    knobs: dict[str, Any],
) -> None:
    creation = _py_webauthn_creation_options()
    with pytest.raises((InvalidRegistrationResponse, InvalidJSONStructure)):
        verify_registration_response(
            credential=SoftAuthenticator().register(creation, **knobs),
            expected_challenge=b64url_decode(creation["challenge"]),
            expected_rp_id=RP_ID,
            expected_origin=PUBLIC_URL,
        )


def test_soft_authenticator_honours_exclude_credentials_and_needs_a_choice() -> None:
    authenticator = SoftAuthenticator()
    creation = _py_webauthn_creation_options()
    first = authenticator.register(creation)
    excluding = {**creation, "excludeCredentials": [{"id": first["id"], "type": "public-key"}]}
    with pytest.raises(AuthenticatorError):
        authenticator.register(excluding)
    authenticator.register(excluding, respect_exclude=False)
    with pytest.raises(AuthenticatorError):
        authenticator.authenticate(_py_webauthn_request_options())
    chosen = authenticator.authenticate(_py_webauthn_request_options(), credential_id=first["id"])
    assert chosen["id"] == first["id"]
    with pytest.raises(AuthenticatorError):
        SoftAuthenticator().authenticate(_py_webauthn_request_options())


# --- registration -----------------------------------------------------------------------------


async def test_registration_options(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, site_name="Example Site")
    await harness.create_user("alice")
    headers = await harness.bearer()
    options = await registration_options(harness, headers)
    assert options["rp"] == {"id": RP_ID, "name": "Example Site"}
    user = options["user"]
    assert len(b64url_decode(user["id"])) == 32
    assert user["name"] == "alice" and isinstance(user["displayName"], str)
    assert len(b64url_decode(options["challenge"])) >= 16
    algorithms = [p["alg"] for p in options["pubKeyCredParams"]]
    assert {p["type"] for p in options["pubKeyCredParams"]} == {"public-key"}
    assert -7 in algorithms and -8 in algorithms  # ES256 and EdDSA
    assert options["timeout"] == 300000
    assert options["excludeCredentials"] == []
    selection = options["authenticatorSelection"]
    assert selection["residentKey"] == "required"
    assert selection["requireResidentKey"] is True
    assert selection["userVerification"] == "preferred"
    assert options["attestation"] == "none"
    # A new challenge each time.
    again = await registration_options(harness, headers)
    assert again["challenge"] != options["challenge"]


async def test_registration_needs_a_bearer(site: Harness) -> None:
    assert (await site.client.post(REG_OPTIONS)).status_code == 401
    assert (await site.client.post(PASSKEYS, json={"credential": {}})).status_code == 401
    assert (await site.client.get(PASSKEYS)).status_code == 401


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
async def test_register_list_and_sign_in(site: Harness, mailbox: Mailbox, algorithm: str) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    authenticator = SoftAuthenticator(algorithm=algorithm)
    options = await registration_options(site, headers)
    credential = authenticator.register(options)
    response = await submit_registration(site, headers, credential, name="My laptop")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "name", "created_at", "last_used_at"}
    assert isinstance(body["id"], int) and body["name"] == "My laptop"
    assert body["last_used_at"] is None
    parse_time(body["created_at"])
    assert await list_passkeys(site, headers) == [body]
    user_id = await user_id_of(site, headers)
    assert ("passkey_registered", {"passkey_id": body["id"]}) in await events(site, user_id)
    (notice,) = await mailbox.wait_for(1)
    assert "alice@example.com" in str(notice["To"])
    assert "passkey was added" in str(notice["Subject"]).lower()
    # The passkey signs in, to tokens that work.
    assert await signed_in_as(site, await passkey_login(site, authenticator)) == "alice"


async def test_default_names_come_from_the_user_agent(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    names = []
    for agent in (CHROME_ON_LINUX, ""):
        credential = SoftAuthenticator().register(await registration_options(site, headers))
        response = await submit_registration(site, headers, credential, user_agent=agent)
        assert response.status_code == 201, response.text
        names.append(response.json()["name"])
    assert names == ["Chrome on Linux", "Passkey"]


async def test_passkeys_share_a_user_handle_and_are_excluded_from_new_registrations(
    site: Harness,
) -> None:
    alice = await account_with_passkey(site, "alice")
    bob = await account_with_passkey(site, "bob")
    options = await registration_options(site, alice.headers)
    # The same handle as the first passkey's, and not bob's.
    assert b64url_decode(options["user"]["id"]) == (
        alice.authenticator.credential(alice.credential_id).user_handle
    )
    assert options["user"]["id"] != (await registration_options(site, bob.headers))["user"]["id"]
    assert [(d["id"], d["type"]) for d in options["excludeCredentials"]] == [
        (alice.credential_id, "public-key")
    ]
    # The authenticator that holds it refuses, as a browser would; another one makes a second.
    with pytest.raises(AuthenticatorError):
        alice.authenticator.register(options)
    phone = SoftAuthenticator()
    made = phone.register(options)
    second = await submit_registration(site, alice.headers, made, name="Phone")
    assert second.status_code == 201, second.text
    listed = await list_passkeys(site, alice.headers)
    assert [p["id"] for p in listed] == [alice.passkey_id, second.json()["id"]]  # oldest first
    assert listed[1]["name"] == "Phone"
    excluded = (await registration_options(site, alice.headers))["excludeCredentials"]
    assert [d["id"] for d in excluded] == [alice.credential_id, made["id"]]
    # Both sign in to alice.
    for authenticator in (alice.authenticator, phone):
        assert await signed_in_as(site, await passkey_login(site, authenticator)) == "alice"


async def test_registrations_begun_before_the_first_passkey_share_one_handle(
    site: Harness,
) -> None:
    """Contract: one user handle "the same for all of a user's passkeys", also when two
    devices are added from options asked for before either was registered."""
    await site.create_user("alice")
    headers = await site.bearer()
    laptop, phone = SoftAuthenticator(), SoftAuthenticator()
    first, second = (
        await registration_options(site, headers),
        await registration_options(site, headers),
    )
    for authenticator, options in ((laptop, first), (phone, second)):
        made = await submit_registration(site, headers, authenticator.register(options))
        assert made.status_code == 201, made.text
    handles = {
        next(iter(authenticator.credentials.values())).user_handle
        for authenticator in (laptop, phone)
    }
    async with site.auth.core.sessionmaker() as db:
        stored = set((await db.scalars(select(Passkey.user_handle))).all())
    assert len(handles) == 1 and stored == handles, (handles, stored)
    for authenticator in (laptop, phone):
        assert await signed_in_as(site, await passkey_login(site, authenticator)) == "alice"


async def test_a_registration_without_user_verification_is_accepted(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    authenticator = SoftAuthenticator(user_verified=False)
    await add_passkey(site, headers, authenticator)
    assert len(await list_passkeys(site, headers)) == 1


async def test_a_registration_challenge_is_single_use(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    options = await registration_options(site, headers)
    first = await submit_registration(site, headers, SoftAuthenticator().register(options))
    assert first.status_code == 201, first.text
    again = await submit_registration(site, headers, SoftAuthenticator().register(options))
    assert_error(again, 400, INVALID)
    assert len(await list_passkeys(site, headers)) == 1


async def test_a_registration_challenge_expires_after_5_minutes(site: Harness) -> None:
    await site.create_user("alice")
    clock = freeze(site)
    headers = await site.bearer()
    early = await registration_options(site, headers)
    late = await registration_options(site, headers)
    clock.advance(minutes=4, seconds=50)
    ok = await submit_registration(site, headers, SoftAuthenticator().register(early))
    assert ok.status_code == 201, ok.text
    clock.advance(seconds=11)
    expired = await submit_registration(site, headers, SoftAuthenticator().register(late))
    assert_error(expired, 400, INVALID)


async def test_a_registration_challenge_is_bound_to_the_user_who_asked(site: Harness) -> None:
    await site.create_user("alice")
    await site.create_user("bob")
    alice, bob = await site.bearer("alice"), await site.bearer("bob")
    options = await registration_options(site, alice)
    stolen = await submit_registration(site, bob, SoftAuthenticator().register(options))
    assert_error(stolen, 400, INVALID)
    assert await list_passkeys(site, bob) == []
    assert await list_passkeys(site, alice) == []


async def test_a_challenge_the_server_never_gave_is_refused(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    options = await registration_options(site, headers)
    forged = {**options, "challenge": b64url_encode(os.urandom(32))}
    assert_error(
        await submit_registration(site, headers, SoftAuthenticator().register(forged)), 400, INVALID
    )


_BAD_REGISTRATIONS: list[dict[str, Any]] = [
    {"origin": "http://localhost:8001"},
    {"origin": "https://localhost:8000"},
    {"origin": "http://evil.example"},
    {"rp_id": "evil.example"},
    {"rp_id": "localhost.evil.example"},
    {"client_data_type": "webauthn.get"},
    {"user_present": False},
    {"att_stmt": {"alg": -7, "sig": b"\x00" * 8}},
    {"credential_type": "password"},
    {"credential_id": b"x" * 1024},  # WebAuthn: at most 1023 bytes
]


async def test_bad_registrations_are_400(site: Harness) -> None:
    """Wrong origin or rp id, wrong type, no user presence, a bad "none" attestation."""
    await site.create_user("alice")
    headers = await site.bearer()
    wrong = []
    for knobs in _BAD_REGISTRATIONS:
        credential = SoftAuthenticator().register(
            await registration_options(site, headers), **knobs
        )
        response = await submit_registration(site, headers, credential)
        if (response.status_code, response.json().get("detail")) != (400, INVALID):
            wrong.append((knobs, response.status_code, response.text))
    assert not wrong, wrong
    assert await list_passkeys(site, headers) == []


async def test_a_credential_id_is_registered_once_whoever_asks(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    taken = b64url_decode(alice.credential_id)
    # alice again, from an authenticator that ignores excludeCredentials.
    options = await registration_options(site, alice.headers)
    again = alice.authenticator.register(
        options, credential_id=taken, respect_exclude=False, store=False
    )
    assert_error(
        await submit_registration(site, alice.headers, again), 409, "Passkey already registered"
    )
    # bob, with another key under the same credential id.
    await site.create_user("bob")
    bob = await site.bearer("bob")
    theirs = SoftAuthenticator().register(
        await registration_options(site, bob), credential_id=taken
    )
    assert_error(await submit_registration(site, bob, theirs), 409, "Passkey already registered")
    assert await list_passkeys(site, bob) == []
    assert len(await list_passkeys(site, alice.headers)) == 1
    # alice's own key still signs in.
    assert await signed_in_as(site, await passkey_login(site, alice.authenticator)) == "alice"


_WRONG_REGISTRATION_BODIES: list[Any] = [
    {},
    {"credential": "a string"},
    {"credential": ["a", "list"]},
    {"credential": 7},
    {"credential": None},
    {"name": "x" * 65},
    {"name": "a\x00b"},
    {"name": "line\nbreak"},
    {"name": 5},
    [],
    "credential",
]


async def test_registration_bodies_of_the_wrong_shape_are_422(site: Harness) -> None:
    """A credential that is not an object, a bad name (with a real credential), not an
    object at all."""
    await site.create_user("alice")
    headers = await site.bearer()
    wrong = []
    for body in _WRONG_REGISTRATION_BODIES:
        options = await registration_options(site, headers)
        if isinstance(body, dict) and "name" in body:
            body = {**body, "credential": SoftAuthenticator().register(options)}
        response = await site.client.post(PASSKEYS, json=body, headers=headers)
        if response.status_code != 422:
            wrong.append((body, response.status_code, response.text))
    assert not wrong, wrong
    assert await list_passkeys(site, headers) == []


async def test_an_empty_name_is_422(site: Harness) -> None:
    """Contract: ``name`` is 1..64 characters when given (omit it for the default)."""
    await site.create_user("alice")
    headers = await site.bearer()
    credential = SoftAuthenticator().register(await registration_options(site, headers))
    response = await submit_registration(site, headers, credential, name="")
    assert response.status_code == 422, response.text
    assert await list_passkeys(site, headers) == []


async def test_a_name_of_64_characters_is_kept(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    body = await add_passkey(site, headers, SoftAuthenticator(), name="é" * 64)
    assert body["name"] == "é" * 64


async def test_at_most_20_passkeys(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    for _ in range(20):
        await add_passkey(site, headers, SoftAuthenticator())
    response = await site.client.post(REG_OPTIONS, headers=headers)
    assert_error(response, 409, "Too many passkeys")
    assert len(await list_passkeys(site, headers)) == 20


async def test_an_ip_public_url_turns_the_ceremonies_off(make_harness: MakeHarness) -> None:
    """The default PUBLIC_URL is an IP address, which browsers refuse as an rp id: the four
    ceremony routes answer 409 while the list and removal still work (a passkey registered
    under a domain name, before the URL changed, can be removed)."""
    named = await passkey_site(make_harness)
    alice = await account_with_passkey(named, "alice")
    bare = await make_harness(public_url="http://127.0.0.1:8000")
    headers = await bare.bearer("alice")
    for path, body in (
        (REG_OPTIONS, None),
        (PASSKEYS, {"credential": {"id": "x"}}),
        (LOGIN_OPTIONS, None),
        (LOGIN_OPTIONS, {"username": "alice"}),
        (LOGIN, {"flow_id": "x", "credential": {"id": "x"}}),
    ):
        response = await bare.client.post(path, json=body, headers=headers)
        assert_error(response, 409, NEEDS_DOMAIN)
    listed = await list_passkeys(bare, headers)
    assert [p["id"] for p in listed] == [alice.passkey_id]
    deleted = await delete_passkey(bare, headers, alice.passkey_id)
    assert deleted.status_code == 204, deleted.text
    assert await list_passkeys(bare, headers) == []


async def test_without_the_extra_the_ceremonies_answer_501(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """py_webauthn missing (``import webauthn`` fails): the four ceremony routes say which
    extra to install; the list still works."""
    harness = await passkey_site(make_harness)
    await harness.create_user("alice")
    headers = await harness.bearer()
    monkeypatch.setitem(sys.modules, "webauthn", None)
    wrong = []
    for path, body in (
        (REG_OPTIONS, None),
        (PASSKEYS, {"credential": {"id": "x"}}),
        (LOGIN_OPTIONS, None),
        (LOGIN, {"flow_id": "x", "credential": {"id": "x"}}),
    ):
        response = await harness.client.post(path, json=body, headers=headers)
        if response.status_code != 501 or "pip install 'authdb[passkeys]'" not in response.text:
            wrong.append((path, response.status_code, response.text))
    assert not wrong, wrong
    assert await list_passkeys(harness, headers) == []


# --- removal ------------------------------------------------------------------------------------


async def test_removing_a_passkey_needs_the_password(site: Harness, mailbox: Mailbox) -> None:
    alice = await account_with_passkey(site, "alice")
    await mailbox.wait_for(1)  # the "added" notice
    wrong = await delete_passkey(site, alice.headers, alice.passkey_id, "not the password")
    assert_error(wrong, 400, "Incorrect password")
    assert len(await list_passkeys(site, alice.headers)) == 1
    missing = await delete_passkey(site, alice.headers, alice.passkey_id, None)
    assert missing.status_code == 422, missing.text
    removed = await delete_passkey(site, alice.headers, alice.passkey_id)
    assert removed.status_code == 204, removed.text
    assert removed.content == b""
    assert await list_passkeys(site, alice.headers) == []
    assert ("passkey_deleted", {"passkey_id": alice.passkey_id}) in [
        (name, {k: v for k, v in detail.items() if k == "passkey_id"})
        for name, detail in await events(site, alice.user_id)
    ]
    messages = await mailbox.wait_for(2)
    assert "passkey was removed" in str(messages[1]["Subject"]).lower()
    assert "alice@example.com" in str(messages[1]["To"])
    # The removed passkey no longer signs in; removing it again is 404.
    assert_refused(await passkey_login(site, alice.authenticator))
    assert_error(
        await delete_passkey(site, alice.headers, alice.passkey_id), 404, "Passkey not found"
    )


async def test_wrong_passwords_at_removal_count_for_the_lockout(make_harness: MakeHarness) -> None:
    harness = await passkey_site(make_harness, login_max_failures=2)
    alice = await account_with_passkey(harness, "alice")
    for _ in range(2):
        wrong = await delete_passkey(harness, alice.headers, alice.passkey_id, "wrong")
        assert_error(wrong, 400, "Incorrect password")
    locked = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["retry-after"]) > 0


async def test_removing_another_users_or_an_unknown_passkey_is_404(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    bob = await account_with_passkey(site, "bob")
    for passkey_id in (bob.passkey_id, bob.passkey_id + 1000, 0, 2**31 - 1):
        response = await delete_passkey(site, alice.headers, passkey_id)
        assert_error(response, 404, "Passkey not found")
    assert len(await list_passkeys(site, bob.headers)) == 1


async def test_a_malformed_passkey_id_is_422_and_none_is_a_server_error(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    statuses = {
        passkey_id: (await delete_passkey(site, headers, passkey_id)).status_code
        for passkey_id in ("abc", "1.5", "1e3", "%20", "-1", "99999999999999999999999", str(2**63))
    }
    malformed = {k: v for k, v in statuses.items() if k in ("abc", "1.5", "1e3", "%20")}
    assert set(malformed.values()) == {422}, statuses
    # Numbers no passkey can have: not found, or refused as input; never a 500.
    assert set(statuses.values()) <= {404, 422}, statuses


# --- sign-in options --------------------------------------------------------------------------


async def test_login_options_never_tell_whether_an_account_exists(site: Harness) -> None:
    await account_with_passkey(site, "alice")
    await site.create_user("carol")  # no passkey
    bodies = [
        await login_options(site),
        await _options_with_empty_body(site),
        await login_options(site, "alice"),
        await login_options(site, "carol"),
        await login_options(site, "nobody"),
        await login_options(site, "alice@example.com"),
    ]
    challenges = set()
    for body in bodies:
        assert set(body) == {"flow_id", "options"}
        assert isinstance(body["flow_id"], str) and body["flow_id"]
        options = body["options"]
        assert options["rpId"] == RP_ID
        assert options["timeout"] == 300000
        assert options["userVerification"] == "preferred"
        assert options["allowCredentials"] == []
        assert len(b64url_decode(options["challenge"])) >= 16
        challenges.add(options["challenge"])
    assert len(challenges) == len(bodies)
    assert len({body["flow_id"] for body in bodies}) == len(bodies)
    assert len({frozenset(body["options"]) for body in bodies}) == 1  # the same members


async def _options_with_empty_body(harness: Harness) -> dict[str, Any]:
    response = await harness.client.post(LOGIN_OPTIONS, json={})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_login_options_of_the_wrong_shape_are_422(site: Harness) -> None:
    statuses = [
        (await site.client.post(LOGIN_OPTIONS, json=body)).status_code
        for body in ({"username": 5}, {"username": ["alice"]}, [], "alice", {"username": "a\x00"})
    ]
    assert statuses == [422] * 5


# --- sign-in ------------------------------------------------------------------------------------


async def test_sign_in_updates_the_counter_and_last_use(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    clock = freeze(site)
    assert await signed_in_as(site, await passkey_login(site, alice.authenticator)) == "alice"
    (listed,) = await list_passkeys(site, alice.headers)
    first_use = parse_time(listed["last_used_at"])
    assert abs((first_use - clock.now).total_seconds()) < 1
    assert (await stored_passkey(site, alice.passkey_id)).sign_count == 1
    clock.advance(minutes=1)
    await signed_in_as(site, await passkey_login(site, alice.authenticator, counter=41))
    (listed,) = await list_passkeys(site, alice.headers)
    assert parse_time(listed["last_used_at"]) > first_use
    assert (await stored_passkey(site, alice.passkey_id)).sign_count == 41
    names = await event_names(site, alice.user_id)
    assert names.count("login_ok") >= 2


async def test_an_authenticator_without_a_counter_signs_in_again_and_again(site: Harness) -> None:
    """Many synced passkeys always report 0: that is allowed while the stored count is 0."""
    alice = await account_with_passkey(
        site, "alice", authenticator=SoftAuthenticator(counter_step=0, backup_eligible=True)
    )
    for _ in range(3):
        assert await signed_in_as(site, await passkey_login(site, alice.authenticator)) == "alice"


async def test_a_username_bound_flow_takes_only_that_accounts_passkey(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    bob = await account_with_passkey(site, "bob")
    assert (
        await signed_in_as(site, await passkey_login(site, alice.authenticator, username="alice"))
        == "alice"
    )
    assert_refused(await passkey_login(site, bob.authenticator, username="alice"))
    assert_refused(await passkey_login(site, bob.authenticator, username="nobody"))
    assert "passkey_failed" in await event_names(site, bob.user_id)
    assert await signed_in_as(site, await passkey_login(site, bob.authenticator)) == "bob"


async def test_a_flow_is_spent_by_its_first_presentation(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    flow = await login_options(site)
    assert (
        await signed_in_as(site, await passkey_login(site, alice.authenticator, flow=flow))
        == "alice"
    )
    assert_refused(await passkey_login(site, alice.authenticator, flow=flow))
    # Even a failed presentation spends it.
    failing = await login_options(site)
    assert_refused(await passkey_login(site, alice.authenticator, flow=failing, bad_signature=True))
    assert_refused(await passkey_login(site, alice.authenticator, flow=failing))


async def test_an_assertion_cannot_be_replayed_into_another_flow(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    first = await login_options(site)
    assertion = alice.authenticator.authenticate(first["options"])
    ok = await site.client.post(LOGIN, json={"flow_id": first["flow_id"], "credential": assertion})
    await signed_in_as(site, ok)
    second = await login_options(site)
    replay = await site.client.post(
        LOGIN, json={"flow_id": second["flow_id"], "credential": assertion}
    )
    assert_refused(replay)


async def test_unknown_flows_are_refused(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    flow = await login_options(site)
    for flow_id in ("", "nope", flow["flow_id"] + "x", flow["flow_id"][:-2]):
        forged = {"flow_id": flow_id, "options": flow["options"]}
        assert_refused(await passkey_login(site, alice.authenticator, flow=forged))


async def test_a_flow_expires_after_5_minutes(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    clock = freeze(site)
    early, late = await login_options(site), await login_options(site)
    clock.advance(minutes=4, seconds=50)
    assert (
        await signed_in_as(site, await passkey_login(site, alice.authenticator, flow=early))
        == "alice"
    )
    clock.advance(seconds=11)
    assert_refused(await passkey_login(site, alice.authenticator, flow=late))


_BAD_ASSERTIONS: list[dict[str, Any]] = [
    {"origin": "http://localhost:8001"},
    {"origin": "https://localhost:8000"},
    {"origin": "http://evil.example"},
    {"rp_id": "evil.example"},
    {"rp_id": "127.0.0.1"},
    {"bad_signature": True},
    {"client_data_type": "webauthn.create"},
    {"challenge": b64url_encode(b"c" * 32)},
    {"user_present": False},
    {"replace_client_data": b'{"type":"webauthn.get","challenge":"AAAA","origin":"x"}'},
    {"user_handle": b"\x01" * 32},
    {"credential_type": "password"},
]


async def test_bad_assertions_are_refused_and_audited(make_harness: MakeHarness) -> None:
    """Wrong origin or rp id, bad signature, wrong type or challenge, no user presence,
    tampered client data, a userHandle that is no account's, a wrong credential type: 401
    ``Invalid passkey``, audited; the passkey itself still works after each."""
    harness = await passkey_site(make_harness, login_max_failures=1000)
    alice = await account_with_passkey(harness, "alice")
    wrong = []
    for knobs in _BAD_ASSERTIONS:
        response = await passkey_login(harness, alice.authenticator, **knobs)
        if (response.status_code, response.json().get("detail")) != (401, INVALID):
            wrong.append((knobs, response.status_code, response.text))
        assert await signed_in_as(harness, await passkey_login(harness, alice.authenticator))
    assert not wrong, wrong
    names = await event_names(harness, alice.user_id)
    assert names.count("passkey_failed") == len(_BAD_ASSERTIONS)


async def test_another_accounts_user_handle_is_refused(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    bob = await account_with_passkey(site, "bob")
    bobs_handle = bob.authenticator.credential(bob.credential_id).user_handle
    assert_refused(await passkey_login(site, alice.authenticator, user_handle=bobs_handle))


async def test_a_missing_or_malformed_user_handle_is_refused(make_harness: MakeHarness) -> None:
    """The flow names no account, so the userHandle must be there and be the account's
    (WebAuthn Level 3, section 7.2, step 6: "If the user was not identified before the
    authentication ceremony was initiated, verify that response.userHandle is present")."""
    harness = await passkey_site(make_harness, login_max_failures=1000)
    alice = await account_with_passkey(harness, "alice")
    accepted = []
    for handle in (_DELETE, None, "", "!!!", 5, ["AAAA"]):
        flow = await login_options(harness)
        credential = alice.authenticator.authenticate(flow["options"])
        if handle is _DELETE:
            del credential["response"]["userHandle"]
        else:
            credential["response"]["userHandle"] = handle
        response = await harness.client.post(
            LOGIN, json={"flow_id": flow["flow_id"], "credential": credential}
        )
        if response.status_code not in (401, 422):
            accepted.append((handle, response.status_code))
    assert not accepted, accepted


async def test_a_failure_with_an_unknown_credential_spends_the_flow_too(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    stranger = SoftAuthenticator()
    stranger.register(_py_webauthn_creation_options())  # never sent to authdb
    flow = await login_options(site)
    assert_refused(await passkey_login(site, stranger, flow=flow))
    assert_refused(await passkey_login(site, alice.authenticator, flow=flow))


async def test_a_challenge_serves_only_its_own_ceremony(site: Harness) -> None:
    """A registration challenge is no sign-in flow, and a sign-in challenge registers
    nothing."""
    alice = await account_with_passkey(site, "alice")
    registering = await registration_options(site, alice.headers)
    as_flow = {
        "flow_id": registering["challenge"],
        "options": {"rpId": RP_ID, "challenge": registering["challenge"]},
    }
    assert_refused(await passkey_login(site, alice.authenticator, flow=as_flow))
    signing_in = await login_options(site)
    as_registration = {**registering, "challenge": signing_in["options"]["challenge"]}
    made = SoftAuthenticator().register(as_registration)
    assert_error(await submit_registration(site, alice.headers, made), 400, INVALID)
    assert len(await list_passkeys(site, alice.headers)) == 1


async def test_concurrent_presentations_of_one_flow_sign_in_once(site: Harness) -> None:
    alice = await account_with_passkey(
        site, "alice", authenticator=SoftAuthenticator(counter_step=0)
    )
    flow = await login_options(site)
    bodies = [
        {
            "flow_id": flow["flow_id"],
            "credential": alice.authenticator.authenticate(flow["options"]),
        }
        for _ in range(4)
    ]
    responses = await asyncio.gather(*(site.client.post(LOGIN, json=b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 401, 401, 401], [r.text for r in responses]


async def test_concurrent_registrations_with_one_challenge_register_once(site: Harness) -> None:
    await site.create_user("alice")
    headers = await site.bearer()
    options = await registration_options(site, headers)
    credentials = [SoftAuthenticator().register(options) for _ in range(4)]
    responses = await asyncio.gather(
        *(submit_registration(site, headers, credential) for credential in credentials)
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 400, 400, 400], [r.text for r in responses]
    assert len(await list_passkeys(site, headers)) == 1


async def test_a_cloned_authenticator_racing_the_original_wins_at_most_once(
    site: Harness,
) -> None:
    """Two copies of one key present the same counter at once, on two flows: one at most
    signs in, and the stored counter is that value."""
    alice = await account_with_passkey(site, "alice")
    clone = alice.authenticator.clone()
    flows = [await login_options(site), await login_options(site)]
    bodies = [
        {"flow_id": flow["flow_id"], "credential": holder.authenticate(flow["options"], counter=7)}
        for flow, holder in zip(flows, (alice.authenticator, clone), strict=True)
    ]
    responses = await asyncio.gather(*(site.client.post(LOGIN, json=b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 401], [r.text for r in responses]
    assert (await stored_passkey(site, alice.passkey_id)).sign_count == 7


async def test_a_challenge_of_another_flow_is_refused(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    first, second = await login_options(site), await login_options(site)
    mixed = {"flow_id": first["flow_id"], "options": second["options"]}
    assert_refused(await passkey_login(site, alice.authenticator, flow=mixed))
    # The second flow was never presented: it still works, with its own challenge.
    assert (
        await signed_in_as(site, await passkey_login(site, alice.authenticator, flow=second))
        == "alice"
    )


async def test_an_unknown_credential_is_refused(site: Harness) -> None:
    await account_with_passkey(site, "alice")
    stranger = SoftAuthenticator()
    stranger.register(_py_webauthn_creation_options())  # kept, never sent to authdb
    assert_refused(await passkey_login(site, stranger))


async def test_a_counter_that_goes_back_is_refused_and_audited(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    for _ in range(3):
        await signed_in_as(site, await passkey_login(site, alice.authenticator))
    assert (await stored_passkey(site, alice.passkey_id)).sign_count == 3
    clone = alice.authenticator.clone()
    alice.authenticator.set_counter(alice.credential_id, 5)
    await signed_in_as(site, await passkey_login(site, alice.authenticator))  # 6
    # The clone still thinks 3: it reports 4, then the same 6, then 0.
    assert_refused(await passkey_login(site, clone))
    assert_refused(await passkey_login(site, clone, counter=6))
    assert_refused(await passkey_login(site, clone, counter=0))
    assert (await stored_passkey(site, alice.passkey_id)).sign_count == 6
    regressions = [
        detail
        for name, detail in await events(site, alice.user_id)
        if name == "passkey_counter_regressed"
    ]
    assert len(regressions) == 3
    assert all(detail.get("passkey_id") == alice.passkey_id for detail in regressions)
    # The genuine authenticator goes on.
    assert await signed_in_as(site, await passkey_login(site, alice.authenticator)) == "alice"


async def test_a_disabled_account_cannot_sign_in_with_a_passkey(site: Harness) -> None:
    alice = await account_with_passkey(site, "alice")
    async with site.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == alice.user_id).values(disabled=True))
    assert_error(await passkey_login(site, alice.authenticator), 400, "Inactive user")


async def test_an_unverified_email_blocks_a_passkey_when_required(
    make_harness: MakeHarness,
) -> None:
    harness = await passkey_site(make_harness)
    alice = await account_with_passkey(harness, "alice")
    async with harness.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == alice.user_id).values(is_verified=False))
    strict = await passkey_site(make_harness, require_verified_email=True)
    response = await passkey_login(strict, alice.authenticator)
    assert response.status_code == 400, response.text
    assert "access_token" not in response.json()
    # Without the requirement the same passkey signs in.
    assert await signed_in_as(harness, await passkey_login(harness, alice.authenticator)) == "alice"


# --- junk never makes a server error --------------------------------------------------------------

_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", "=", "AAAA", "!!!!", "public-key", "a" * 3000, "\x00", "\ud7ff", "null"]),
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)
_CBORABLE = st.recursive(
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.binary(max_size=40)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(st.integers(-50, 50), st.text(max_size=8)), children, max_size=4
        )
    ),
    max_leaves=10,
)
# Values that decode as base64url: random bytes, CBOR of odd maps, JSON of odd objects.
_ENCODED = st.one_of(
    st.binary(max_size=300).map(b64url_encode),
    _CBORABLE.map(lambda value: b64url_encode(cbor.encode(value))),
    _JSON.map(lambda value: b64url_encode(json.dumps(value).encode())),
)
_VALUE = st.one_of(st.just(_DELETE), _JSON, _ENCODED)
_CLIENT_DATA_KEYS = ["type", "challenge", "origin", "crossOrigin", "topOrigin", "tokenBinding"]


def _mutate(credential: dict[str, Any], path: tuple[str, ...], value: Any) -> Any:
    """``credential`` with the member at ``path`` replaced by ``value`` (or removed)."""
    if not path:
        return None if value is _DELETE else value
    result = copy.deepcopy(credential)
    parent = result
    for key in path[:-1]:
        if not isinstance(parent.get(key), dict):
            parent[key] = {}
        parent = parent[key]
    if value is _DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return result


_REGISTRATION_PATHS = st.sampled_from(
    [
        (),
        ("id",),
        ("rawId",),
        ("type",),
        ("response",),
        ("response", "clientDataJSON"),
        ("response", "attestationObject"),
        ("response", "transports"),
        ("clientExtensionResults",),
        ("authenticatorAttachment",),
    ]
)
_AUTHENTICATION_PATHS = st.sampled_from(
    [
        (),
        ("id",),
        ("rawId",),
        ("type",),
        ("response",),
        ("response", "clientDataJSON"),
        ("response", "authenticatorData"),
        ("response", "signature"),
        ("response", "userHandle"),
        ("clientExtensionResults",),
        ("authenticatorAttachment",),
    ]
)
_JUNK_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def fuzz_site(make_harness: MakeHarness) -> tuple[Harness, Account]:
    """alice with a passkey, on a site whose lockout and rate limits junk cannot reach."""
    harness = await passkey_site(
        make_harness, login_max_failures=1000, rate_limit_login_failures="100000/minute"
    )
    return harness, await account_with_passkey(harness, "alice")


def _py_webauthn_accepts_registration(credential: Any, challenge: str) -> bool:
    """The reference: whether py_webauthn itself verifies this registration response."""
    try:
        verify_registration_response(
            credential=credential,
            expected_challenge=b64url_decode(challenge),
            expected_rp_id=RP_ID,
            expected_origin=PUBLIC_URL,
        )
    except Exception:
        return False
    return True


def _py_webauthn_accepts_assertion(credential: Any, challenge: str, stored: Passkey) -> bool:
    """The reference: whether py_webauthn verifies this assertion against the stored key and
    counter, and its userHandle is the account's (the flow names no account)."""
    try:
        verify_authentication_response(
            credential=credential,
            expected_challenge=b64url_decode(challenge),
            expected_rp_id=RP_ID,
            expected_origin=PUBLIC_URL,
            credential_public_key=stored.public_key,
            credential_current_sign_count=stored.sign_count,
        )
        return b64url_decode(credential["response"]["userHandle"]) == stored.user_handle
    except Exception:
        return False


@_JUNK_SETTINGS
@given(
    path=_REGISTRATION_PATHS,
    value=_VALUE,
    client_data=st.dictionaries(st.sampled_from(_CLIENT_DATA_KEYS), _JSON, max_size=2),
    att_stmt=st.one_of(st.none(), st.dictionaries(st.text(max_size=6), _CBORABLE, max_size=2)),
)
async def test_junk_registrations_are_refused_with_a_4xx(
    fuzz_site: tuple[Harness, Account],
    path: tuple[str, ...],
    value: Any,
    client_data: dict[str, Any],
    att_stmt: dict[str, Any] | None,
) -> None:
    """A real registration response with one member replaced by junk (or removed), odd
    clientDataJSON members or an odd attestation statement: 400 or 422, never a server
    error; 201 only for what py_webauthn itself accepts (junk in members that do not count,
    such as ``transports``)."""
    harness, alice = fuzz_site
    options = await registration_options(harness, alice.headers)
    credential = SoftAuthenticator().register(
        options, client_data_extra=client_data, att_stmt=att_stmt
    )
    junk = _mutate(credential, path, value)
    response = await harness.client.post(PASSKEYS, json={"credential": junk}, headers=alice.headers)
    if response.status_code == 201:
        assert _py_webauthn_accepts_registration(junk, options["challenge"]), junk
        removed = await delete_passkey(harness, alice.headers, response.json()["id"])
        assert removed.status_code == 204, removed.text
        return
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]
    assert junk != credential or client_data or att_stmt, "the untouched response was refused"
    assert len(await list_passkeys(harness, alice.headers)) == 1


@_JUNK_SETTINGS
@given(
    path=_AUTHENTICATION_PATHS,
    value=_VALUE,
    client_data=st.dictionaries(st.sampled_from(_CLIENT_DATA_KEYS), _JSON, max_size=2),
    flow_id=st.one_of(st.none(), _JSON),
)
async def test_junk_assertions_are_refused_with_a_4xx(
    fuzz_site: tuple[Harness, Account],
    path: tuple[str, ...],
    value: Any,
    client_data: dict[str, Any],
    flow_id: Any,
) -> None:
    """Likewise for sign-in: 401 or 422, never a server error; tokens only for what
    py_webauthn accepts against the stored key and counter, with the account's userHandle.
    ``flow_id`` None stands for a real flow's id; any other value is sent as is."""
    # An absent, null or empty userHandle has its own test (a_missing_or_malformed_user_handle).
    assume(path != ("response", "userHandle") or value not in (_DELETE, None, ""))
    harness, alice = fuzz_site
    flow = await login_options(harness)
    credential = alice.authenticator.authenticate(flow["options"], client_data_extra=client_data)
    junk = _mutate(credential, path, value)
    body = {"flow_id": flow["flow_id"] if flow_id is None else flow_id, "credential": junk}
    stored = await stored_passkey(harness, alice.passkey_id)
    response = await harness.client.post(LOGIN, json=body)
    if response.status_code == 200:
        assert flow_id is None, body
        assert _py_webauthn_accepts_assertion(junk, flow["options"]["challenge"], stored), junk
        return
    assert response.status_code in (401, 422), response.text
    assert response.json()["detail"] and "access_token" not in response.json()
    assert junk != credential or client_data or flow_id is not None, "untouched, refused"


@_JUNK_SETTINGS
@given(body=_JSON)
async def test_junk_bodies_are_refused_with_a_4xx(
    fuzz_site: tuple[Harness, Account], body: Any
) -> None:
    harness, alice = fuzz_site
    for path, headers in ((PASSKEYS, alice.headers), (LOGIN, {}), (LOGIN_OPTIONS, {})):
        response = await harness.client.post(path, json=body, headers=headers)
        if path == LOGIN_OPTIONS and response.status_code == 200:
            continue  # any object with an optional username of text is fine there
        assert response.status_code in (400, 401, 422), (path, response.text)
