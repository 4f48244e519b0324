"""Without the ``passkeys`` extra (py_webauthn), authdb runs and says what to install.

The four ceremony routes answer 501 naming ``pip install 'authdb[passkeys]'``; listing and
removing passkeys still work; the pages load no passkey script and show no passkey button.
The extra is hidden from the import system for the test (``sys.modules["webauthn"] = None``
makes ``import webauthn`` raise ImportError, as on a machine without it).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import pytest

from authdb.relying_party import NEEDS_EXTRA
from tests.conftest import PASSWORD, Harness

MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
def without_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "webauthn", None)


@pytest.mark.usefixtures("without_extra")
async def test_ceremonies_name_the_extra_and_the_rest_works(make_harness: MakeHarness) -> None:
    harness = await make_harness(public_url="http://localhost:8000")
    await harness.create_user()
    bearer = await harness.bearer()
    client = harness.client
    credential = {"id": "AA", "rawId": "AA", "type": "public-key", "response": {}}
    answers = [
        await client.post("/users/me/passkeys/options", headers=bearer),
        await client.post("/users/me/passkeys", headers=bearer, json={"credential": credential}),
        await client.post("/passkeys/login/options", json={}),
        await client.post("/passkeys/login", json={"flow_id": "x", "credential": credential}),
    ]
    for answer in answers:
        assert answer.status_code == 501, answer.text
        assert answer.json() == {"detail": NEEDS_EXTRA}
        assert "pip install 'authdb[passkeys]'" in NEEDS_EXTRA
    listed = await client.get("/users/me/passkeys", headers=bearer)
    assert (listed.status_code, listed.json()) == (200, [])
    missing = await client.request(
        "DELETE", "/users/me/passkeys/1", headers=bearer, json={"password": PASSWORD}
    )
    assert missing.status_code == 404

    login = await client.get("/login")
    assert login.status_code == 200
    assert "<script" not in login.text and "passkey-login" not in login.text
    assert 'autocomplete="username"' in login.text


async def test_with_the_extra_and_a_domain_the_login_page_offers_passkeys(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(public_url="http://localhost:8000")
    login = await harness.client.get("/login")
    assert '<script src="/assets/authdb-passkeys.js" defer></script>' in login.text
    assert 'id="passkey-login"' in login.text
    assert 'autocomplete="username webauthn"' in login.text
    script = await harness.client.get("/assets/authdb-passkeys.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert b"navigator.credentials" in script.content


async def test_an_ip_address_public_url_hides_passkeys_and_says_why(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(public_url="http://127.0.0.1:8000")
    await harness.create_user()
    bearer = await harness.bearer()
    for answer in (
        await harness.client.post("/users/me/passkeys/options", headers=bearer),
        await harness.client.post("/passkeys/login/options"),
    ):
        assert answer.status_code == 409
        assert "Passkeys need a domain name in AUTHDB_PUBLIC_URL" in answer.json()["detail"]
    login = await harness.client.get("/login")
    assert "<script" not in login.text and "passkey-login" not in login.text
