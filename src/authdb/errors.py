"""The domain's exceptions. ``authdb.http.errors`` turns them into HTTP responses in one place."""

from __future__ import annotations


class AuthError(Exception):
    """Base of every error authdb raises on purpose; ``detail`` is safe to show a client."""

    detail: str = "Bad request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.detail)
        if detail is not None:
            self.detail = detail


class InvalidCredentials(AuthError):
    detail = "Incorrect username or password"


class NotAuthenticated(AuthError):
    detail = "Could not validate credentials"


class InvalidRefreshToken(AuthError):
    detail = "Invalid refresh token"


class MFARequired(AuthError):
    """The password was right but the account has a second factor: finish with ``mfa_token``.

    ``methods`` lists what completes it (``"totp"``, ``"recovery_code"``).
    """

    detail = "MFA required"

    def __init__(self, mfa_token: str, methods: list[str]) -> None:
        super().__init__()
        self.mfa_token = mfa_token
        self.methods = methods


class InvalidMFAToken(InvalidCredentials):
    """An ``mfa_token`` that is unknown, used, expired or has seen too many wrong codes."""

    detail = "Invalid or expired MFA token"


class MFALoginFailed(InvalidCredentials):
    """A wrong second factor at sign-in (401, and a failed login for the lockout)."""

    detail = "Invalid MFA code"


class InvalidPasskey(InvalidCredentials):
    """A passkey sign-in that fails, whatever the reason (401, and a failed login)."""

    detail = "Invalid passkey"


class InvalidPasskeyRegistration(AuthError):
    """A passkey that cannot be registered: bad response, foreign or spent challenge (400)."""

    detail = "Invalid passkey"


class PasskeysUnavailable(AuthError):
    """Passkeys cannot work in this deployment (409): no domain name in ``PUBLIC_URL``."""

    detail = (
        "Passkeys need a domain name in AUTHDB_PUBLIC_URL "
        "(use http://localhost:PORT for development)"
    )


class FeatureNotInstalled(AuthError):
    """An optional feature whose extra is not installed (501); ``detail`` names the extra."""

    detail = "Not installed"


class InvalidMFACode(AuthError):
    """A wrong code where a signed-in user confirms a change (400)."""

    detail = "Invalid MFA code"


class InactiveUser(AuthError):
    detail = "Inactive user"


class EmailNotVerified(AuthError):
    detail = "Email not verified"


class IncorrectPassword(AuthError):
    detail = "Incorrect password"


class InvalidEmailToken(AuthError):
    detail = "Invalid or expired token"


class InvalidInput(AuthError):
    """Input that passed parsing but breaks a rule (weak password, bad username).

    ``field`` names the offending input (``"password"``, ``"username"``...) when one does, so
    that the HTTP layer can answer with FastAPI's list-shaped 422 pointing at it.
    """

    detail = "Invalid input"

    def __init__(self, detail: str | None = None, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class Conflict(AuthError):
    detail = "Conflict"


class StillReferenced(Conflict):
    """A user the application's rows still reference (a foreign key without ON DELETE
    CASCADE): nothing was deleted. ``detail`` names the tables, for developers and admins."""


class NotFound(AuthError):
    detail = "Not found"


class PermissionDenied(AuthError):
    detail = "Not enough permissions"


class PasswordRequired(PermissionDenied):
    """A sensitive change by a session that signed in a while ago: confirm the password (403)."""

    detail = "Confirm your password to do this: you signed in more than 10 minutes ago"


class CSRFFailed(AuthError):
    """A cookie-authenticated unsafe request without the matching CSRF token."""

    detail = "CSRF token missing or invalid"


class RegistrationClosed(AuthError):
    detail = "Registration is disabled"


class ServiceUnavailable(AuthError):
    """A backing service (the database) cannot be reached; the client should retry later."""

    detail = "Service unavailable"

    def __init__(self, retry_after: int = 5, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class TooManyRequests(AuthError):
    detail = "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class OAuthFailed(AuthError):
    """A sign-in with another provider did not complete: the person declined, the flow was
    stale or tampered with, or the provider failed (400; the page says which in words)."""

    detail = "Sign-in with the provider failed"


class OAuthAccountExists(Conflict):
    """A provider's identity whose email is an account's, not linked to it (409): it is never
    linked silently (SPEC, "Sign in with another provider")."""

    detail = (
        "An account with this email address already exists. Sign in to it, then link the "
        "provider from your account page."
    )


class OAuthIdentityTaken(Conflict):
    """The provider's account is already linked to another user (409)."""

    detail = "That account at the provider is already linked to another user."


class OAuthEmailMissing(AuthError):
    """The provider shared no email address, which every account needs (400)."""

    detail = "The provider did not share an email address."


class LastSignInMethod(Conflict):
    """Unlinking would leave no way to sign in (409)."""

    detail = (
        "This is your only way to sign in. Set a password first (through “Forgot your "
        "password?”), or add another way to sign in."
    )
