"""Database tables. ``users`` is a superset of the FastAPI tutorial's table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    and_,
    false,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# Ids are 64-bit everywhere: BIGINT on PostgreSQL; on SQLite an INTEGER PRIMARY KEY already is,
# and must stay spelled INTEGER to remain the rowid (which AUTOINCREMENT needs).
Id = BigInteger().with_variant(Integer(), "sqlite")
# The largest id any table can hand out; a larger number names nothing.
MAX_ID = 2**63 - 1

# JSONB on PostgreSQL: it has an equality operator (DISTINCT over users works) and can be
# indexed. SQL NULL, not JSON null, for "no profile", so that ``IS NULL`` means what it says.
PROFILE_JSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# SQLite reuses the highest deleted rowid unless AUTOINCREMENT is asked for; a reused user or
# session id would let a deleted account's unexpired token speak for the next account.
_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class User(Base):
    __tablename__ = "users"
    # Unique indexes (not constraints), named as migration 0001 creates them, so that the
    # models and a migrated database agree (an app's autogenerate then proposes nothing here).
    __table_args__ = (
        Index("uq_users_username_key", "username_key", unique=True),
        Index("uq_users_email_key", "email_key", unique=True),
        _NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    # Case-folded copies carry the unique indexes, so the database itself refuses
    # "Alice" next to "alice" on every backend (SQLite's lower() is ASCII-only).
    username_key: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320))
    email_key: Mapped[str | None] = mapped_column(String(320))
    # An address the user asked to change to; it replaces ``email`` once its link is followed.
    pending_email: Mapped[str | None] = mapped_column(String(320))
    full_name: Mapped[str | None] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    hashed_password: Mapped[str] = mapped_column(String(255))
    is_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # True once a TOTP authenticator is confirmed (a row of ``mfa_totp`` with confirmed_at);
    # kept on the user so that every lookup of a user knows it without a join.
    mfa_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The application's own fields (``Auth(profile=Model)``), as the model dumped them to
    # JSON; None for an account that never had any (see authdb.services.profile).
    profile: Mapped[dict[str, Any] | None] = mapped_column(PROFILE_JSON)

    # What a client may see of a user (the API's ``User``), never the hash or the keys.
    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = (
        "id",
        "username",
        "email",
        "pending_email",
        "full_name",
        "disabled",
        "is_verified",
        "is_superuser",
        "mfa_enabled",
        "created_at",
        "last_login_at",
        "profile",
    )

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """``dict(user)``: the public fields only. FastAPI encodes a returned object with
        ``dict(obj)``, so an application route that returns the user itself, without a
        ``response_model``, sends these and never ``hashed_password``."""
        for name in self.PUBLIC_FIELDS:
            yield name, getattr(self, name)


class AuthSession(Base):
    """A login: the unit that refresh tokens rotate within and that revocation ends."""

    __tablename__ = "auth_sessions"
    __table_args__ = _NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    user_agent: Mapped[str | None] = mapped_column(String(512))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    # A browser session (signed in through a page) is carried by a cookie instead of a refresh
    # token: the SHA-256 of the cookie's secret, never the secret. NULL for API sessions.
    cookie_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)

    @classmethod
    def live_at(cls, now: Any) -> ColumnElement[bool]:
        """SQL for "not revoked and not expired at ``now``": the one definition of live."""
        return and_(cls.revoked_at.is_(None), cls.expires_at > now)


class RefreshToken(Base):
    """Every refresh token a session has had; spent ones stay to detect reuse."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    session_id: Mapped[int] = mapped_column(
        Id, ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    spent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The refresh token that replaced this one, encrypted with a key derived from this one
    # (see services.sessions): lets a second tab presenting it within the reuse interval get
    # the same successor, while a database reader without this token learns nothing.
    successor: Mapped[bytes | None] = mapped_column(LargeBinary)


class EmailToken(Base):
    """Single-use verification and reset tokens, stored as hashes only."""

    __tablename__ = "email_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A verification token is for the address it was mailed to, not whatever the email is later.
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginFailure(Base):
    """Consecutive failed logins per account (or per unknown login name), for lockout."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """A security event. Never holds a password or a token."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    # No foreign key: the trail must outlive the account it speaks of.
    user_id: Mapped[int | None] = mapped_column(Id, index=True)
    actor_id: Mapped[int | None] = mapped_column(Id)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    detail: Mapped[dict[str, object] | None] = mapped_column(JSON)
    # The hash chain (authdb.services.audit_chain): the row's place in the chain (1, 2, ...,
    # given out under the chain lock at commit), the hash of the row before it (64 zeros for
    # the first) and the SHA-256 of this row's fields and ``prev_hash``, all hex.
    chain_seq: Mapped[int] = mapped_column(BigInteger, index=True, unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class TOTPSecret(Base):
    """A user's RFC 6238 authenticator: pending until confirmed with a code, then in force.

    The secret is sealed (AES-GCM, see ``authdb.sealing``) and bound to the user's id, so a
    database reader learns nothing and cannot move it to another account.
    """

    __tablename__ = "mfa_totp"

    user_id: Mapped[int] = mapped_column(
        Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The last time step whose code was accepted: a code of that step or earlier is a replay.
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)


class RecoveryCode(Base):
    """A single-use MFA recovery code, stored as its SHA-256 only."""

    __tablename__ = "mfa_recovery_codes"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MFAChallenge(Base):
    """A password accepted for an account with MFA: the ``mfa_token`` that the second factor
    completes. Stored as a hash; single use; dies after a few wrong codes or minutes."""

    __tablename__ = "mfa_challenges"
    __table_args__ = _NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What proved the first factor: "password", or "passkey" (one without user verification),
    # which a passkey then cannot complete: the same authenticator is not a second factor.
    first_factor: Mapped[str] = mapped_column(
        String(16), default="password", server_default="password"
    )


class Passkey(Base):
    """A WebAuthn public-key credential (a passkey) registered to a user.

    Discoverable: the authenticator keeps ``user_handle`` and returns it at sign-in. The
    handle is random (WebAuthn Level 3, section 14.6.1: no personal data) and shared by all of
    a user's passkeys. ``sign_count`` is the authenticator's counter at its last use.
    """

    __tablename__ = "passkeys"
    __table_args__ = _NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(1023), unique=True)
    user_handle: Mapped[bytes] = mapped_column(LargeBinary(64))
    # The COSE_Key from the attestation, as the authenticator gave it.
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    name: Mapped[str] = mapped_column(String(64))
    aaguid: Mapped[str | None] = mapped_column(String(36))
    backup_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OAuthIdentity(Base):
    """An account at another provider (``provider``'s name in AUTHDB_OAUTH_PROVIDERS) linked
    to a user: its stable ``subject`` signs that user in (OIDC's ``sub``, GitHub's numeric id).

    One per provider and subject, and one per user and provider. No provider token is kept.
    """

    __tablename__ = "oauth_identities"
    __table_args__ = (
        Index("uq_oauth_identities_subject", "provider", "subject", unique=True),
        Index("uq_oauth_identities_user", "user_id", "provider", unique=True),
        _NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    # The address the provider gave when linked or last used, shown on /account.
    email: Mapped[str | None] = mapped_column(String(320))
    # False for the link of an account made from an address the provider did not verify:
    # whoever proves they own the address (a verification or reset link) drops it, else the
    # identity's owner would keep a way into a mailbox owner's account (pre-hijacking).
    confirmed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PasskeyChallenge(Base):
    """A spent WebAuthn challenge (its SHA-256), kept until it expires so it works only once.

    Challenges are sealed by the server (see ``authdb.relying_party``), so nothing is stored
    when one is handed out: asking for options writes nothing.
    """

    __tablename__ = "passkey_challenges"

    challenge_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SigningKey(Base):
    """A key pair that signs access tokens (RS256, ES256 or EdDSA); see authdb.signing.

    A new key is first published (in the JWKS, ``activated_at`` None) as the next key, so
    that verifiers know it before any token carries it; ``activated_at`` makes it the current
    key. When the next one replaces it, ``rotated_at`` is set and the private key is erased:
    its tokens still verify (by ``public_jwk``) until they expire. ``retired_at`` ends a key
    at once.
    """

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # Unique, so that of two processes rotating at once only one key becomes current.
    generation: Mapped[int] = mapped_column(BigInteger, unique=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    # PKCS#8, sealed under the deployment secret and bound to the kid; None once rotated out.
    sealed_private_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Meta(Base):
    """Small key/value store, e.g. the generated signing key."""

    __tablename__ = "authdb_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AuthChange(Base):
    """A user whose account or sessions changed, for other processes' session caches.

    Written only by migration 0010's triggers, and only on SQLite (PostgreSQL's triggers send
    the id with NOTIFY instead, so there the table stays empty); see authdb.db.session_cache.
    """

    __tablename__ = "auth_changes"
    __table_args__ = _NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id)


# Keep this last. An application may declare its own models on ``Base`` (so that its foreign
# keys can name "users.id"); these are authdb's tables, taken before any of the app's join.
AUTHDB_TABLES: frozenset[str] = frozenset(Base.metadata.tables)
