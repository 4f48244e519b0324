"""Self-service accounts: registration, email verification, password recovery and changes.

Functions here own their transactions and return the emails to send as ``Mail`` values; the
caller sends them once the transaction has committed (the HTTP layer: after the response), so a
mail server that is slow or down never holds a transaction open or fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from authdb.db.models import EmailToken, User
from authdb.errors import (
    Conflict,
    IncorrectPassword,
    InvalidEmailToken,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    RegistrationClosed,
    StillReferenced,
)
from authdb.names import email_key
from authdb.ratelimit import RateLimits, client_key
from authdb.services import audit, email_tokens, lockout, oauth_accounts, sessions
from authdb.services.admin import LAST_SUPERUSER_SELF, remove_user
from authdb.services.core import ClientInfo, Core
from authdb.services.email_tokens import RESET, VERIFY, Mail
from authdb.services.guard import confirm_password
from authdb.services.profile import check_profile_change, clean_profile, merge_profile
from authdb.services.provisioning import clean_email, new_user_row, prepare_user
from authdb.services.sessions import Authenticated
from authdb.services.users import (
    cancel_pending_email,
    check_password,
    clean_full_name,
    clean_username,
    flush_unique,
    set_identity,
    set_password_hash,
)

# --- registration -------------------------------------------------------------------------------

log = logging.getLogger("authdb.accounts")


async def register(
    core: Core,
    limits: RateLimits,
    *,
    username: str,
    email: str,
    password: str,
    full_name: str | None,
    client: ClientInfo,
    profile: Mapping[str, Any] | BaseModel | None = None,
) -> tuple[User, Mail]:
    """Create an unverified account and the verification email for it.

    ``profile``: the application's fields (``authdb.services.profile``), validated whole;
    None stores none. Conflict (409) on a taken username or email: the database's unique
    constraints decide, so of many racing registrations of one name exactly one succeeds.
    """
    if not core.settings.registration_enabled:
        raise RegistrationClosed
    await limits.hit("register", client_key(client, core.settings))
    cleaned_profile = clean_profile(core, profile)  # before the hash: argon2 is the slow part
    new = await prepare_user(
        core.hasher,
        validators=core.password_validators,
        username=username,
        email=email,
        password=password,
        full_name=full_name,
    )
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        # prepare_user's defaults: unverified, no superuser, enabled.
        user = new_user_row(replace(new, profile=cleaned_profile), now)
        db.add(user)
        await flush_unique(db, user)
        token = await email_tokens.issue(core, db, user, VERIFY, now)
        audit.record(db, "registered", client=client, now=now, user_id=user.id)
    return user, email_tokens.link_mail(core, user, VERIFY, token)


# --- verification -------------------------------------------------------------------------------


async def spend_email_budgets(
    core: Core, limits: RateLimits, client: ClientInfo, *emails: str
) -> None:
    """Spend the budgets of a mail request: per client address, then per email address.

    Call it before ``request_verification``, ``request_password_reset`` or an email change. It
    does not look at the accounts, so a known and an unknown address are limited alike.
    """
    await limits.hit("email_address", client_key(client, core.settings))
    for email in emails:
        await limits.hit("email", email_key(email))


async def request_verification(core: Core, email: str, client: ClientInfo) -> Mail | None:
    """A new verification email for an unverified account with this address, if there is one.

    The result is for the mailer only: the caller must answer alike in every case (the HTTP
    layer runs this after its response, so not even the time it takes shows).
    """
    key = email_key(email)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        user = await db.scalar(select(User).where(User.email_key == key))
        if user is None or user.is_verified or user.disabled or not user.email:
            return None
        token = await email_tokens.issue(core, db, user, VERIFY, now)
        audit.record(db, "verification_requested", client=client, now=now, user_id=user.id)
    return email_tokens.link_mail(core, user, VERIFY, token)


async def verify_email(
    core: Core, token: str, client: ClientInfo, *, signed_in_as: int | None = None
) -> User:
    """Spend a verification token and mark its account verified; InvalidEmailToken otherwise.

    ``signed_in_as``: the user whose session followed the link, if any (a page in a signed-in
    browser): it decides what becomes of links to providers that had not verified the address
    (``oauth_accounts.settle_unconfirmed``).
    """
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        user, address = await email_tokens.consume(db, VERIFY, token, now)
        if user.disabled:
            raise InvalidEmailToken  # a disabled account's links do nothing
        if email_key(address) != user.email_key:
            await _adopt_pending_email(db, user, address, client, now)
        await oauth_accounts.settle_unconfirmed(db, user, client, now, keep=signed_in_as == user.id)
        user.is_verified = True
        user.updated_at = now
        audit.record(db, "email_verified", client=client, now=now, user_id=user.id)
    return user


async def _adopt_pending_email(
    db: AsyncSession, user: User, address: str, client: ClientInfo, now: datetime
) -> None:
    """The link mailed to a requested new address was followed: it becomes the account's."""
    old = user.email
    set_identity(user, email=address)
    user.pending_email = None
    # Conflict (409) if another account took the address meanwhile: the unique key decides.
    await flush_unique(db, user)
    # Links mailed to the old address must not act on the account any more.
    await db.execute(delete(EmailToken).where(EmailToken.user_id == user.id))
    audit.record(
        db, "email_changed", client=client, now=now, user_id=user.id, had_email=old is not None
    )


# --- password recovery --------------------------------------------------------------------------


async def request_password_reset(core: Core, email: str, client: ClientInfo) -> Mail | None:
    """A reset email for the account with this address, if there is one; earlier links die.

    As with ``request_verification``, nothing observable may depend on the result.
    """
    key = email_key(email)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        user = await db.scalar(select(User).where(User.email_key == key))
        if user is None or user.disabled or not user.email:
            return None
        token = await email_tokens.issue(core, db, user, RESET, now)
        audit.record(db, "password_reset_requested", client=client, now=now, user_id=user.id)
    return email_tokens.link_mail(core, user, RESET, token)


async def reset_password(core: Core, token: str, password: str, client: ClientInfo) -> None:
    """Set a new password with a reset token; every session of the account ends."""
    now = core.clock()
    # Look first, spend later: a password refused by the policy (422) must leave the token
    # usable, and the policy needs the account's username and email.
    async with core.sessionmaker() as db:
        found = (
            await db.execute(
                select(User, EmailToken.email)
                .join(EmailToken)
                .where(*email_tokens.usable(RESET, token, now))
            )
        ).one_or_none()
    if found is None or not email_tokens.bound(found[0], found[1], RESET):
        raise InvalidEmailToken
    check_password(
        password,
        username=found[0].username,
        email=found[0].email,
        validators=core.password_validators,
    )
    hashed = await core.hasher.hash(password)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        # The atomic spend decides between racing resets with one token.
        user, _ = await email_tokens.consume(db, RESET, token, now)
        await set_password_hash(db, user, hashed, now)
        await sessions.revoke_all(db, user.id, now)
        await oauth_accounts.settle_unconfirmed(db, user, client, now, keep=False)
        # Proving control of the mailbox is as good as a correct password: lift a lockout.
        # Not with MFA on, where the count also holds wrong codes, which a mailbox does not
        # excuse (only a right second factor clears it).
        if not user.mfa_enabled:
            await _forget_failures(db, user)
        audit.record(db, "password_reset", client=client, now=now, user_id=user.id)


# --- changes by the signed-in user --------------------------------------------------------------


async def update_account(
    core: Core,
    limits: RateLimits,
    user: User,
    changes: Mapping[str, Any],
    client: ClientInfo,
) -> tuple[User, list[Mail]]:
    """Apply ``username`` / ``email`` / ``full_name`` / ``profile`` changes (only the keys given).

    A new email address needs ``current_password`` in ``changes`` (a stolen access token must
    not be enough to take the account over through a password reset), spends the mail budgets,
    and takes effect only once the link mailed to it is followed; until then it is
    ``pending_email``, and the old address is told of the request. ``profile`` is merged into
    the stored one key by key and the result validated whole (``merge_profile``); InvalidInput
    naming the profile field otherwise.
    """
    unknown = set(changes) - {"username", "email", "full_name", "current_password", "profile"}
    if unknown:
        raise InvalidInput(f"Unknown field: {sorted(unknown)[0]}", field=sorted(unknown)[0])
    if "profile" in changes:
        # Early, before any password check or budget: what can be refused from the input alone.
        check_profile_change(core, changes["profile"])
    username = email = None
    if "username" in changes:
        username = clean_username(_required(changes["username"], "username"))
    full_name = clean_full_name(changes.get("full_name"))
    cancel = False
    if "email" in changes:
        email = clean_email(_required(changes["email"], "email"))
        if email_key(email) == user.email_key:
            # The account's own address: nothing to confirm, and a pending change is withdrawn.
            email, cancel = None, user.pending_email is not None
    if email is not None:
        password = changes.get("current_password")
        if not password:
            raise IncorrectPassword
        await confirm_password(core, limits, user, password, client)
        await spend_email_budgets(core, limits, client, *filter(None, (user.email, email)))
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await db.get(User, user.id)
        if row is None:
            raise NotAuthenticated
        # Queries first, while nothing is pending: a later one would autoflush a taken
        # username as a bare IntegrityError instead of flush_unique's 409.
        changed: list[str] = []
        if email is not None:
            await _check_email_free(db, row, email)
        if email is not None or (cancel and row.pending_email is not None):
            await cancel_pending_email(db, row)  # links sent for an earlier request die
            row.pending_email = email
            changed.append("pending_email")
        changed += _apply_profile(row, username, changes, full_name)
        if "profile" in changes:
            merged = merge_profile(core, row.profile, changes["profile"])
            if merged != row.profile:
                row.profile = merged
                changed.append("profile")  # the name only: the values may be personal data
        await flush_unique(db, row)
        mails = await _email_change_mails(core, db, row, email, now) if email else []
        if changed:
            row.updated_at = now
            audit.record(
                db, "account_updated", client=client, now=now, user_id=row.id, fields=changed
            )
    return row, mails


def _apply_profile(
    user: User, username: str | None, changes: Mapping[str, str | None], full_name: str | None
) -> list[str]:
    """Set a new username and full name; returns the names of the fields that changed."""
    changed = []
    if username is not None and username != user.username:
        set_identity(user, username=username)
        changed.append("username")
    if "full_name" in changes and full_name != user.full_name:
        user.full_name = full_name
        changed.append("full_name")
    return changed


async def _check_email_free(db: AsyncSession, user: User, email: str) -> None:
    """409 when another account has the address (asked only after the password and budgets)."""
    taken = await db.scalar(
        select(User.id).where(User.email_key == email_key(email), User.id != user.id).limit(1)
    )
    if taken is not None:
        raise Conflict("Email already registered")


async def _email_change_mails(
    core: Core, db: AsyncSession, user: User, email: str, now: datetime
) -> list[Mail]:
    """A confirmation link to the new address and a notice to the old one."""
    token = await email_tokens.issue(core, db, user, VERIFY, now, email=email)
    mails = [email_tokens.link_mail(core, user, VERIFY, token, to=email)]
    if user.email:
        context = {"username": user.username, "new_email": email}
        mails.append(Mail(to=user.email, template="email_changed", context=context))
    return mails


async def change_password(
    core: Core,
    limits: RateLimits,
    auth: Authenticated,
    current_password: str,
    new_password: str,
    client: ClientInfo,
) -> None:
    """Replace the password after checking the current one; other sessions end, this one stays."""
    user = auth.user
    await confirm_password(core, limits, user, current_password, client)
    check_password(
        new_password,
        username=user.username,
        email=user.email,
        validators=core.password_validators,
        field="new_password",
    )
    hashed = await core.hasher.hash(new_password)
    now = core.clock()
    async with core.sessionmaker.begin() as db:
        row = await db.get(User, user.id)
        if row is None:
            raise NotAuthenticated
        await set_password_hash(db, row, hashed, now)  # also kills outstanding reset tokens
        await sessions.revoke_all(db, row.id, now, keep=auth.session_id)
        audit.record(
            db,
            "password_changed",
            client=client,
            now=now,
            user_id=row.id,
            session_id=auth.session_id,
        )


# What the account holder reads when the application's data still needs their account.
ACCOUNT_STILL_IN_USE = (
    "This account still owns data in this application and cannot be deleted yet; "
    "contact the site's administrator"
)


async def delete_account(
    core: Core, limits: RateLimits, user: User, password: str, client: ClientInfo
) -> None:
    """Delete the account after checking its password; sessions and tokens go with it
    (the one deletion path: ``authdb.services.admin.remove_user``).

    Raises IncorrectPassword (400); Conflict (409) for the last active superuser, who would
    leave nobody to administer, or when the application's rows still reference the account
    without ON DELETE CASCADE (the detail names their table; nothing is deleted).
    """
    await confirm_password(core, limits, user, password, client)
    try:
        await remove_user(
            core,
            user.id,
            event="account_deleted",
            client=client,
            last_superuser=LAST_SUPERUSER_SELF,
        )
    except NotFound:
        raise NotAuthenticated from None  # deleted meanwhile: as if its token were stale
    except StillReferenced as exc:
        # The table names are the developer's business, not the account holder's.
        log.warning("account %s not deleted: %s", user.id, exc.detail)
        raise Conflict(ACCOUNT_STILL_IN_USE) from None


# --- helpers ------------------------------------------------------------------------------------


async def _forget_failures(db: AsyncSession, user: User) -> None:
    """Drop the account's run of failed logins, and with it any lockout."""
    await lockout.forgive(db, lockout.lock_key(user, ""))


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise InvalidInput(f"{name.capitalize()} cannot be removed")
    return value
