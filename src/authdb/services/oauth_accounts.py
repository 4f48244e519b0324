"""Accounts and the identities other providers vouch for (SPEC, "Sign in with another
provider"): signing in with one, making an account from one, linking and unlinking.

An identity is keyed by its provider's stable subject, never by its email: an address can be
changed or reassigned at a provider, a subject cannot. So an identity whose email belongs to
an account signs in to it only once linked from that account (or, with
``AUTHDB_OAUTH_LINK_VERIFIED_EMAIL``, when the provider and authdb have both verified the
address: else whoever registered the address first, unverified, would get the account).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Generic

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import OAuthIdentity, Passkey, User
from authdb.errors import (
    Conflict,
    EmailNotVerified,
    InvalidInput,
    LastSignInMethod,
    NotFound,
    OAuthAccountExists,
    OAuthEmailMissing,
    OAuthIdentityTaken,
    RegistrationClosed,
)
from authdb.names import USERNAME_MAX, email_key, username_key, username_problem
from authdb.oauth.identity import Identity
from authdb.passwords import is_usable, unusable_password
from authdb.ratelimit import RateLimits, client_key
from authdb.services import audit, email_tokens, lockout, mfa
from authdb.services.core import ClientInfo, Core
from authdb.services.email_tokens import VERIFY, Mail
from authdb.services.login import (
    Opener,
    SessionT,
    account_refusal,
    audit_refusal,
    open_session,
    refusal_or_lock,
    settle,
)
from authdb.services.provisioning import NewUser, clean_email, new_user_row
from authdb.services.users import clean_full_name, flush_unique

_NOT_NAME_CHARS = re.compile(r"[^\w.\-]+")
# Tries at a free username before giving up (each adds random digits).
_NAME_TRIES = 8


class NewAccountUnverified(EmailNotVerified):
    """A new account whose address the provider did not verify, where sign-in needs a
    verified one: ``mail`` is its verification email, to send."""

    def __init__(self, mail: Mail) -> None:
        super().__init__()
        self.mail = mail


@dataclass(frozen=True, slots=True)
class SignedIn(Generic[SessionT]):
    """A sign-in through a provider: the session, and for an account it made from an address
    the provider did not vouch for, the ``mail`` that verifies it."""

    session: SessionT
    mail: Mail | None = None


@dataclass(frozen=True, slots=True)
class LinkedIdentity:
    """What ``/account`` shows of a linked provider."""

    provider: str
    email: str | None
    created_at: datetime
    last_used_at: datetime | None


async def sign_in(
    core: Core,
    limits: RateLimits,
    identity: Identity,
    client: ClientInfo,
    opener: Opener[SessionT],
) -> SignedIn[SessionT]:
    """Sign in the user linked to ``identity``, or make one for it.

    Raises OAuthAccountExists (409) when its email is an account's that it is not linked to;
    OAuthEmailMissing (400) for a new identity without an email; RegistrationClosed (403)
    for a new identity while registration is off; MFARequired (403) for an account with MFA
    on; InactiveUser, EmailNotVerified (NewAccountUnverified for a new one) (400);
    TooManyRequests (429) while the account is locked or registrations are over budget.
    """
    async with core.sessionmaker() as db:
        user = await _linked_user(db, identity)
        if user is None:
            user = await _auto_link_target(core, db, identity)
    if user is not None:
        return SignedIn(await _open(core, limits, user, identity, client, opener))
    return await _create(core, limits, identity, client, opener)


def _is(identity: Identity) -> tuple[ColumnElement[bool], ...]:
    """The ``oauth_identities`` row of ``identity`` (its provider and subject)."""
    return (
        OAuthIdentity.provider == identity.provider,
        OAuthIdentity.subject == identity.subject,
    )


async def _linked_user(db: AsyncSession, identity: Identity) -> User | None:
    owner = await db.scalar(select(OAuthIdentity.user_id).where(*_is(identity)))
    return None if owner is None else await db.get(User, owner)


async def _auto_link_target(core: Core, db: AsyncSession, identity: Identity) -> User | None:
    """The account an unlinked identity's email names: None if none; raises
    OAuthAccountExists unless the email may link it (see the module's docstring)."""
    if identity.email is None:
        return None
    user = await db.scalar(select(User).where(User.email_key == email_key(identity.email)))
    if user is None:
        return None
    if (
        core.settings.oauth_link_verified_email
        and identity.email_verified
        and user.is_verified
        and user.email is not None
        and same_address(identity.email, user.email)
    ):
        return user
    raise OAuthAccountExists


def same_address(given: str, stored: str) -> bool:
    """Whether two addresses are the same mailbox beyond doubt: equal ignoring ASCII case
    when both are ASCII, else equal exactly. Never by the Unicode fold that keeps usernames
    and emails unique (``straße.de`` and ``strasse.de`` are two domains; so are ``gma\u0131l.com``
    (a dotless i) and ``gmail.com``): a link by email must not follow a lookalike."""
    if given.isascii() and stored.isascii():
        return given.lower() == stored.lower()
    return unicodedata.normalize("NFC", given) == unicodedata.normalize("NFC", stored)


async def _open(
    core: Core,
    limits: RateLimits,
    user: User,
    identity: Identity,
    client: ClientInfo,
    opener: Opener[SessionT],
) -> SessionT:
    """The identity proved the first factor of ``user``: a session, unless a lock stands,
    the account is refused, or a second factor is due."""
    key = lockout.lock_key(user, "")
    pair: SessionT | None = None
    mfa_token: str | None = None
    methods: list[str] = []
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        retry = await lockout.locked_for(db, key, now)
        refusal = refusal_or_lock(core, user, retry)
        if refusal is not None:
            audit_refusal(db, refusal, client, now, user.id)
        else:
            # With MFA on, nothing is linked before the second factor: the link would outlive
            # a sign-in that never completes.
            await _remember(db, user, identity, client, now, link=not user.mfa_enabled)
            if user.mfa_enabled:
                mfa_token = await mfa.start_challenge(db, user.id, now)
                methods = await mfa.methods(db, user, passkeys=core.features.passkeys)
                audit.record(
                    db,
                    "login_mfa_required",
                    client=client,
                    now=now,
                    user_id=user.id,
                    provider=identity.provider,
                )
            else:
                pair = await open_session(
                    core, db, user, client, opener, now, provider=identity.provider
                )
    return await settle(core, limits, client, refusal, (mfa_token, methods), pair)


async def _remember(
    db: AsyncSession,
    user: User,
    identity: Identity,
    client: ClientInfo,
    now: datetime,
    *,
    link: bool,
) -> None:
    """Stamp the identity's use; an identity found by its email is linked here if ``link``."""
    result = await db.execute(
        update(OAuthIdentity)
        .where(*_is(identity))
        .values(last_used_at=now, email=_shown_email(identity), **_confirming(user, identity))
    )
    if result.rowcount or not link:  # type: ignore[attr-defined]
        return
    await _add_link(db, user, identity, now, client, by="verified_email")


async def _add_link(
    db: AsyncSession,
    user: User,
    identity: Identity,
    now: datetime,
    client: ClientInfo,
    *,
    by: str,
    confirmed: bool = True,
) -> None:
    """Insert the link, audited ``oauth_linked`` (``by``: "account", "verified_email", or
    "registration" for a new account's first); an identity already this user's changes
    nothing. OAuthIdentityTaken if the identity is another user's, Conflict if this user
    already has one of that provider. (Of two racing links the database's unique indexes let
    one win; the other's transaction fails whole.)"""
    owner = await db.scalar(select(OAuthIdentity.user_id).where(*_is(identity)))
    if owner == user.id:
        return
    if owner is not None:
        raise OAuthIdentityTaken
    other = await db.scalar(
        select(OAuthIdentity.id).where(
            OAuthIdentity.user_id == user.id, OAuthIdentity.provider == identity.provider
        )
    )
    if other is not None:
        raise Conflict("Another account of this provider is already linked: unlink it first.")
    db.add(
        OAuthIdentity(
            user_id=user.id,
            provider=identity.provider,
            subject=identity.subject,
            email=_shown_email(identity),
            confirmed=confirmed,
            created_at=now,
            last_used_at=now,
        )
    )
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("The link changed meanwhile: please try again.") from None
    if by != "registration":  # a new account's link is told by its "registered" event
        audit.record(
            db,
            "oauth_linked",
            client=client,
            now=now,
            user_id=user.id,
            provider=identity.provider,
            by=by,
        )


def _confirming(user: User, identity: Identity) -> dict[str, bool]:
    """``confirmed=True`` once the provider vouches for the account's own address (it did
    not when the account was made), else nothing to change."""
    email = identity.email
    if identity.email_verified and email and user.email and same_address(email, user.email):
        return {"confirmed": True}
    return {}


def _shown_email(identity: Identity) -> str | None:
    email = identity.email
    return email if email is not None and len(email) <= 320 else None


# --- a new account --------------------------------------------------------------------------


async def _create(
    core: Core,
    limits: RateLimits,
    identity: Identity,
    client: ClientInfo,
    opener: Opener[SessionT],
) -> SignedIn[SessionT]:
    if not (core.settings.registration_enabled and core.features.register):
        raise RegistrationClosed
    if identity.email is None:
        raise OAuthEmailMissing
    email = clean_email(identity.email)
    await limits.hit("register", client_key(client, core.settings))
    for attempt in range(_NAME_TRIES):
        try:
            return await _insert(core, identity, email, client, opener, attempt)
        except _NameTaken:
            continue
    raise Conflict("No free username could be made from the provider's; please register")


class _NameTaken(Exception):
    """The username chosen was taken meanwhile: try another."""


async def _insert(
    core: Core,
    identity: Identity,
    email: str,
    client: ClientInfo,
    opener: Opener[SessionT],
    attempt: int,
) -> SignedIn[SessionT]:
    verified = identity.email_verified
    mail: Mail | None = None
    pair: SessionT | None = None
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        username = await _free_username(db, identity, email, attempt)
        try:
            full_name = clean_full_name(identity.name)
        except InvalidInput:
            full_name = None
        new = NewUser(username, email, unusable_password(), full_name, is_verified=verified)
        user = new_user_row(new, now)
        db.add(user)
        try:
            await flush_unique(db, user)
        except Conflict as exc:
            if "Email" in exc.detail:
                raise OAuthAccountExists from None  # registered meanwhile
            raise _NameTaken from None
        await _add_link(db, user, identity, now, client, by="registration", confirmed=verified)
        audit.record(
            db, "registered", client=client, now=now, user_id=user.id, provider=identity.provider
        )
        if not verified:
            token = await email_tokens.issue(core, db, user, VERIFY, now)
            mail = email_tokens.link_mail(core, user, VERIFY, token)
        refusal = account_refusal(core, user)
        if refusal is None:
            pair = await open_session(
                core, db, user, client, opener, now, provider=identity.provider
            )
    if refusal is not None:
        if isinstance(refusal, EmailNotVerified) and mail is not None:
            raise NewAccountUnverified(mail)
        raise refusal
    assert pair is not None
    return SignedIn(pair, mail=mail)


async def _free_username(db: AsyncSession, identity: Identity, email: str, attempt: int) -> str:
    """A username derived from the provider's (its handle, else the email's local part),
    made valid and, if taken, unique with digits."""
    stem = _username_stem(identity.username) or _username_stem(email.split("@", 1)[0]) or "user"
    for tries in range(attempt, attempt + 20):
        candidate = stem if tries == 0 else _suffixed(stem, _digits(tries))
        taken = await db.scalar(
            select(func.count())
            .select_from(User)
            .where(User.username_key == username_key(candidate))
        )
        if not taken:
            return candidate
    return _suffixed(stem, secrets.token_hex(6))


def _suffixed(stem: str, suffix: str) -> str:
    """``stem-suffix``, the stem cut until the whole is a valid name (its case-folded key,
    which can be longer than the name, within the limit too)."""
    for end in range(min(len(stem), USERNAME_MAX - len(suffix) - 1), 0, -1):
        candidate = f"{stem[:end]}-{suffix}"
        if username_problem(candidate) is None:
            return candidate
    return f"user-{suffix}"


def _digits(tries: int) -> str:
    # Short and readable first (alice-2), random once guessing failed a few times.
    return str(tries + 1) if tries < 5 else str(secrets.randbelow(900_000) + 100_000)


def _username_stem(raw: str | None) -> str | None:
    """``raw`` as a valid username (letters, digits, . _ -; 3 to 64), or None."""
    if not raw:
        return None
    text = _NOT_NAME_CHARS.sub("-", unicodedata.normalize("NFKC", raw)).strip(".-_")
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN" or ch in "._-")
    text = text[:USERNAME_MAX]
    if len(text) < 3:
        return None
    return text if username_problem(text) is None else None


# --- linking from the account ----------------------------------------------------------------


async def link(core: Core, user_id: int, identity: Identity, client: ClientInfo) -> None:
    """Link ``identity`` to the signed-in user ``user_id``.

    Linking an identity already this user's changes nothing. Raises OAuthIdentityTaken (409)
    when it is another user's; Conflict (409) when the user has another of that provider;
    NotFound when the user is gone.
    """
    async with core.sessionmaker.begin() as db:
        now = core.clock()
        user = await db.get(User, user_id)
        if user is None:
            raise NotFound("User not found")
        await _add_link(db, user, identity, now, client, by="account")


async def unlink(core: Core, user_id: int, provider: str, client: ClientInfo) -> None:
    """Remove the user's link to ``provider``.

    Raises NotFound (404) when there is none; LastSignInMethod (409) when it is the only way
    left to sign in (no usable password, no passkey, no other provider).
    """
    async with core.sessionmaker.begin() as db:
        user = await db.get(User, user_id, with_for_update=True)
        if user is None:
            raise NotFound("User not found")
        links = list(
            await db.scalars(select(OAuthIdentity).where(OAuthIdentity.user_id == user.id))
        )
        target = next((row for row in links if row.provider == provider), None)
        if target is None:
            raise NotFound("This provider is not linked to your account")
        passkeys = await db.scalar(
            select(func.count()).select_from(Passkey).where(Passkey.user_id == user.id)
        )
        if not is_usable(user.hashed_password) and len(links) == 1 and not passkeys:
            raise LastSignInMethod
        await db.execute(delete(OAuthIdentity).where(OAuthIdentity.id == target.id))
        audit.record(
            db,
            "oauth_unlinked",
            client=client,
            now=core.clock(),
            user_id=user.id,
            provider=provider,
        )


async def linked(core: Core, user_id: int) -> list[LinkedIdentity]:
    """The user's linked providers, oldest link first."""
    async with core.sessionmaker() as db:
        rows = await db.scalars(
            select(OAuthIdentity)
            .where(OAuthIdentity.user_id == user_id)
            .order_by(OAuthIdentity.created_at, OAuthIdentity.id)
        )
        return [
            LinkedIdentity(row.provider, row.email, row.created_at, row.last_used_at)
            for row in rows
        ]


async def settle_unconfirmed(
    db: AsyncSession, user: User, client: ClientInfo, now: datetime, *, keep: bool
) -> None:
    """Someone proved they own the account's address (a verification or reset link): its
    unconfirmed links (made from an address the provider did not verify) are confirmed when
    ``keep`` (the link was followed in a browser signed in to this account, which only such a
    link can open), else removed and audited ``oauth_unlinked`` (``by: email_proven``)."""
    unconfirmed = OAuthIdentity.user_id == user.id, OAuthIdentity.confirmed.is_(False)
    if keep:
        await db.execute(update(OAuthIdentity).where(*unconfirmed).values(confirmed=True))
        return
    dropped = list(await db.scalars(select(OAuthIdentity.provider).where(*unconfirmed)))
    if not dropped:
        return
    await db.execute(delete(OAuthIdentity).where(*unconfirmed))
    for provider in dropped:
        audit.record(
            db,
            "oauth_unlinked",
            client=client,
            now=now,
            user_id=user.id,
            provider=provider,
            by="email_proven",
        )
