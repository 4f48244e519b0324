"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field

from authdb.names import control_character


def _no_control_characters(value: object) -> object:
    """Refuse NUL, other C0/C1 controls, bidi overrides and lone surrogates in any text.

    PostgreSQL cannot store NUL, terminals and logs obey escapes, and bidi overrides make one
    name display as another; the same rule holds on every backend and in every field.
    """
    if isinstance(value, str):
        char = control_character(value)
        if char is not None:
            raise ValueError(f"must not contain control characters (found U+{ord(char):04X})")
    return value


# Every text field of every request body is one of these.
Text = Annotated[str, AfterValidator(_no_control_characters)]
Email = Annotated[EmailStr, BeforeValidator(_no_control_characters)]


class UserRead(BaseModel):
    """A user as clients see it: never a hash or a token."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str | None
    # A requested new address, not yet confirmed through the link mailed to it.
    pending_email: str | None = None
    full_name: str | None
    disabled: bool
    is_verified: bool
    is_superuser: bool
    # A second factor (TOTP) is required at sign-in.
    mfa_enabled: bool = False
    created_at: datetime
    last_login_at: datetime | None = None


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


class SessionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    current: bool = False


class LogoutRequest(BaseModel):
    refresh_token: Text | None = Field(None, max_length=512)


class UserCreate(BaseModel):
    username: Text = Field(max_length=256)
    email: Email
    password: Text = Field(max_length=4096)
    full_name: Text | None = Field(None, max_length=256)


class UserUpdate(BaseModel):
    """Changes to one's own account; a new ``email`` needs ``current_password`` too."""

    model_config = ConfigDict(extra="forbid")

    username: Text | None = Field(None, max_length=256)
    email: Email | None = None
    full_name: Text | None = Field(None, max_length=256)
    current_password: Text | None = Field(None, max_length=4096)


class EmailRequest(BaseModel):
    email: Email


class TokenRequest(BaseModel):
    token: Text = Field(min_length=1, max_length=512)


class PasswordReset(BaseModel):
    token: Text = Field(min_length=1, max_length=512)
    password: Text = Field(max_length=4096)


class PasswordChange(BaseModel):
    current_password: Text = Field(max_length=4096)
    new_password: Text = Field(max_length=4096)


class PasswordConfirm(BaseModel):
    password: Text = Field(max_length=4096)


class AdminUserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Text | None = Field(None, max_length=256)
    email: Email | None = None
    full_name: Text | None = Field(None, max_length=256)
    password: Text | None = Field(None, max_length=4096)
    disabled: bool | None = None
    is_verified: bool | None = None
    is_superuser: bool | None = None


class UserPage(BaseModel):
    items: list[UserRead]
    total: int


class MFACode(BaseModel):
    """A code from the authenticator app (6 digits; spaces allowed)."""

    code: Text = Field(min_length=1, max_length=64)


class MFADisable(BaseModel):
    """The password, and a current TOTP code or an unused recovery code."""

    password: Text = Field(max_length=4096)
    code: Text = Field(min_length=1, max_length=64)


class TOTPSetupRead(BaseModel):
    """A pending authenticator, shown this once: scan ``qr_svg`` or type ``secret``."""

    secret: str
    otpauth_uri: str
    qr_svg: str


class RecoveryCodes(BaseModel):
    """Single-use codes that stand in for the authenticator; shown this once."""

    recovery_codes: list[str]


class JWKSet(BaseModel):
    """RFC 7517 section 5: the public keys whose tokens can still be valid."""

    keys: list[dict[str, str]]


class AuthorizationServerMetadata(BaseModel):
    """RFC 8414 section 2: where the endpoints are and what they accept."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    response_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]


# --- passkeys (WebAuthn Level 3 JSON encodings; see authdb.relying_party) -------------------


class PasskeyRead(BaseModel):
    """A registered passkey as its owner sees it: never the key or the credential id."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


class PasskeyOptionsRequest(BaseModel):
    """Optional: the password, needed when the session signed in more than 10 minutes ago."""

    password: Text | None = Field(None, max_length=4096)


class PasskeyCreate(BaseModel):
    """``credential``: what ``navigator.credentials.create()`` gave, as RegistrationResponseJSON
    (``credential.toJSON()``); ``name``: how the list shows it (default: the device)."""

    credential: dict[str, Any]
    name: Text | None = Field(None, max_length=256)


class PasskeyDelete(BaseModel):
    password: Text = Field(max_length=4096)


class PasskeyLoginStart(BaseModel):
    """Optional: the account that must sign in (the options are the same either way)."""

    username: Text | None = Field(None, min_length=1, max_length=256)


class PasskeyLoginOptions(BaseModel):
    """``options`` go to ``navigator.credentials.get()``; ``flow_id`` comes back with the
    answer to ``POST /passkeys/login``."""

    flow_id: str
    options: dict[str, Any]


class PasskeyLogin(BaseModel):
    """``credential``: what ``navigator.credentials.get()`` gave, as AuthenticationResponseJSON;
    ``mfa_token``: from a password sign-in's 403, when the passkey is the second factor."""

    flow_id: Text = Field(max_length=4096)
    credential: dict[str, Any]
    mfa_token: Text | None = Field(None, max_length=1024)
