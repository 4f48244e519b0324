"""Asymmetric signing keys (RS256, ES256, EdDSA): tokens carry a ``kid`` that a plain PyJWT
client verifies against ``/.well-known/jwks.json``; rotation keeps the old key verifying for
``verify_window`` and no longer; retiring stops a key at once; no algorithm confusion gets a
token in; private keys are never stored in the clear; secret and algorithm changes at start-up.

Time moves through the app's clock (``core.clock``), never by sleeping. Access tokens live two
hours here (``LONG_LIVED``), so an old token that is refused after its key's window is still
unexpired by the real clock: the refusal comes from the key.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import JWKRegistry
from jwt.utils import der_to_raw_signature

from authdb import Auth, Settings, signing
from authdb.db import migrate
from authdb.errors import AuthError, NotFound
from authdb.services import signing_keys
from authdb.services.core import CLI_CLIENT
from authdb.tokens import InvalidAccessToken
from tests.conftest import Harness
from tests.signing_helpers import (
    JWKS,
    KEY_PAIR_ALGORITHMS,
    LONG_LIVED,
    OTHER_SECRET,
    SECRET,
    assert_stored_nowhere,
    audit_events,
    b64url,
    compact,
    frozen_now,
    header,
    hs256_with,
    jwks,
    jwks_kids,
    key_rows,
    me_status,
    private_key_forms,
    segment,
    signing_key,
    unverified_claims,
    verify_with_jwks,
)

MakeHarness = Callable[..., Awaitable[Harness]]
algorithms = pytest.mark.parametrize("algorithm", KEY_PAIR_ALGORITHMS)
KTY = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
# JWK members that would mean a private key is published (RFC 7518 6.2.2, 6.3.2; RFC 8037 2).
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


async def _started(make_harness: MakeHarness, algorithm: str, **overrides: Any) -> Harness:
    """An app signing with ``algorithm``, with alice in it."""
    harness = await make_harness(jwt_algorithm=algorithm, **LONG_LIVED, **overrides)
    await harness.create_user("alice")
    return harness


async def _token(harness: Harness) -> str:
    return str((await harness.login())["access_token"])


def _new_private_key(algorithm: str) -> Any:
    return signing.generate(algorithm)


def _sign_with(key: Any, algorithm: str) -> Callable[[bytes], bytes]:
    """A raw JWS signer for ``key`` under ``algorithm``: no library check on the pairing."""
    if algorithm in ("RS256", "PS256"):
        pad = (
            padding.PKCS1v15()
            if algorithm == "RS256"
            else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        )
        return lambda data: key.sign(data, pad, hashes.SHA256())
    if algorithm.startswith("ES"):
        digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}
        return lambda data: der_to_raw_signature(
            key.sign(data, ec.ECDSA(digest[algorithm])), key.curve
        )
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return lambda data: key.sign(data)


def _fresh(claims: dict[str, Any]) -> dict[str, Any]:
    return {**claims, "jti": uuid.uuid4().hex}


# --- tokens and the published keys ----------------------------------------------------------


@algorithms
async def test_tokens_carry_the_kid_and_verify_against_the_published_jwks(
    make_harness: MakeHarness, algorithm: str
) -> None:
    """A resource server with nothing but PyJWT and the JWKS verifies authdb's tokens."""
    harness = await _started(make_harness, algorithm)
    tokens = await harness.login()
    token = tokens["access_token"]
    document = await jwks(harness)
    (published,) = document["keys"]
    assert header(token) == {"alg": algorithm, "typ": "JWT", "kid": published["kid"]}
    assert published["alg"] == algorithm
    assert published["use"] == "sig"
    assert published["kty"] == KTY[algorithm]
    assert not PRIVATE_MEMBERS & set(published), published
    # The kid is the RFC 7638 thumbprint, as an independent implementation computes it.
    members = {k: v for k, v in published.items() if k not in ("kid", "alg", "use")}
    assert JWKRegistry.import_key(members).thumbprint() == published["kid"]
    claims = verify_with_jwks(token, document)
    assert claims["sub"] == str((await harness.client.get(
        "/users/me", headers={"Authorization": f"Bearer {token}"}
    )).json()["id"])  # fmt: skip
    assert await me_status(harness, token) == 200
    # The refresh grant mints tokens of the same key.
    refreshed = await harness.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert header(refreshed.json()["access_token"])["kid"] == published["kid"]
    verify_with_jwks(refreshed.json()["access_token"], document)
    # One key, made at start-up, private key sealed; its birth is audited.
    assert await key_rows(harness.auth.core.engine) == [
        {
            "generation": 1,
            "kid": published["kid"],
            "algorithm": algorithm,
            "erased": False,
            "rotated": False,
            "retired": False,
        }
    ]
    assert await audit_events(harness, "signing_key_rotated") == [
        {"kid": published["kid"], "algorithm": algorithm, "previous": None}
    ]


async def test_hs256_stays_the_default_without_kid_or_published_keys(harness: Harness) -> None:
    """HS256 (the default): tokens as before, an empty JWKS, no key rows, nothing to rotate."""
    assert harness.auth.settings.jwt_algorithm == "HS256"
    await harness.create_user("alice")
    token = await _token(harness)
    assert header(token) == {"alg": "HS256", "typ": "JWT"}
    jwt.decode(token, SECRET, algorithms=["HS256"], audience="authdb", issuer="authdb")
    assert await jwks(harness) == {"keys": []}
    assert await me_status(harness, token) == 200
    assert await key_rows(harness.auth.core.engine) == []
    with pytest.raises(signing_keys.KeysNotInUse):
        await signing_keys.rotate(harness.auth.core, CLI_CLIENT)
    assert await key_rows(harness.auth.core.engine) == []
    # A kid in an HS256 token changes nothing: the secret verifies, the kid is not looked at.
    claims = _fresh(unverified_claims(token))
    with_kid = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "whatever"})
    assert await me_status(harness, with_kid) == 200


# --- rotation -------------------------------------------------------------------------------


@algorithms
async def test_rotation_keeps_old_tokens_only_for_the_verify_window(
    make_harness: MakeHarness, algorithm: str
) -> None:
    """After ``rotate`` both keys' tokens work and both are published; once the clock passes
    ``verify_window`` (and the keys are re-read) the old key is gone from both."""
    harness = await _started(make_harness, algorithm)
    core = harness.auth.core
    clock = frozen_now(harness)
    old_token = await _token(harness)
    old_kid = header(old_token)["kid"]
    old_private = signing_key(harness)
    new_kid = await signing_keys.rotate(core, CLI_CLIENT)
    assert new_kid != old_kid
    new_token = await _token(harness)
    assert header(new_token) == {"alg": algorithm, "typ": "JWT", "kid": new_kid}

    document = await jwks(harness)
    assert jwks_kids(document) == [new_kid, old_kid]
    for token in (old_token, new_token):
        assert await me_status(harness, token) == 200
        verify_with_jwks(token, document)
    rows = await key_rows(core.engine)
    assert [(r["kid"], r["erased"], r["rotated"]) for r in rows] == [
        (old_kid, True, True),
        (new_kid, False, False),
    ]
    assert (await audit_events(harness, "signing_key_rotated"))[-1] == {
        "kid": new_kid,
        "algorithm": algorithm,
        "previous": old_kid,
    }
    window = signing_keys.verify_window(core)
    assert window == timedelta(minutes=120, seconds=10 + 60)
    listed = {key.kid: key for key in await signing_keys.list_keys(core)}
    assert listed[new_kid].state == "current"
    assert (listed[old_kid].state, listed[old_kid].until) == ("retiring", clock.now + window)

    # Just inside the window: still accepted.
    clock.advance(seconds=window.total_seconds() - 1)
    await core.keyring.reload()  # type: ignore[union-attr]
    assert jwks_kids(await jwks(harness)) == [new_kid, old_kid]
    assert await me_status(harness, old_token) == 200

    # Past it: the old key is neither published nor accepted, whoever signs with it.
    clock.advance(seconds=2)
    await core.keyring.reload()  # type: ignore[union-attr]
    after = await jwks(harness)
    assert jwks_kids(after) == [new_kid]
    assert await me_status(harness, old_token) == 401
    forged = jwt.encode(
        _fresh(unverified_claims(old_token)),
        old_private,
        algorithm=algorithm,
        headers={"kid": old_kid},
    )
    assert await me_status(harness, forged) == 401
    assert await me_status(harness, new_token) == 200
    # The token itself is still good by its own signature and expiry: the key ended it.
    verify_with_jwks(old_token, document)
    assert {key.kid: key.state for key in await signing_keys.list_keys(core)} == {
        new_kid: "current",
        old_kid: "expired",
    }


async def test_a_rotation_in_another_process_reaches_this_one(make_harness: MakeHarness) -> None:
    """Two apps on one database: the one that did not rotate accepts the new key's tokens
    (re-reading the keys on an unknown kid) and then signs with the new key too."""
    first = await _started(make_harness, "ES256")
    second = await make_harness(jwt_algorithm="ES256", **LONG_LIVED)
    old_token = await _token(first)
    old_kid = header(old_token)["kid"]
    assert header(await _token(second))["kid"] == old_kid  # one key for the deployment
    new_kid = await signing_keys.rotate(second.auth.core, CLI_CLIENT)
    new_token = await _token(second)
    assert header(new_token)["kid"] == new_kid
    # Unknown kids re-read the keys at most once a second: poll, with a deadline.
    for _ in range(300):
        if await me_status(first, new_token) == 200:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the first app never accepted the rotated key's token")
    assert header(await _token(first))["kid"] == new_kid
    assert jwks_kids(await jwks(first)) == [new_kid, old_kid]
    assert await me_status(first, old_token) == 200
    assert await me_status(second, old_token) == 200


# --- retiring -------------------------------------------------------------------------------


@algorithms
async def test_retiring_a_rotated_key_refuses_its_tokens_at_once(
    make_harness: MakeHarness, algorithm: str
) -> None:
    harness = await _started(make_harness, algorithm)
    core = harness.auth.core
    old_token = await _token(harness)
    old_kid = header(old_token)["kid"]
    new_kid = await signing_keys.rotate(core, CLI_CLIENT)
    new_token = await _token(harness)
    assert await me_status(harness, old_token) == 200

    assert await signing_keys.retire(core, old_kid, CLI_CLIENT) is None
    assert await me_status(harness, old_token) == 401
    assert await me_status(harness, new_token) == 200
    assert jwks_kids(await jwks(harness)) == [new_kid]
    assert header(await _token(harness))["kid"] == new_kid
    rows = {r["kid"]: r for r in await key_rows(core.engine)}
    assert (rows[old_kid]["retired"], rows[old_kid]["erased"]) == (True, True)
    assert (rows[new_kid]["retired"], rows[new_kid]["erased"]) == (False, False)
    assert await audit_events(harness, "signing_key_retired") == [{"kid": old_kid}]
    assert {key.kid: key.state for key in await signing_keys.list_keys(core)} == {
        new_kid: "current",
        old_kid: "retired",
    }


async def test_retiring_the_current_key_makes_a_new_current_key(
    make_harness: MakeHarness,
) -> None:
    harness = await _started(make_harness, "ES256")
    core = harness.auth.core
    leaked_token = await _token(harness)
    leaked = header(leaked_token)["kid"]
    replacement = await signing_keys.retire(core, leaked, CLI_CLIENT)
    assert replacement is not None and replacement != leaked
    assert await me_status(harness, leaked_token) == 401
    token = await _token(harness)
    assert header(token)["kid"] == replacement
    assert await me_status(harness, token) == 200
    document = await jwks(harness)
    assert jwks_kids(document) == [replacement]
    verify_with_jwks(token, document)
    rows = await key_rows(core.engine)
    assert [(r["kid"], r["erased"], r["rotated"], r["retired"]) for r in rows] == [
        (leaked, True, True, True),
        (replacement, False, False, False),
    ]
    assert await audit_events(harness, "signing_key_retired") == [{"kid": leaked}]
    assert (await audit_events(harness, "signing_key_rotated"))[-1] == {
        "kid": replacement,
        "algorithm": "ES256",
        "previous": leaked,
    }


async def test_retiring_an_unknown_or_retired_kid_is_not_found(make_harness: MakeHarness) -> None:
    harness = await _started(make_harness, "EdDSA")
    core = harness.auth.core
    kid = header(await _token(harness))["kid"]
    with pytest.raises(NotFound):
        await signing_keys.retire(core, "no-such-kid", CLI_CLIENT)
    assert [r["kid"] for r in await key_rows(core.engine)] == [kid]
    new_kid = await signing_keys.rotate(core, CLI_CLIENT)
    await signing_keys.retire(core, kid, CLI_CLIENT)
    with pytest.raises(NotFound):
        await signing_keys.retire(core, kid, CLI_CLIENT)
    assert [r["kid"] for r in await key_rows(core.engine)] == [kid, new_kid]
    assert await audit_events(harness, "signing_key_retired") == [{"kid": kid}]


async def test_a_key_retired_elsewhere_is_refused_within_the_refresh_interval(
    make_harness: MakeHarness,
) -> None:
    """Another app's ``retire`` reaches this one by its periodic re-read of the keys."""
    first = await _started(make_harness, "ES256", jwt_keys_refresh_seconds=1)
    second = await make_harness(jwt_algorithm="ES256", jwt_keys_refresh_seconds=1, **LONG_LIVED)
    token = await _token(first)
    kid = header(token)["kid"]
    assert await me_status(first, token) == 200
    replacement = await signing_keys.retire(second.auth.core, kid, CLI_CLIENT)
    assert await me_status(second, token) == 401
    for _ in range(300):
        if await me_status(first, token) == 401:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the first app kept accepting a retired key's token")
    assert header(await _token(first))["kid"] == replacement


async def test_retiring_the_current_key_from_an_hs256_process_still_stops_it(
    make_harness: MakeHarness,
) -> None:
    """``authdb keys retire KID`` run from a shell without AUTHDB_JWT_ALGORITHM (so HS256)
    against an ES256 deployment: either it refuses, or the leaked key stops being accepted by
    the running apps when they re-read the keys. It must not retire the key on paper only."""
    server = await _started(make_harness, "ES256")
    token = await _token(server)
    kid = header(token)["kid"]
    shell = await make_harness()  # the same database and secret, HS256
    try:
        await signing_keys.retire(shell.auth.core, kid, CLI_CLIENT)
    except AuthError:
        # Refused: then nothing changed, and the key is still in force.
        assert [(r["kid"], r["retired"]) for r in await key_rows(server.auth.core.engine)] == [
            (kid, False)
        ]
        return
    await server.auth.core.keyring.reload()  # type: ignore[union-attr]  # as every 10 s
    assert await me_status(server, token) == 401
    assert header(await _token(server))["kid"] != kid


# --- algorithm confusion --------------------------------------------------------------------


def _public_forms(public: Any) -> dict[str, bytes]:
    """The public key as the bytes an attacker might try as an HMAC secret."""
    forms = {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
    }
    if isinstance(public, rsa.RSAPublicKey):
        forms["pkcs1-pem"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
    elif isinstance(public, ec.EllipticCurvePublicKey):
        forms["point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        forms["raw"] = public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return forms


# Same key, another algorithm: signatures that verify under the key, were the header believed.
_SAME_KEY_OTHER_ALG = {"RS256": "PS256", "ES256": "ES384"}


def _confusion_attacks(
    algorithm: str, private: Any, kid: str, claims: dict[str, Any], jwks_body: bytes
) -> dict[str, str]:
    """Tokens that a confused verifier would accept, by name."""
    jwk = json.loads(jwks_body)["keys"][0]
    ours = {"alg": algorithm, "typ": "JWT", "kid": kid}
    attacks: dict[str, str] = {}

    def add(name: str, head: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> None:
        attacks[name] = compact(head, _fresh(claims), sign)

    hs256 = {"alg": "HS256", "typ": "JWT", "kid": kid}
    for name, secret in _public_forms(private.public_key()).items():
        add(f"hs256 with the public key ({name}) as secret", hs256, hs256_with(secret))
    add("hs256 with the published JWK", hs256, hs256_with(json.dumps(jwk).encode()))
    compact_jwk = json.dumps(jwk, separators=(",", ":")).encode()
    add("hs256 with the compact JWK", hs256, hs256_with(compact_jwk))
    add("hs256 with the JWKS response body", hs256, hs256_with(jwks_body))
    add("hs256 with the secret key and kid", hs256, hs256_with(SECRET.encode()))
    add("hs256 with the secret key, no kid", {"alg": "HS256"}, hs256_with(SECRET.encode()))
    attacks["hs512 with the secret key"] = jwt.encode(
        _fresh(claims), SECRET + SECRET, algorithm="HS512", headers={"kid": kid}
    )
    for none in ("none", "None", "NONE"):
        add(f"alg {none} with our kid", {"alg": none, "kid": kid}, None)
        add(
            f"alg {none} with our signature",
            {"alg": none, "kid": kid},
            _sign_with(private, algorithm),
        )
    ours_sign = _sign_with(private, algorithm)
    add("our key, no kid", {"alg": algorithm, "typ": "JWT"}, ours_sign)
    add("our key, unknown kid", {**ours, "kid": "A" * 43}, ours_sign)
    add("our key, empty kid", {**ours, "kid": ""}, ours_sign)
    add("our key, kid null", {**ours, "kid": None}, ours_sign)
    add("our key, kid a number", {**ours, "kid": 1}, ours_sign)
    add("our key, kid a list", {**ours, "kid": [kid]}, ours_sign)
    add("our key, kid an object", {**ours, "kid": {"kid": kid}}, ours_sign)
    add("our key, kid too long", {**ours, "kid": kid * 4}, ours_sign)
    add("our key, kid with a suffix", {**ours, "kid": kid + " "}, ours_sign)
    if algorithm in _SAME_KEY_OTHER_ALG:
        other = _SAME_KEY_OTHER_ALG[algorithm]
        add(f"our key as {other}", {**ours, "alg": other}, _sign_with(private, other))
    else:
        # PyJWT knows Ed25519 as an alias of EdDSA; the key pins the name we publish.
        add("our key as Ed25519", {**ours, "alg": "Ed25519"}, ours_sign)
    # Other keys: same algorithm under our kid, and every key-pair algorithm under its own.
    stranger = _new_private_key(algorithm)
    add("another key, our kid", ours, _sign_with(stranger, algorithm))
    for other_alg in KEY_PAIR_ALGORITHMS:
        other_key = stranger if other_alg == algorithm else _new_private_key(other_alg)
        other_jwk = signing.public_jwk(other_key.public_key(), other_alg)
        sign = _sign_with(other_key, other_alg)
        base = {"alg": other_alg, "typ": "JWT"}
        if other_alg != algorithm:
            add(f"{other_alg} key, our kid", {**base, "kid": kid}, sign)
        add(f"{other_alg} key, its own kid", {**base, "kid": other_jwk["kid"]}, sign)
        embedded = {**base, "kid": other_jwk["kid"], "jwk": other_jwk}
        add(f"{other_alg} key embedded in the header", embedded, sign)
        add(f"{other_alg} key embedded under our kid", {**embedded, "kid": kid}, sign)
        jku = {**base, "kid": other_jwk["kid"], "jku": "http://evil.example/jwks.json"}
        add(f"{other_alg} key behind a jku", jku, sign)
    return attacks


@algorithms
async def test_algorithm_confusion_and_foreign_keys_are_refused(
    make_harness: MakeHarness, algorithm: str
) -> None:
    """Every token not signed by our key under its own algorithm and kid gets 401, while the
    same forging code with the real key, algorithm and kid gets 200 (so the forgeries are
    well-formed and only their signing is wrong)."""
    harness = await _started(make_harness, algorithm)
    token = await _token(harness)
    kid = header(token)["kid"]
    claims = unverified_claims(token)
    private = signing_key(harness)
    control = compact(
        {"alg": algorithm, "typ": "JWT", "kid": kid}, _fresh(claims), _sign_with(private, algorithm)
    )
    assert await me_status(harness, control) == 200
    body = (await harness.client.get(JWKS)).content
    attacks = _confusion_attacks(algorithm, private, kid, claims, body)
    assert len(attacks) > 25
    accepted = {
        name: status
        for name, token in attacks.items()
        if (status := await me_status(harness, token)) != 401
    }
    assert accepted == {}
    # The token endpoint's revocation must not honour them either: alice's session lives.
    for forged in attacks.values():
        response = await harness.client.post(
            "/revoke", data={"token": forged, "token_type_hint": "access_token"}
        )
        assert response.status_code == 200
    assert await me_status(harness, token) == 200


async def test_a_token_for_another_deployment_algorithm_is_refused(
    make_harness: MakeHarness,
) -> None:
    """An RS256 token (genuine, from an RS256 app on the same database and secret) means
    nothing to an ES256 app once the RS256 key is out of its window, and even its own kid
    pins the algorithm: the same RS256 key with its kid re-signed as ES256 is refused."""
    rs = await _started(make_harness, "RS256")
    rs_token = await _token(rs)
    rs_kid = header(rs_token)["kid"]
    es = await make_harness(jwt_algorithm="ES256", **LONG_LIVED)
    es_token = await _token(es)
    es_kid = header(es_token)["kid"]
    assert es_kid != rs_kid
    # The switch rotated: the RS256 key's tokens are accepted through its window...
    assert await me_status(es, rs_token) == 200
    # ...and only as RS256 under that kid.
    claims = _fresh(unverified_claims(rs_token))
    es_private = signing_key(es)
    as_es = compact(
        {"alg": "ES256", "typ": "JWT", "kid": rs_kid}, claims, _sign_with(es_private, "ES256")
    )
    assert await me_status(es, as_es) == 401
    clock = frozen_now(es)
    clock.advance(seconds=signing_keys.verify_window(es.auth.core).total_seconds() + 1)
    await es.auth.core.keyring.reload()  # type: ignore[union-attr]
    assert await me_status(es, rs_token) == 401
    assert await me_status(es, es_token) == 200


def _headers() -> st.SearchStrategy[dict[str, Any]]:
    """Headers near ours: chosen algorithms and kids, odd values, extra members."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    )
    algs = st.sampled_from(
        ["RS256", "ES256", "EdDSA", "HS256", "PS256", "ES384", "none", "Ed25519"]
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "alg": algs | json_values,
            "kid": st.sampled_from(["OURS", "OTHER", ""]) | json_values,
            "typ": st.sampled_from(["JWT", "at+jwt"]) | json_values,
            "crit": json_values,
            "jwk": json_values,
        },
    ).flatmap(
        lambda head: st.dictionaries(st.text(max_size=6), json_values, max_size=2).map(
            lambda extra: {**extra, **head}
        )
    )


async def test_tampered_headers_never_authenticate(make_harness: MakeHarness) -> None:
    """Hypothesis: a real token with its header replaced by anything else (the signature kept,
    dropped, or made with the secret key or the public key) never decodes; a sample of them
    also gets 401 over HTTP."""
    harness = await _started(make_harness, "ES256")
    token = await _token(harness)
    original_header, payload, signature = token.split(".")
    kid = header(token)["kid"]
    public_pem = _public_forms(signing_key(harness).public_key())["pem"]
    codec = harness.auth.core.jwt
    signatures = {
        "kept": lambda _data: jwt.utils.base64url_decode(signature),
        "dropped": lambda _data: b"",
        "secret": hs256_with(SECRET.encode()),
        "public": hs256_with(public_pem),
    }
    sample: list[str] = []

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(head=_headers(), how=st.sampled_from(sorted(signatures)))
    def never_decodes(head: dict[str, Any], how: str) -> None:
        head = dict(head)
        if head.get("kid") == "OURS":
            head["kid"] = kid
        elif head.get("kid") == "OTHER":
            head["kid"] = "B" * 43
        forged_header = segment(head)
        signing_input = f"{forged_header}.{payload}".encode()
        forged = f"{forged_header}.{payload}.{b64url(signatures[how](signing_input))}"
        if forged_header == original_header:
            return
        with pytest.raises(InvalidAccessToken):
            codec.decode(forged)
        if len(sample) < 40:
            sample.append(forged)

    never_decodes()
    assert len(sample) == 40
    for forged in sample:
        assert await me_status(harness, forged) == 401, forged
    assert await me_status(harness, token) == 200


# --- private keys at rest -------------------------------------------------------------------


@algorithms
async def test_private_keys_are_never_stored_in_the_clear(
    make_harness: MakeHarness, algorithm: str
) -> None:
    """Neither the current key (sealed) nor a rotated or retired one (erased) is readable in
    any row, nor in the SQLite file and its WAL."""
    harness = await _started(make_harness, algorithm)
    core = harness.auth.core
    await _token(harness)
    first = signing_key(harness)
    needles = private_key_forms(first)
    await assert_stored_nowhere(core.engine, needles, visible="alice@example.com")
    assert [r["erased"] for r in await key_rows(core.engine)] == [False]

    await signing_keys.rotate(core, CLI_CLIENT)
    await _token(harness)
    second = signing_key(harness)
    assert second is not first
    needles += private_key_forms(second)
    assert [r["erased"] for r in await key_rows(core.engine)] == [True, False]

    second_kid = core.jwt.keys.signing_kid
    assert second_kid is not None
    await signing_keys.retire(core, second_kid, CLI_CLIENT)
    await _token(harness)
    needles += private_key_forms(signing_key(harness))
    assert [(r["erased"], r["retired"]) for r in await key_rows(core.engine)] == [
        (True, False),
        (True, True),
        (False, False),
    ]
    await assert_stored_nowhere(core.engine, needles, visible="alice@example.com")


# --- start-up: secret and algorithm changes -------------------------------------------------


async def test_a_restart_with_the_same_settings_keeps_the_key(make_harness: MakeHarness) -> None:
    first = await _started(make_harness, "ES256")
    token = await _token(first)
    kid = header(token)["kid"]
    await first.auth.shutdown()
    again = await make_harness(jwt_algorithm="ES256", **LONG_LIVED)
    assert header(await _token(again))["kid"] == kid
    assert await me_status(again, token) == 200
    assert [r["kid"] for r in await key_rows(again.auth.core.engine)] == [kid]
    assert len(await audit_events(again, "signing_key_rotated")) == 1


async def test_a_new_secret_without_the_old_one_makes_a_new_key(
    make_harness: MakeHarness,
) -> None:
    """The old private key cannot be opened, so a new key signs; the old public key still
    verifies the tokens already out there, until its window ends."""
    first = await _started(make_harness, "ES256")
    old_token = await _token(first)
    old_kid = header(old_token)["kid"]
    await first.auth.shutdown()
    second = await make_harness(jwt_algorithm="ES256", secret_key=OTHER_SECRET, **LONG_LIVED)
    new_token = await _token(second)
    new_kid = header(new_token)["kid"]
    assert new_kid != old_kid
    document = await jwks(second)
    assert jwks_kids(document) == [new_kid, old_kid]
    verify_with_jwks(old_token, document)
    assert await me_status(second, old_token) == 200
    rows = await key_rows(second.auth.core.engine)
    assert [(r["kid"], r["erased"], r["rotated"]) for r in rows] == [
        (old_kid, True, True),
        (new_kid, False, False),
    ]
    assert (await audit_events(second, "signing_key_rotated"))[-1]["previous"] == old_kid
    clock = frozen_now(second)
    clock.advance(seconds=signing_keys.verify_window(second.auth.core).total_seconds() + 1)
    await second.auth.core.keyring.reload()  # type: ignore[union-attr]
    assert await me_status(second, old_token) == 401
    assert await me_status(second, new_token) == 200
    assert jwks_kids(await jwks(second)) == [new_kid]


async def test_the_old_secret_in_fallbacks_keeps_the_key_and_reseals_it(
    make_harness: MakeHarness,
) -> None:
    first = await _started(make_harness, "EdDSA")
    token = await _token(first)
    kid = header(token)["kid"]
    await first.auth.shutdown()
    second = await make_harness(
        jwt_algorithm="EdDSA",
        secret_key=OTHER_SECRET,
        secret_key_fallbacks=[SECRET],
        **LONG_LIVED,
    )
    assert header(await _token(second))["kid"] == kid
    assert await me_status(second, token) == 200
    assert jwks_kids(await jwks(second)) == [kid]
    await second.auth.shutdown()
    # Resealed under the new secret: the fallback can go now, and the key stays.
    third = await make_harness(jwt_algorithm="EdDSA", secret_key=OTHER_SECRET, **LONG_LIVED)
    assert header(await _token(third))["kid"] == kid
    assert await me_status(third, token) == 200
    assert [r["kid"] for r in await key_rows(third.auth.core.engine)] == [kid]
    assert len(await audit_events(third, "signing_key_rotated")) == 1


async def test_setting_a_secret_key_after_the_generated_one_keeps_the_key(
    make_harness: MakeHarness,
) -> None:
    """A deployment that started on the generated secret keeps its key pair when it sets
    AUTHDB_SECRET_KEY (the generated one counts as a fallback)."""
    first = await _started(make_harness, "ES256", secret_key=None)
    token = await _token(first)
    kid = header(token)["kid"]
    await first.auth.shutdown()
    second = await make_harness(jwt_algorithm="ES256", secret_key=OTHER_SECRET, **LONG_LIVED)
    assert header(await _token(second))["kid"] == kid
    assert await me_status(second, token) == 200
    assert [r["kid"] for r in await key_rows(second.auth.core.engine)] == [kid]


@pytest.mark.parametrize(
    ("before", "after"), [("ES256", "EdDSA"), ("RS256", "ES256"), ("EdDSA", "RS256")]
)
async def test_changing_the_algorithm_rotates_and_old_tokens_keep_working(
    make_harness: MakeHarness, before: str, after: str
) -> None:
    first = await _started(make_harness, before)
    old_token = await _token(first)
    old_kid = header(old_token)["kid"]
    await first.auth.shutdown()
    second = await make_harness(jwt_algorithm=after, **LONG_LIVED)
    new_token = await _token(second)
    new_kid = header(new_token)["kid"]
    assert header(new_token)["alg"] == after
    document = await jwks(second)
    assert [(key["kid"], key["alg"]) for key in document["keys"]] == [
        (new_kid, after),
        (old_kid, before),
    ]
    verify_with_jwks(old_token, document)
    verify_with_jwks(new_token, document)
    assert await me_status(second, old_token) == 200
    assert await me_status(second, new_token) == 200
    rows = await key_rows(second.auth.core.engine)
    assert [(r["algorithm"], r["erased"], r["rotated"]) for r in rows] == [
        (before, True, True),
        (after, False, False),
    ]
    assert (await audit_events(second, "signing_key_rotated"))[-1] == {
        "kid": new_kid,
        "algorithm": after,
        "previous": old_kid,
    }


async def test_processes_starting_together_agree_on_one_key(
    make_settings: Callable[..., Settings],
) -> None:
    """Four apps starting at once on an empty table make one current key between them."""
    auths = [Auth(make_settings(jwt_algorithm="RS256")) for _ in range(4)]
    await migrate.upgrade(auths[0].core.engine)
    try:
        await asyncio.gather(*(auth.startup() for auth in auths))
        # A process that lost a race may have read the keys just before the winner's commit;
        # its periodic re-read would fix that, here done at once.
        for auth in auths:
            await auth.core.keyring.reload()  # type: ignore[union-attr]
        kids = {auth.core.jwt.keys.signing_kid for auth in auths}
        current = [r["kid"] for r in await key_rows(auths[0].core.engine) if not r["rotated"]]
        assert len(current) == 1
        assert kids == set(current)
    finally:
        for auth in auths:
            await auth.shutdown()


async def test_an_unknown_kid_is_401_even_when_the_keys_cannot_be_reread(
    make_harness: MakeHarness,
) -> None:
    """A process whose secret no longer opens the current key (another process started with a
    new secret and rotated) keeps answering 401, not 500, to tokens naming kids it does not
    know: re-reading the keys fails there, and that must not become a server error."""
    drifted = await _started(make_harness, "ES256")
    newer = await make_harness(jwt_algorithm="ES256", secret_key=OTHER_SECRET, **LONG_LIVED)
    new_token = await _token(newer)
    made_up = compact({"alg": "ES256", "typ": "JWT", "kid": "C" * 43}, {"sub": "1"}, None)
    keyring = drifted.auth.core.keyring
    assert keyring is not None
    statuses = set()
    for token in (new_token, made_up):
        # Forget when the keys were last read, so that this token makes the app re-read them
        # (at most once a second otherwise).
        keyring._last_load = float("-inf")
        statuses.add(await me_status(drifted, token))
    assert statuses == {401}
