"""Password hashing and policy."""

from __future__ import annotations

import asyncio
import time

import pytest

from authdb.names import normalize_username, username_key, username_problem
from authdb.passwords import Hasher, common_passwords, password_problem
from tests.conftest import Harness

TUTORIAL_HASH = "$2b$12$dQD2AD2Y.Aa8F3IliHPfk.yNESW7FZe3RmeT38K661sg/vds404ga"


def test_common_password_list_is_large() -> None:
    assert len(common_passwords()) >= 10_000


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("short", "at least 8"),
        ("x" * 1025, "at most 1024"),
        ("password1", "too common"),
        ("Qwerty123", "too common"),
        ("AliceSmith", "username"),
        ("ALICE.MAIL", "email"),
    ],
)
def test_policy_names_the_broken_rule(password: str, rule: str) -> None:
    problem = password_problem(password, username="alicesmith", email="alice.mail@example.com")
    assert problem is not None and rule in problem


def test_policy_counts_characters_and_has_no_composition_rules() -> None:
    assert password_problem("ééééééé€", username="bob", email="bob@example.com") is None
    assert password_problem("all lowercase words", username="bob", email=None) is None
    assert password_problem("x" * 1024, username="bob", email=None) is None


async def test_argon2id_and_legacy_bcrypt_upgrade() -> None:
    hasher = Hasher()
    hashed = await hasher.hash("correct horse")
    assert hashed.startswith("$argon2id$")
    assert await hasher.verify("correct horse", hashed) == (True, None)
    assert (await hasher.verify("wrong horse", hashed))[0] is False
    ok, upgraded = await hasher.verify("swordfish", TUTORIAL_HASH)
    assert ok and upgraded is not None and upgraded.startswith("$argon2id$")


async def test_long_passwords_do_not_collide_on_bcrypt() -> None:
    hasher = Hasher()
    # bcrypt sees 72 bytes; a longer password must not match a hash of its prefix.
    prefix = "a" * 72
    import bcrypt

    legacy = bcrypt.hashpw(prefix.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert (await hasher.verify(prefix, legacy))[0] is True
    assert (await hasher.verify(prefix + "anything", legacy)) == (False, None)
    long_hash = await hasher.hash(prefix + "one")
    assert (await hasher.verify(prefix + "two", long_hash))[0] is False


async def test_corrupt_stored_hash_is_a_failed_login_not_an_error() -> None:
    assert await Hasher().verify("whatever1", "$argon2id$garbage") == (False, None)
    assert await Hasher().verify("whatever1", "plaintext") == (False, None)


async def test_hashing_does_not_block_the_event_loop() -> None:
    hasher = Hasher()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await asyncio.gather(*(hasher.hash(f"password-{i}") for i in range(3)))
    elapsed = time.perf_counter() - start
    task.cancel()
    # A blocked loop would tick once or twice; a free one ticks about every 5 ms.
    assert ticks >= elapsed / 0.005 * 0.3


def test_usernames_are_nfkc_normalized_and_checked() -> None:
    assert normalize_username("\uff4a\uff4f\uff48\uff4e") == "john"  # fullwidth j o h n
    assert username_key("Ǆemal") == username_key("ǆemal")
    assert username_problem("名前です") is None
    assert username_problem("ab") is not None
    assert username_problem("a" * 65) is not None
    assert username_problem("bad name") is not None
    assert username_problem("emoji😀x") is not None
    assert username_problem("ok.name-1_x") is None


async def test_login_cost_is_similar_for_unknown_and_known_users(harness: Harness) -> None:
    await harness.create_user("alice")

    async def timed(name: str) -> float:
        start = time.perf_counter()
        response = await harness.client.post(
            "/token", data={"username": name, "password": "x1234567"}
        )
        assert response.status_code == 401
        assert response.json() == {"detail": "Incorrect username or password"}
        return time.perf_counter() - start

    known = min([await timed("alice") for _ in range(3)])
    unknown = min([await timed("nobody") for _ in range(3)])
    # Both pay one argon2 verification; without the dummy hash "unknown" would be ~0 ms.
    assert unknown > known * 0.5
