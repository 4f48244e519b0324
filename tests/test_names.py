"""Properties of names and text, checked with generated input (Hypothesis).

The lookup key must be stable (folding it again changes nothing) and the same for every case
variant of a name; no text with a control character passes; limits hold after folding.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authdb.names import (
    USERNAME_KEY_MAX,
    control_character,
    email_key,
    fold,
    login_key,
    normalize_username,
    username_key,
    username_problem,
)
from tests.conftest import PASSWORD, Harness

# Letters and digits of every script (and combining marks), plus the punctuation names allow.
_NAME_CHARS = st.characters(categories=("Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Mn", "Mc"))
names = st.text(_NAME_CHARS | st.sampled_from("._-"), min_size=3, max_size=40)


def _variants(name: str) -> set[str]:
    return {
        name.upper(),
        name.lower(),
        name.casefold(),
        name.title(),
        name.swapcase(),
        unicodedata.normalize("NFD", name),
        unicodedata.normalize("NFKD", name.upper()),
    }


@settings(max_examples=2000, deadline=None)
@given(st.text())
def test_folding_is_stable(text: str) -> None:
    assert fold(fold(text)) == fold(text)
    assert login_key(login_key(text)) == login_key(text)
    assert email_key(email_key(text)) == email_key(text)


@settings(max_examples=2000, deadline=None)
@given(names)
def test_every_case_variant_of_a_valid_username_has_its_key(raw: str) -> None:
    username = normalize_username(raw)
    if username_problem(username) is not None:
        return
    key = username_key(username)
    assert len(key) <= USERNAME_KEY_MAX
    for variant in _variants(username):
        assert login_key(variant) == key, variant


@settings(max_examples=1000, deadline=None)
@given(st.text(), st.sampled_from(["\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b", "\u202e"]))
def test_any_text_with_a_control_character_is_caught(text: str, control: str) -> None:
    middle = len(text) // 2
    assert control_character(text[:middle] + control + text[middle:]) is not None


@pytest.mark.parametrize("text", ["Zoë", "名前です", "O'Brien-Smith", "Ñandú 🙂", "a\u200db"])
def test_ordinary_text_passes(text: str) -> None:
    assert control_character(text) is None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(names)
async def test_whatever_registers_logs_in_under_every_case_variant(
    harness: Harness, raw: str
) -> None:
    response = await harness.client.post(
        "/register", json={"username": raw, "email": "p@example.com", "password": PASSWORD}
    )
    assert response.status_code in (201, 409, 422), response.text
    if response.status_code != 201:
        return
    username = response.json()["username"]
    for variant in _variants(username):
        login = await harness.client.post(
            "/token", data={"username": variant, "password": PASSWORD}
        )
        assert login.status_code == 200, (variant, login.text)
    await _remove(harness, response.json()["id"])


async def _remove(harness: Harness, user_id: Any) -> None:
    from authdb.services import admin
    from authdb.services.core import CLI_CLIENT

    await admin.delete_user(harness.auth.core, user_id, client=CLI_CLIENT)
