"""authdb.hashers: hashes made by other systems verify, and malformed or too costly ones are
refused wherever a stored hash can enter authdb.

Hashes are made by the real algorithms (Django's own ``make_password``, hashlib's PBKDF2 as
Keycloak derives it, bcrypt and argon2-cffi) at the cheapest cost each format allows, so the
module stays fast; the stored string carries its cost, and the hashers read it from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from functools import cache
from pathlib import Path
from typing import Any

import argon2
import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from authdb import Auth, Settings
from authdb.cli.user_import import HASH_FIELDS, Source
from authdb.db import migrate
from authdb.db.models import User
from authdb.errors import InvalidInput
from authdb.hashers import MAX_STORED_LENGTH, hash_problem
from authdb.importers import FORMATS
from authdb.passwords import Hasher
from authdb.services import provisioning
from authdb.services.core import CLI_CLIENT
from authdb.services.importing import ImportOptions, ImportRefused, import_users
from tests.cli import FAST_HASHING, invoke_cli
from tests.conftest import Harness

# NFKC-stable (normalizing changes nothing, so each check is one verification) and not ASCII,
# so every hasher must agree with its system on encoding the password as UTF-8.
PASSWORD = "corrëct hörse bättery stäple"
WRONG = "corrëct hörse bättery stäpler"
MALFORMED = "$2b$04$short"
SECRET = "hashers-test-secret-key-0123456789-abcdef"

# Hypothesis's per-example budget: every example here verifies at most a few cheap hashes.
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fast_hasher() -> Hasher:
    """authdb's hasher with the test suite's cheap argon2id parameters."""
    return Hasher(
        time_cost=FAST_HASHING["password_hash_time_cost"],
        memory_kib=FAST_HASHING["password_hash_memory_kib"],
        parallelism=FAST_HASHING["password_hash_parallelism"],
        priority=FAST_HASHING["password_hash_priority"],
    )


# Shared by the property tests (Hypothesis runs many examples against one hasher).
HASHER = fast_hasher()


# --- hashes made by each system's own code ---------------------------------------------------


@cache
def django_hashers() -> dict[str, Any]:
    """Django's hashers at their cheapest cost, by the algorithm name they write."""
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(
            PASSWORD_HASHERS=["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
        )
    from django.contrib.auth import hashers

    class PBKDF2(hashers.PBKDF2PasswordHasher):
        iterations = 1000

    class PBKDF2SHA1(hashers.PBKDF2SHA1PasswordHasher):
        iterations = 1000

    class Argon2(hashers.Argon2PasswordHasher):
        time_cost, memory_cost, parallelism = 1, 1024, 1

    class BCryptSHA256(hashers.BCryptSHA256PasswordHasher):
        rounds = 4

    class BCrypt(hashers.BCryptPasswordHasher):
        rounds = 4

    made = (PBKDF2(), PBKDF2SHA1(), Argon2(), BCryptSHA256(), BCrypt())
    return {hasher.algorithm: hasher for hasher in made}


def django_hash(algorithm: str, password: str = PASSWORD) -> str:
    """``password`` hashed by Django's own ``make_password`` with ``algorithm``'s hasher."""
    from django.contrib.auth.hashers import make_password

    return str(make_password(password, hasher=django_hashers()[algorithm]))


def phc_pbkdf2(digest: str, password: str = PASSWORD, *, iterations: int = 1000) -> str:
    """PBKDF2 as Keycloak derives it (UTF-8 password, 512-bit key), in the PHC string form."""
    salt = secrets.token_bytes(16)
    key = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations, dklen=64)
    b64 = lambda data: base64.b64encode(data).decode().rstrip("=")  # noqa: E731
    return f"$pbkdf2-{digest}$i={iterations}${b64(salt)}${b64(key)}"


def bcrypt_hash(password: str = PASSWORD, *, prefix: bytes = b"2b") -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4, prefix=prefix)).decode()


def argon2_hash(password: str = PASSWORD, *, kind: argon2.Type = argon2.Type.ID) -> str:
    # t=2, not the suite's t=1: a hash of other parameters than authdb's is upgraded too.
    return argon2.PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1, type=kind).hash(
        password
    )


MAKERS: dict[str, Callable[[str], str]] = {
    "django pbkdf2_sha256": lambda pw: django_hash("pbkdf2_sha256", pw),
    "django pbkdf2_sha1": lambda pw: django_hash("pbkdf2_sha1", pw),
    "django argon2": lambda pw: django_hash("argon2", pw),
    "django bcrypt_sha256": lambda pw: django_hash("bcrypt_sha256", pw),
    "django bcrypt": lambda pw: django_hash("bcrypt", pw),
    "phc pbkdf2-sha1": lambda pw: phc_pbkdf2("sha1", pw),
    "phc pbkdf2-sha256": lambda pw: phc_pbkdf2("sha256", pw),
    "phc pbkdf2-sha512": lambda pw: phc_pbkdf2("sha512", pw),
    "argon2id": argon2_hash,
    "argon2i": lambda pw: argon2_hash(pw, kind=argon2.Type.I),
    "bcrypt $2b$": bcrypt_hash,
    "bcrypt $2a$": lambda pw: bcrypt_hash(pw, prefix=b"2a"),
}


@cache
def made(name: str) -> str:
    """One hash of PASSWORD per format, made once per test run."""
    return MAKERS[name](PASSWORD)


# --- each format verifies ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MAKERS)
async def test_a_hash_made_by_its_system_verifies_and_is_upgraded(name: str) -> None:
    hashed = made(name)
    assert hash_problem(hashed) is None, hashed
    hasher = fast_hasher()
    ok, upgraded = await hasher.verify(PASSWORD, hashed)
    assert ok is True
    assert upgraded is not None and upgraded.startswith("$argon2id$")
    assert await hasher.verify(PASSWORD, upgraded) == (True, None)
    assert await hasher.verify(WRONG, hashed) == (False, None)
    assert await hasher.verify("", hashed) == (False, None)


@pytest.mark.parametrize("algorithm", ["pbkdf2_sha256", "pbkdf2_sha1"])
async def test_django_pbkdf2_reads_its_iteration_count_from_the_hash(algorithm: str) -> None:
    # Django's default is 1,000,000; the test hasher wrote 1000 and verifying must use 1000.
    hashed = made(f"django {algorithm}")
    assert hashed.startswith(f"{algorithm}$1000$")
    assert (await fast_hasher().verify(PASSWORD, hashed))[0] is True
    recount = hashed.replace("$1000$", "$1001$", 1)
    assert hash_problem(recount) is None
    assert await fast_hasher().verify(PASSWORD, recount) == (False, None)


async def test_django_bcrypt_refuses_a_password_longer_than_72_bytes() -> None:
    # bcrypt reads 72 bytes: a longer password whose first 72 match must not get in.
    long = "a" * 70 + "é" + "tail"  # 72 bytes up to and including the é
    first_72 = long.encode()[:72].decode()
    hashed = django_hash("bcrypt", first_72)
    hasher = fast_hasher()
    assert (await hasher.verify(first_72, hashed))[0] is True
    assert await hasher.verify(long, hashed) == (False, None)
    # bcrypt_sha256 hashes a digest of the whole password: long ones work, prefixes do not.
    whole = django_hash("bcrypt_sha256", long)
    assert (await hasher.verify(long, whole))[0] is True
    assert await hasher.verify(first_72, whole) == (False, None)


async def test_django_unusable_password_verifies_nothing() -> None:
    from django.contrib.auth.hashers import make_password

    django_hashers()
    unusable = str(make_password(None))
    assert unusable.startswith("!")
    assert hash_problem(unusable) is not None  # stored only as authdb's own unusable form
    assert await fast_hasher().verify(unusable[1:], unusable) == (False, None)


# --- properties --------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+")
# Replacement characters for mutations. Digits only 0 and 9: a changed digit then never turns
# bcrypt's 04 into an accepted but slow cost (10 to 14); 09 is 512 rounds.
_CHARS = st.sampled_from(list("$=+/.,Az09 é\x00\u0669"))
# Replacement parameters: small, over the bounds, malformed. None is accepted and costly
# anywhere (15 is past bcrypt's bound, 3000001 past PBKDF2's, 1000 passes of argon2's 1 MiB
# past its m*t bound).
_PARAMETERS = st.sampled_from(
    ["", "0", "00", "01", "-1", "1", "3", "4", "5", "15", "17", "33", "65", "1000", "1e3",
     "3000001", "99999999999999999999", "\u0664", "\u0660\u0665", " 4"]
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid hash of some format, changed in one way."""
    hashed = made(draw(st.sampled_from(sorted(MAKERS))))
    how = draw(st.sampled_from(["truncate", "replace", "parameter", "field", "insert"]))
    if how == "truncate":
        return hashed[: draw(st.integers(0, len(hashed) - 1))]
    if how == "replace":
        at = draw(st.integers(0, len(hashed) - 1))
        char = draw(_CHARS.filter(lambda c: c != hashed[at]))
        return hashed[:at] + char + hashed[at + 1 :]
    if how == "parameter":
        numbers = list(_NUMBER.finditer(hashed))
        number = numbers[draw(st.integers(0, len(numbers) - 1))]
        value = draw(_PARAMETERS.filter(lambda v: v != number.group()))
        return hashed[: number.start()] + value + hashed[number.end() :]
    if how == "field":
        extra = draw(st.text(alphabet="abcAB0129+/=$,", max_size=12))
        return hashed + "$" + extra if draw(st.booleans()) else "$" + extra + hashed
    dollars = [i for i, c in enumerate(hashed) if c == "$"]
    at = dollars[draw(st.integers(0, len(dollars) - 1))]
    return hashed[:at] + "$" + hashed[at:]


BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(data: bytes, *, padded: bool) -> str:
    text = base64.b64encode(data).decode()
    return text if padded else text.rstrip("=")


@st.composite
def well_formed(draw: st.DrawFn) -> str:
    """A hash of cheap parameters whose salt and key are random: structurally valid, so
    ``hash_problem`` accepts it, and matching no password but by chance."""
    kind = draw(st.sampled_from(["django pbkdf2", "phc pbkdf2", "argon2", "bcrypt"]))
    if kind == "django pbkdf2":
        digest = draw(st.sampled_from(["sha256", "sha1"]))
        salt = draw(st.text(alphabet="abcdefXYZ0123456789", min_size=1, max_size=30))
        key = draw(st.binary(min_size=16, max_size=64))
        return f"pbkdf2_{digest}${draw(st.integers(1, 1500))}${salt}${_b64(key, padded=True)}"
    if kind == "phc pbkdf2":
        digest = draw(st.sampled_from(["sha1", "sha256", "sha512"]))
        salt = _b64(draw(st.binary(min_size=1, max_size=32)), padded=False)
        key = _b64(draw(st.binary(min_size=16, max_size=64)), padded=False)
        return f"$pbkdf2-{digest}$i={draw(st.integers(1, 1500))}${salt}${key}"
    if kind == "argon2":
        lanes = draw(st.integers(1, 4))
        memory = draw(st.integers(8 * lanes, 2048))
        variant = draw(st.sampled_from(["id", "i", "d"]))
        version = draw(st.sampled_from([16, 19]))
        salt = _b64(draw(st.binary(min_size=8, max_size=32)), padded=False)
        key = _b64(draw(st.binary(min_size=16, max_size=64)), padded=False)
        phc = f"$argon2{variant}$v={version}$m={memory},t={draw(st.integers(1, 3))},p={lanes}"
        return draw(st.sampled_from(["", "argon2"])) + f"{phc}${salt}${key}"
    # Canonical: the salt's last character carries 2 bits (alphabet index a multiple of 16),
    # the hash's last one 2 bits too (index a multiple of 4); the rest of each is free.
    salt = draw(st.text(alphabet=BCRYPT_ALPHABET, min_size=21, max_size=21))
    salt += draw(st.sampled_from(BCRYPT_ALPHABET[::16]))
    digest = draw(st.text(alphabet=BCRYPT_ALPHABET, min_size=30, max_size=30))
    body = salt + digest + draw(st.sampled_from(BCRYPT_ALPHABET[::4]))
    prefix = draw(st.sampled_from(["", "bcrypt$", "bcrypt_sha256$"]))
    return f"{prefix}${draw(st.sampled_from(['2a', '2b', '2y']))}$0{draw(st.integers(4, 5))}${body}"


_PASSWORDS = st.one_of(st.just(PASSWORD), st.text(max_size=90))


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="$pbkdf2_sha256argon2idv=19m,tp0123456789+/.")))
def test_hash_problem_never_raises(text: str) -> None:
    problem = hash_problem(text)
    assert problem is None or (isinstance(problem, str) and problem)


@FEW
@given(hashed=st.one_of(well_formed(), mutated(), st.text(max_size=300)), password=_PASSWORDS)
async def test_verifying_any_accepted_hash_never_raises(hashed: str, password: str) -> None:
    if hash_problem(hashed) is None:
        ok, upgraded = await HASHER.verify(password, hashed)
        assert ok or upgraded is None  # a new hash only for a right password


@FEW
@given(hashed=mutated())
async def test_a_mutated_hash_is_refused_or_verifies_false(hashed: str) -> None:
    if hash_problem(hashed) is not None:
        return
    # Accepted: it must still verify without an exception, and not with the password unless
    # the change kept the hash equivalent (a $2a$/$2b$ swap, a base64 spelling of the same
    # bytes, a PBKDF2 key cut to a prefix of itself).
    ok, _ = await HASHER.verify(WRONG, hashed)
    assert ok is False
    await HASHER.verify(PASSWORD, hashed)


# --- work bounds ---------------------------------------------------------------------------------

_KEY = _b64(bytes(32), padded=True)  # one SHA-256 block, two of SHA-1
_KEY64 = _b64(bytes(64), padded=True)  # one SHA-512 block, two of SHA-256, four of SHA-1
_PHC_KEY64 = _b64(bytes(64), padded=False)
_SALT = _b64(bytes(16), padded=False)
# Canonical bcrypt base64: the salt's last character ("e", index 32 in bcrypt's alphabet) and
# the hash's last ("e", 32) keep their unused low bits clear.
_BCRYPT_BODY = "a" * 21 + "e" + "a" * 30 + "e"


def _argon2(m: int = 1024, t: int = 1, p: int = 1) -> str:
    return f"$argon2id$v=19$m={m},t={t},p={p}${_SALT}${_SALT}"


def _pbkdf2_work(work: int) -> str:
    """What a refused PBKDF2 hash's message says about its work."""
    return f"iterations times output blocks must be at most 3,000,000 (here {work:,})"


@pytest.mark.parametrize(
    ("hashed", "bound"),
    [
        # PBKDF2: iterations times output blocks (one per digest size of key) <= 3,000,000.
        (f"pbkdf2_sha256$3000001$salt${_KEY}", _pbkdf2_work(3_000_001)),
        (f"pbkdf2_sha256$1500001$salt${_KEY64}", _pbkdf2_work(3_000_002)),  # 2 blocks
        (f"pbkdf2_sha1$1500001$salt${_KEY}", _pbkdf2_work(3_000_002)),  # 32 bytes: 2 blocks
        (f"$pbkdf2-sha256$i=3000001${_SALT}${_SALT}", _pbkdf2_work(3_000_001)),
        (f"$pbkdf2-sha256$i=1500001${_SALT}${_PHC_KEY64}", _pbkdf2_work(3_000_002)),
        (f"$pbkdf2-sha512$i=3000001${_SALT}${_PHC_KEY64}", _pbkdf2_work(3_000_001)),
        # The key: 16 to 64 bytes.
        (f"pbkdf2_sha256$1000$salt${_b64(bytes(65), padded=True)}", "16 to 64 bytes"),
        (f"pbkdf2_sha256$1000$salt${_b64(bytes(15), padded=True)}", "16 to 64 bytes"),
        (f"$pbkdf2-sha512$i=1000${_SALT}${_b64(bytes(65), padded=False)}", "16 to 64 bytes"),
        # bcrypt: cost 4 to 14, in every place a bcrypt string is stored.
        (f"$2b$15${_BCRYPT_BODY}", "the cost must be 4 to 14"),
        (f"$2b$03${_BCRYPT_BODY}", "the cost must be 4 to 14"),
        (f"$2y$31${_BCRYPT_BODY}", "the cost must be 4 to 14"),
        (f"bcrypt$$2b$15${_BCRYPT_BODY}", "the cost must be 4 to 14"),
        (f"bcrypt_sha256$$2b$15${_BCRYPT_BODY}", "the cost must be 4 to 14"),
        (f"bcrypt_sha256$$2b$03${_BCRYPT_BODY}", "the cost must be 4 to 14"),
        # argon2: m <= 256 MiB, m*t <= 512 Ki, p <= 16, m >= 8p.
        (_argon2(m=262145), "8*p to 262144 KiB"),
        ("argon2" + _argon2(m=262145), "8*p to 262144 KiB"),
        (_argon2(m=262144, t=3), "(m*t) must be 1 to 524288 (here 786432)"),
        (_argon2(m=65536, t=9), "(m*t) must be 1 to 524288 (here 589824)"),
        (_argon2(m=1024, t=513), "(m*t) must be 1 to 524288 (here 525312)"),
        ("argon2" + _argon2(m=262144, t=3), "(m*t) must be 1 to 524288 (here 786432)"),
        (_argon2(p=17, m=17 * 8), "parallelism p must be 1 to 16"),
        (_argon2(p=4, m=31), "memory m must be 8*p"),
        (f"pbkdf2_sha256$1000${'s' * 300}${_KEY}", str(MAX_STORED_LENGTH)),
    ],
)
def test_costs_beyond_the_bounds_are_refused_naming_the_bound(hashed: str, bound: str) -> None:
    problem = hash_problem(hashed)
    assert problem is not None and bound in problem, problem


@pytest.mark.parametrize(
    "hashed",
    [
        f"pbkdf2_sha256$3000000$salt${_KEY}",
        f"pbkdf2_sha256$1500000$salt${_KEY64}",
        f"pbkdf2_sha1$750000$salt${_KEY64}",
        f"pbkdf2_sha1$3000000$salt${_b64(bytes(20), padded=True)}",  # one SHA-1 block
        f"pbkdf2_sha1$1500000$salt${_b64(bytes(21), padded=True)}",  # two
        f"pbkdf2_sha256$1000$salt${_b64(bytes(16), padded=True)}",
        f"$pbkdf2-sha256$i=3000000${_SALT}${_SALT}",
        f"$pbkdf2-sha512$i=3000000${_SALT}${_PHC_KEY64}",
        f"$pbkdf2-sha1$i=750000${_SALT}${_PHC_KEY64}",
        f"$2b$14${_BCRYPT_BODY}",
        f"$2b$04${_BCRYPT_BODY}",
        f"bcrypt$$2b$14${_BCRYPT_BODY}",
        f"bcrypt_sha256$$2a$14${_BCRYPT_BODY}",
        _argon2(m=262144, t=2, p=16),
        _argon2(m=65536, t=8, p=4),
        _argon2(m=128, t=1, p=16),  # m = 8p
        "argon2" + _argon2(m=262144, t=2, p=16),
    ],
)
def test_costs_at_the_bounds_are_accepted(hashed: str) -> None:
    assert hash_problem(hashed) is None


def test_pbkdf2_work_counts_every_output_block() -> None:
    # A 64-byte key of SHA-1 is 4 blocks of 20 bytes, each costing every iteration: 750,001
    # iterations are under 3,000,000, their work (3,000,004) is not.
    under = f"pbkdf2_sha1$750001$salt${_b64(bytes(20), padded=True)}"  # one block
    over = f"pbkdf2_sha1$750001$salt${_KEY64}"
    assert hash_problem(under) is None
    assert hash_problem(over) == (
        f"is not a valid Django pbkdf2_sha1 hash: {_pbkdf2_work(3_000_004)}"
    )
    phc = f"$pbkdf2-sha1$i=750001${_SALT}${_PHC_KEY64}"
    assert hash_problem(phc) == f"is not a valid PBKDF2 hash: {_pbkdf2_work(3_000_004)}"


def test_the_length_bound_is_the_column_size() -> None:
    fill = MAX_STORED_LENGTH - len(f"pbkdf2_sha256$1000$${_KEY}")
    at_bound = f"pbkdf2_sha256$1000${'s' * fill}${_KEY}"
    assert len(at_bound) == MAX_STORED_LENGTH and hash_problem(at_bound) is None
    over = f"pbkdf2_sha256$1000${'s' * (fill + 1)}${_KEY}"
    assert f"longer than {MAX_STORED_LENGTH}" in (hash_problem(over) or "")


# --- one spelling per hash -----------------------------------------------------------------------


def _low_bit_set(text: str, at: int, alphabet: str) -> str:
    """``text`` with the character at ``at`` one further in ``alphabet``: the same value but
    for the lowest of its bits, which the encoding leaves unused there (so it must be 0)."""
    at %= len(text)
    index = alphabet.index(text[at])
    assert index % 2 == 0, text  # a canonical character has it clear
    return text[:at] + alphabet[index + 1] + text[at + 1 :]


def _respelled() -> list[tuple[str, str, str]]:
    """(what, valid hash, the same hash with an unused bit set in one salt or hash field)."""
    cases = []
    for name in ("bcrypt $2b$", "bcrypt $2a$", "django bcrypt", "django bcrypt_sha256"):
        hashed = made(name)
        body = hashed.rindex("$") + 1  # 22 characters of salt, then 31 of hash
        cases.append((f"{name} salt", hashed, _low_bit_set(hashed, body + 21, BCRYPT_ALPHABET)))
        cases.append((f"{name} hash", hashed, _low_bit_set(hashed, -1, BCRYPT_ALPHABET)))
    for name in ("argon2id", "django argon2", "phc pbkdf2-sha256", "phc pbkdf2-sha1"):
        hashed = made(name)
        salt_end = hashed.rindex("$") - 1  # unpadded: the last character carries spare bits
        cases.append((f"{name} salt", hashed, _low_bit_set(hashed, salt_end, BASE64_ALPHABET)))
        cases.append((f"{name} hash", hashed, _low_bit_set(hashed, -1, BASE64_ALPHABET)))
    for name in ("django pbkdf2_sha256", "django pbkdf2_sha1"):
        hashed = made(name)  # a 32- or 20-byte key, padded: "...x=" with spare bits in x
        assert hashed.endswith("=") and not hashed.endswith("==")
        cases.append((f"{name} hash", hashed, _low_bit_set(hashed, -2, BASE64_ALPHABET)))
    return cases


@pytest.mark.parametrize("what", [what for what, _, _ in _respelled()])
def test_a_non_canonical_encoding_is_refused(what: str) -> None:
    _, valid, respelled = next(case for case in _respelled() if case[0] == what)
    assert hash_problem(valid) is None
    problem = hash_problem(respelled)
    assert problem is not None and problem.startswith("is not a valid "), (respelled, problem)
    if "bcrypt" in what:
        assert "not canonical bcrypt base64" in problem
    else:
        # The bytes are the same: only a lenient decoder would have let it through.
        field = respelled.split("$")[-1 if what.endswith("hash") else -2]
        original = valid.split("$")[-1 if what.endswith("hash") else -2]
        pad = lambda text: text + "=" * (-len(text) % 4)  # noqa: E731
        assert base64.b64decode(pad(field)) == base64.b64decode(pad(original))


def test_a_respelled_bcrypt_hash_could_never_match() -> None:
    # Why it is refused: bcrypt itself turns such a salt down, or writes its hash back in the
    # canonical spelling, so no password would ever verify (the user would be locked out).
    valid = made("bcrypt $2b$")
    assert bcrypt.checkpw(PASSWORD.encode(), valid.encode())
    for at in (28, -1):  # the salt's last character, the hash's
        respelled = _low_bit_set(valid, at, BCRYPT_ALPHABET)
        try:
            matched = bcrypt.checkpw(PASSWORD.encode(), respelled.encode())
        except ValueError:  # "Invalid salt"
            matched = False
        assert not matched, respelled


@pytest.mark.parametrize(
    "hashed",
    [
        "$2b$\u0660\u0665$" + _BCRYPT_BODY,  # Arabic-Indic 05
        "$2b$\uff10\uff15$" + _BCRYPT_BODY,  # fullwidth 05
        "bcrypt$$2b$\u0660\u0665$" + _BCRYPT_BODY,
        f"pbkdf2_sha256$\u0661\u0660\u0660\u0660$salt${_KEY}",
        f"$pbkdf2-sha256$i=\u0661\u0660\u0660\u0660${_SALT}${_SALT}",
        f"$argon2id$v=19$m=\u0661\u0660\u0662\u0664,t=1,p=1${_SALT}${_SALT}",
        f"$argon2id$v=\u0661\u0669$m=1024,t=1,p=1${_SALT}${_SALT}",
        f"$argon2id$v=19$m=1024,t=\u0661,p=1${_SALT}${_SALT}",
    ],
)
def test_numbers_in_other_digits_are_refused(hashed: str) -> None:
    assert hash_problem(hashed) is not None


def test_a_bcrypt_cost_in_other_digits_is_refused() -> None:
    assert hash_problem("$2b$\u0660\u0665$" + made("bcrypt $2b$")[7:]) is not None


def test_a_control_character_in_a_salt_is_refused() -> None:
    hashed = made("django pbkdf2_sha256")
    algorithm, iterations, salt, key = hashed.split("$")
    assert hash_problem(f"{algorithm}${iterations}${salt[:4]}\x00{salt[4:]}${key}") is not None


@pytest.mark.parametrize("name", ["django pbkdf2_sha256", "django pbkdf2_sha1"])
@pytest.mark.parametrize("salt", ["ab\x00cd", "ab\ud800cd", "abécd", "ab cd", "ab\x1b[2Jcd", ""])
def test_a_django_salt_must_be_printable_ascii(name: str, salt: str) -> None:
    hashed = made(name)
    algorithm, iterations, _, key = hashed.split("$")
    problem = hash_problem(f"{algorithm}${iterations}${salt}${key}")
    assert problem == f"is not a valid Django {algorithm} hash: the salt must be printable ASCII"
    # The control: Django's own salt (letters and digits) and every printable ASCII character.
    assert hash_problem(hashed) is None
    printable = "".join(chr(c) for c in range(ord("!"), ord("~") + 1)).replace("$", "")
    assert hash_problem(f"{algorithm}${iterations}${printable}${key}") is None


# --- what an error shows of a value that is not a hash -------------------------------------------


@pytest.mark.parametrize(
    "value", ["Sup3rS3cret$pw", "$Sup3rS3cret$pw", "Sup3rS3cret$", "Sup3r_S3cret-x$pw$more"]
)
def test_an_unknown_scheme_is_not_echoed(value: str) -> None:
    # A plain password holding a "$" (a column mix-up) must not reach the operator's screen.
    problem = hash_problem(value)
    assert problem is not None
    assert "S3cret" not in problem and "scheme" not in problem, problem
    assert problem.startswith("is not a supported password hash (supported: ")


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("scrypt$c2FsdA$16384$8$1$aGFzaA==", "scrypt"),
        ("md5$salt$0123456789abcdef0123456789abcdef", "md5"),
        ("$6$rounds=5000$salt$hash", "6"),
        ("$apr1$salt$hash", "apr1"),
        ("SCRYPT$salt$hash", "SCRYPT"),
    ],
)
def test_a_known_unsupported_scheme_is_named(value: str, scheme: str) -> None:
    problem = hash_problem(value)
    assert problem is not None and f"(scheme {scheme!r}; supported: " in problem, problem


# --- passwords no stored hash can match ----------------------------------------------------------


async def test_a_lone_surrogate_fails_like_a_wrong_password() -> None:
    # Only a library caller can pass one (UTF-8 cannot encode it): no hash is verified with
    # it, and it costs the verifications a wrong password does, for a user or for none.
    hasher = fast_hasher()

    async def cost(password: str, hashed: str | None) -> tuple[tuple[bool, str | None], int]:
        before = hasher.verifications
        outcome = await hasher.verify(password, hashed)
        return outcome, hasher.verifications - before

    for hashed in (None, MALFORMED, *(made(name) for name in MAKERS)):
        _, wrong = await cost(WRONG, hashed)
        for password in ("\ud800", PASSWORD + "\udfff", "\udc80" + "a" * 80):
            assert await cost(password, hashed) == ((False, None), wrong), (hashed, password)


async def test_django_bcrypt_over_72_bytes_verifies_the_dummy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Refused like a wrong password, at its cost: the dummy hash is verified, not the stored
    # bcrypt$ one (which would answer False without hashing anything).
    from authdb.hashers.django import DjangoBcrypt

    long = "a" * 70 + "é" + "tail"  # 72 bytes up to and including the é
    first_72 = long.encode()[:72].decode()
    hashed = django_hash("bcrypt", first_72)
    hasher = fast_hasher()
    verified: list[str] = []
    reached: list[str] = []
    real_verify, real_bcrypt = hasher._hash.verify, DjangoBcrypt.verify

    def spy(password: str | bytes, hash: str | bytes) -> bool:
        verified.append(str(hash))
        return real_verify(password, hash)

    def bcrypt_spy(self: DjangoBcrypt, password: str | bytes, hash: str | bytes) -> bool:
        reached.append(str(hash))
        return real_bcrypt(self, password, hash)

    monkeypatch.setattr(hasher._hash, "verify", spy)
    monkeypatch.setattr(DjangoBcrypt, "verify", bcrypt_spy)
    before = hasher.verifications
    assert await hasher.verify(long, hashed) == (False, None)
    assert hasher.verifications - before == 1  # as a wrong password
    assert verified == [hasher._dummy_hash] and reached == []
    # The control: 72 bytes reach the stored hash, and match.
    verified.clear()
    assert (await hasher.verify(first_72, hashed))[0] is True
    assert reached == [hashed] and verified == []


# --- every way in refuses a malformed hash -----------------------------------------------------


@pytest.fixture
async def auth(database_url: str) -> AsyncIterator[Auth]:
    """A started authdb on the test database, migrated as `authdb migrate` would."""
    values: dict[str, Any] = {"database_url": database_url, "secret_key": SECRET, **FAST_HASHING}
    auth = Auth(Settings(_env_file=None, **values))
    await migrate.upgrade(auth.core.engine)
    await auth.startup()
    yield auth
    await auth.shutdown()


async def _user_count(auth: Auth) -> int:
    async with auth.core.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(User)) or 0)


async def test_create_user_refuses_a_malformed_hash(auth: Auth) -> None:
    # provisioning.create_user is what the CLI, the import's neighbours and app code call.
    for hashed in (MALFORMED, f"$2b$17${_BCRYPT_BODY}", "plaintext-password"):
        with pytest.raises(InvalidInput) as refused:
            await provisioning.create_user(
                auth.core,
                username="alice",
                email="alice@example.com",
                hashed_password=hashed,
                client=CLI_CLIENT,
            )
        assert refused.value.field == "hashed_password"
        assert refused.value.detail.startswith("hashed_password ")
    assert await _user_count(auth) == 0
    # The control: a well-formed hash is stored as given.
    user = await provisioning.create_user(
        auth.core,
        username="alice",
        email="alice@example.com",
        hashed_password=made("django pbkdf2_sha256"),
        client=CLI_CLIENT,
    )
    assert user.hashed_password == made("django pbkdf2_sha256")


async def test_the_library_takes_no_stored_hash(auth: Auth) -> None:
    # auth.users.create has no hashed_password; update names it as an unknown field.
    with pytest.raises(TypeError, match="hashed_password"):
        await auth.users.create(  # type: ignore[call-arg]
            username="alice",
            email="alice@example.com",
            password=PASSWORD,
            hashed_password=MALFORMED,
        )
    user = await auth.users.create(username="alice", email="alice@example.com", password=PASSWORD)
    with pytest.raises(InvalidInput) as refused:
        await auth.users.update(user.id, hashed_password=MALFORMED)
    assert refused.value.field == "hashed_password"
    assert (await auth.users.get(user.id)).hashed_password == user.hashed_password


async def test_the_http_api_takes_no_stored_hash(harness: Harness) -> None:
    await harness.create_user("root", is_superuser=True)
    headers = await harness.bearer("root")
    root = (await harness.client.get("/users/me", headers=headers)).json()
    body = {"hashed_password": MALFORMED}
    answers = [
        await harness.client.post(
            "/register",
            json={"username": "bob", "email": "bob@example.com", "password": PASSWORD} | body,
        ),
        await harness.client.patch("/users/me", json=body, headers=headers),
        await harness.client.patch(f"/users/{root['id']}", json=body, headers=headers),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert any("hashed_password" in error["loc"] for error in answer.json()["detail"])
    await harness.login("root")  # the password still works: nothing was stored


def _exports(hashed: str) -> dict[str, tuple[str, int]]:
    """One user holding ``hashed`` in each export format, and the line it is on."""
    fields = {"username": "dj", "email": "dj@example.com", "password": hashed}
    django = [{"model": "auth.user", "pk": 7, "fields": fields}]
    jsonl = {"username": "js", "email": "js@example.com", "hashed_password": hashed}
    return {
        "jsonl": (json.dumps(jsonl) + "\n", 1),
        "django": (json.dumps(django, indent=2), 2),
        "fastapi-users": (
            "id,email,hashed_password,is_active,is_superuser,is_verified\n"
            f"1,fa@example.com,{hashed},t,f,f\n",
            2,
        ),
        "supabase": (f"id,email,encrypted_password\n1,sb@example.com,{hashed}\n", 2),
    }


def _keycloak_export(value: bytes, iterations: int) -> str:
    encode = lambda data: base64.b64encode(data).decode()  # noqa: E731
    secret = {"value": encode(value), "salt": encode(b"s" * 16)}
    data = {"algorithm": "pbkdf2-sha256", "hashIterations": iterations}
    credential = {
        "type": "password",
        "secretData": json.dumps(secret),
        "credentialData": json.dumps(data),
    }
    user = {
        "username": "kc",
        "email": "kc@example.com",
        "enabled": True,
        "credentials": [credential],
    }
    return json.dumps({"realm": "r", "users": [user]}, indent=2)


async def test_every_import_format_refuses_a_malformed_hash(auth: Auth) -> None:
    cases = [(fmt, text, line) for fmt, (text, line) in _exports(MALFORMED).items()]
    cases += [("keycloak", _keycloak_export(b"short", 1000), 4)]  # a 5-byte key
    # 1,500,001 iterations of a 64-byte SHA-256 key: two blocks, past the work bound.
    cases += [("keycloak", _keycloak_export(bytes(64), 1_500_001), 4)]
    for fmt, text, line in cases:
        reading = FORMATS[fmt](text)
        assert not reading.errors, (fmt, reading.errors)
        # Errors name the hash as the export calls it (Django's password, Supabase's ...).
        field = HASH_FIELDS.get(Source(fmt), "hashed_password")
        options = ImportOptions(source=fmt, hash_field=field)
        with pytest.raises(ImportRefused) as refused:
            await import_users(auth.core, reading, options, client=CLI_CLIENT)
        [error] = refused.value.errors
        assert error.line == line, fmt
        assert error.message.startswith(f"{field} is not a valid "), (fmt, error.message)
    assert await _user_count(auth) == 0
    # The control: the same files with a well-formed hash import.
    for fmt, (text, _) in _exports(made("bcrypt $2b$")).items():
        await import_users(auth.core, FORMATS[fmt](text), ImportOptions(), client=CLI_CLIENT)
    assert await _user_count(auth) == 4


async def test_the_import_command_refuses_a_malformed_hash(
    auth: Auth, database_url: str, tmp_path: Path
) -> None:
    env = {"AUTHDB_DATABASE_URL": database_url, "AUTHDB_SECRET_KEY": SECRET}
    export = tmp_path / "users.json"
    export.write_text(_exports(MALFORMED)["django"][0])
    for extra in ([], ["--dry-run"]):
        result = invoke_cli(["users", "import", "--from", "django", str(export), *extra], env=env)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "users.json line 2: password is not a valid bcrypt hash" in result.stderr
        assert "nothing imported" in result.stderr
    assert await _user_count(auth) == 0
    # createuser has no way to take a hash at all.
    result = invoke_cli(
        [
            "createuser",
            "--username",
            "bob",
            "--email",
            "bob@example.com",
            "--hashed-password",
            MALFORMED,
        ],
        env=env,
        stdin=PASSWORD,
    )
    assert result.returncode == 2 and "No such option" in result.stderr
    assert await _user_count(auth) == 0


# --- a foreign hash costs a login what an argon2id one does ------------------------------------


async def test_logins_against_foreign_hashes_count_the_same_verifications(
    harness: Harness,
) -> None:
    hasher = harness.auth.core.hasher
    stored = {"own": None, **{name: made(name) for name in MAKERS}}
    names = {}
    for number, (name, hashed) in enumerate(stored.items()):
        names[name] = f"user{number}"
        fields: dict[str, Any] = {"email": f"user{number}@example.com", "is_verified": True}
        if hashed is None:
            await harness.create_user(names[name], PASSWORD, **fields)
        else:
            await provisioning.create_user(
                harness.auth.core,
                username=names[name],
                hashed_password=hashed,
                client=CLI_CLIENT,
                **fields,
            )

    async def count(username: str, password: str, status: int) -> int:
        before = hasher.verifications
        answer = await harness.client.post(
            "/token", data={"username": username, "password": password}
        )
        assert answer.status_code == status, (username, answer.text)
        return hasher.verifications - before

    # A wrong password that NFKC changes is checked in both forms: two verifications.
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in "wrong password")
    attempts = [(WRONG, 401), (fullwidth, 401), (PASSWORD, 200)]
    expected = [await count(names["own"], password, status) for password, status in attempts]
    assert expected == [1, 2, 1]
    for name in MAKERS:
        counted = [await count(names[name], password, status) for password, status in attempts]
        assert counted == expected, name
    async with harness.auth.core.sessionmaker() as db:
        hashes = (await db.scalars(select(User.hashed_password))).all()
    assert all(h.startswith("$argon2id$") for h in hashes)  # every one upgraded at login
    # An unknown name verifies the dummy as often as a wrong password for a real one costs.
    assert [await count("nobody", password, 401) for password, _ in attempts] == expected
