"""Signing in with a passkey, as the only factor or as the second one (SPEC, "Passkeys").

``login_options`` hands out a sealed challenge (the ``flow_id``) and request options without
``allowCredentials``; the authenticator picks a discoverable credential and the assertion
names it. Then:

* first factor: a passkey with user verification (a PIN or biometric on the device) is two
  factors in one and satisfies MFA; without it, an account with MFA on must still give a TOTP
  or recovery code (``MFARequired``, the challenge marked as opened by a passkey);
* second factor (``mfa_token`` from a password sign-in): a passkey of that account completes it.

Every failure is ``InvalidPasskey`` (401) and counts as a failed login: for the account of a
known credential, and always for the client's failure budget.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authdb import relying_party as rp_
from authdb.db.models import MFAChallenge, Passkey, User
from authdb.errors import (
    InvalidInput,
    InvalidMFAToken,
    InvalidPasskey,
    TooManyRequests,
)
from authdb.names import has_control_characters
from authdb.ratelimit import RateLimits, client_key
from authdb.services import audit, lockout, mfa, passkey_challenges
from authdb.services.core import ClientInfo, Core
from authdb.services.guard import admit, attempt, fail, spend_failure
from authdb.services.login import (
    Opener,
    SessionT,
    account_refusal,
    audit_refusal,
    maybe_prune,
    mfa_challenge,
    open_session,
    refusal_or_lock,
    settle,
)
from authdb.services.passkeys import challenge_sealer
from authdb.services.sessions import BrowserSession, TokenPair, start_browser_session, start_session
from authdb.services.users import find_by_login

_FAILED = "passkey_failed"
_UNKNOWN_FLOW_OR_CREDENTIAL = "unknown, expired or foreign flow, or unknown credential"


def login_options(core: Core, username: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(flow_id, PublicKeyCredentialRequestOptionsJSON)`` for a passkey sign-in.

    With ``username`` only a passkey of that account completes the flow; the options are the
    same either way, so they tell nothing about the account. Raises PasskeysUnavailable (409),
    FeatureNotInstalled (501), InvalidInput (422) for a name with control characters.
    """
    rp = rp_.relying_party(core.settings)
    if username is not None and has_control_characters(username):
        raise InvalidInput("Username contains invalid characters", field="username")
    challenge = rp_.Challenge(
        purpose=rp_.LOGIN,
        expires_at=core.clock() + rp_.CHALLENGE_LIFETIME,
        username=username or None,
    )
    raw = rp_.seal_challenge(challenge_sealer(core), challenge)
    return rp_.b64encode(raw), rp_.request_options(rp, challenge=raw)


async def login(
    core: Core,
    limits: RateLimits,
    flow_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
    *,
    mfa_token: str | None = None,
) -> TokenPair:
    """Exchange a passkey assertion (an AuthenticationResponseJSON answering ``flow_id``) for
    tokens; with ``mfa_token``, the assertion is the second factor of that sign-in.

    Raises InvalidPasskey (401); MFARequired (403) for a passkey without user verification
    on an account with MFA on; InvalidMFAToken (401); TooManyRequests (429); InactiveUser or
    EmailNotVerified (400); PasskeysUnavailable (409); FeatureNotInstalled (501).
    """
    return await _login(core, limits, flow_id, credential, client, mfa_token, start_session)


async def login_browser(
    core: Core,
    limits: RateLimits,
    flow_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
    *,
    mfa_token: str | None = None,
) -> BrowserSession:
    """``login`` for the sign-in page: the same checks, but a cookie-carried session."""
    return await _login(core, limits, flow_id, credential, client, mfa_token, start_browser_session)


async def _login(
    core: Core,
    limits: RateLimits,
    flow_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
    mfa_token: str | None,
    opener: Opener[SessionT],
) -> SessionT:
    rp = rp_.relying_party(core.settings)
    rp_.webauthn_library()  # 501 naming the extra, before any work
    if mfa_token is not None:
        pair = await _second_factor(
            core, limits, rp, flow_id, credential, client, mfa_token, opener
        )
    else:
        pair = await _first_factor(core, limits, rp, flow_id, credential, client, opener)
    await maybe_prune(core)
    return pair


@dataclass(frozen=True, slots=True)
class _Proof:
    """An assertion's challenge and the passkey and account it names (not yet verified)."""

    raw_challenge: bytes
    # False when the challenge was presented before: a replay, refused once the account is
    # known (so that it counts against it).
    fresh: bool
    passkey: Passkey
    user: User
    # False when the flow was asked for another account's name.
    for_this_account: bool


async def _identify(core: Core, flow_id: str, credential: dict[str, Any]) -> _Proof | None:
    """The proof an assertion offers, or None: an unknown, foreign or expired flow, or an
    unknown credential. A flow of ours is spent here, by its first presentation, whatever
    comes of it."""
    try:
        raw = rp_.b64decode(flow_id)
    except ValueError:
        return None
    challenge = rp_.open_challenge(challenge_sealer(core), raw, rp_.LOGIN, core.clock())
    if challenge is None:
        return None
    fresh = await passkey_challenges.spend(core, raw, challenge.expires_at)
    credential_id = rp_.credential_id(credential)
    if credential_id is None:
        return None
    async with core.sessionmaker() as db:
        passkey = await db.scalar(select(Passkey).where(Passkey.credential_id == credential_id))
        user = await db.get(User, passkey.user_id) if passkey is not None else None
        named = await find_by_login(db, challenge.username) if challenge.username else None
    if passkey is None or user is None:
        return None
    matches = challenge.username is None or (named is not None and named.id == user.id)
    return _Proof(raw, fresh, passkey, user, matches)


async def _verify(
    core: Core,
    limits: RateLimits,
    key: str,
    client: ClientInfo,
    rp: rp_.RelyingParty,
    proof: _Proof,
    credential: dict[str, Any],
) -> rp_.Assertion:
    """Check the assertion of a fresh challenge; a failure counts against ``key``."""
    user_id = proof.user.id

    async def refuse(reason: str) -> NoReturn:
        await fail(core, limits, key, client, user_id, InvalidPasskey(), _FAILED, reason)

    if not proof.fresh:
        await refuse("replayed challenge")
    try:
        assertion = rp_.verify_assertion(
            rp, credential, proof.raw_challenge, proof.passkey.public_key
        )
    except InvalidPasskey:
        await refuse("assertion does not verify")
    # Discoverable credentials name their account: the handle must be there and be the
    # passkey's (WebAuthn Level 3, section 7.2, step 6).
    handle = rp_.user_handle(credential)
    if handle is None or not hmac.compare_digest(handle, proof.passkey.user_handle):
        await refuse("user handle is not the passkey's")
    if not proof.for_this_account:
        await refuse("passkey of another account than the flow's")
    if rp_.counter_went_back(proof.passkey.sign_count, assertion.sign_count):
        # A cloned authenticator, most likely (WebAuthn Level 3, section 6.1.1).
        async with core.sessionmaker.begin() as db:
            audit.record(
                db,
                "passkey_counter_regressed",
                client=client,
                now=core.clock(),
                user_id=user_id,
                passkey_id=proof.passkey.id,
                stored=proof.passkey.sign_count,
                presented=assertion.sign_count,
            )
        await refuse("sign counter went back")
    return assertion


async def _record_use(
    db: AsyncSession, passkey: Passkey, assertion: rp_.Assertion, now: Any
) -> None:
    """Store the new counter, if no concurrent sign-in stored a later one (else InvalidPasskey,
    which rolls the caller's transaction back)."""
    new = assertion.sign_count
    newer = Passkey.sign_count < new if new > 0 else Passkey.sign_count == 0
    result = await db.execute(
        update(Passkey)
        .where(Passkey.id == passkey.id, newer)
        .values(sign_count=new, last_used_at=now, backed_up=assertion.backed_up)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise InvalidPasskey


async def _fail_unknown(core: Core, limits: RateLimits, client: ClientInfo) -> NoReturn:
    """No account to count against: the client's budget pays for the failure."""
    async with core.sessionmaker.begin() as db:
        audit.record(
            db, _FAILED, client=client, now=core.clock(), reason=_UNKNOWN_FLOW_OR_CREDENTIAL
        )
    await spend_failure(core, limits, client)
    raise InvalidPasskey


# --- the passkey as the first factor --------------------------------------------------------


async def _first_factor(
    core: Core,
    limits: RateLimits,
    rp: rp_.RelyingParty,
    flow_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
    opener: Opener[SessionT],
) -> SessionT:
    async with limits.attempt("login_failures", client_key(client, core.settings)):
        proof = await _identify(core, flow_id, credential)
        if proof is None:
            await _fail_unknown(core, limits, client)
        key = await admit(core, limits, proof.user, client)
        assertion = await _verify(core, limits, key, client, rp, proof, credential)
        return await _open(core, limits, key, client, proof, assertion, opener)


async def _open(
    core: Core,
    limits: RateLimits,
    key: str,
    client: ClientInfo,
    proof: _Proof,
    assertion: rp_.Assertion,
    opener: Opener[SessionT],
) -> SessionT:
    """A verified passkey: a session, unless the account is refused or locked, or MFA is on
    and the device did not verify the user (then MFARequired)."""
    user, passkey_id = proof.user, proof.passkey.id
    pair: SessionT | None = None
    mfa_token: str | None = None
    methods: list[str] = []
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        await _record_use(db, proof.passkey, assertion, now)
        mfa_due = user.mfa_enabled and not assertion.user_verified
        # As with a password: one factor alone forgives no failures when MFA is on.
        check = lockout.locked_for if mfa_due else lockout.admit_success
        refusal = refusal_or_lock(core, user, await check(db, key, now))
        if refusal is not None:
            audit_refusal(db, refusal, client, now, user.id)
        elif mfa_due:
            mfa_token = await mfa.start_challenge(db, user.id, now, mfa.FIRST_FACTOR_PASSKEY)
            methods = await mfa.methods(db, user, mfa.FIRST_FACTOR_PASSKEY)
            audit.record(
                db,
                "login_mfa_required",
                client=client,
                now=now,
                user_id=user.id,
                passkey_id=passkey_id,
            )
        else:
            method = mfa.METHOD_WEBAUTHN if assertion.user_verified else None
            pair = await open_session(
                core, db, user, client, opener, now, mfa_method=method, passkey_id=passkey_id
            )
    return await settle(core, limits, client, refusal, (mfa_token, methods), pair)


# --- the passkey as the second factor --------------------------------------------------------


async def can_complete(core: Core, mfa_token: str) -> bool:
    """Whether a passkey can finish the open sign-in ``mfa_token``: one opened by a password,
    of an account with a passkey (for the page to offer it)."""
    async with core.sessionmaker() as db:
        challenge = await mfa.find_challenge(db, mfa_token, core.clock())
        user = await db.get(User, challenge.user_id) if challenge is not None else None
        if challenge is None or user is None:
            return False
        found = await mfa.methods(db, user, challenge.first_factor, passkeys=core.features.passkeys)
        return mfa.METHOD_WEBAUTHN in found


async def _second_factor(
    core: Core,
    limits: RateLimits,
    rp: rp_.RelyingParty,
    flow_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
    mfa_token: str,
    opener: Opener[SessionT],
) -> SessionT:
    challenge, user = await mfa_challenge(core, mfa_token)
    if challenge.first_factor != mfa.FIRST_FACTOR_PASSWORD:
        raise InvalidMFAToken  # opened by a passkey: the same device is no second factor
    async with attempt(core, limits, user, client) as key:
        refusal = account_refusal(core, user)
        if refusal is not None:
            raise refusal
        async with core.sessionmaker.begin() as db:
            reserved = await mfa.reserve_attempt(db, challenge.id, core.clock())
        if not reserved:
            raise InvalidMFAToken
        proof = await _identify(core, flow_id, credential)
        if proof is None or proof.user.id != user.id:
            reason = _UNKNOWN_FLOW_OR_CREDENTIAL if proof is None else "another account's passkey"
            await fail(core, limits, key, client, user.id, InvalidPasskey(), _FAILED, reason)
        assertion = await _verify(core, limits, key, client, rp, proof, credential)
        return await _complete(core, key, client, challenge, proof, assertion, opener)


async def _complete(
    core: Core,
    key: str,
    client: ClientInfo,
    challenge: MFAChallenge,
    proof: _Proof,
    assertion: rp_.Assertion,
    opener: Opener[SessionT],
) -> SessionT:
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        await _record_use(db, proof.passkey, assertion, now)
        if not await mfa.spend_challenge(db, challenge.id, now):
            raise InvalidMFAToken  # a concurrent request finished (or killed) it first
        retry = await lockout.admit_success(db, key, now)
        if retry is not None:
            raise TooManyRequests(retry)
        return await open_session(
            core,
            db,
            proof.user,
            client,
            opener,
            now,
            mfa_method=mfa.METHOD_WEBAUTHN,
            passkey_id=proof.passkey.id,
        )
