"""What a provider says about the person, and how a provider fails."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """An account at a provider, as its callback proved it.

    ``subject`` is the provider's stable id for it (OIDC ``sub``, GitHub's numeric id): the
    key of a link. ``email_verified`` only when the provider asserts it (OIDC
    ``email_verified: true``; GitHub's ``verified`` on the address). ``username`` is the
    provider's handle (``preferred_username``, GitHub's ``login``), a hint for a new account.
    """

    provider: str
    subject: str
    email: str | None
    email_verified: bool
    username: str | None = None
    name: str | None = None


class ProviderFailed(Exception):
    """The provider could not be used: down, slow, or its answer failed a check (a bad ID
    token, a refused code). The message says why, for the log and the audit trail; it never
    holds a token or a secret."""


class ProviderDenied(ProviderFailed):
    """The person declined at the provider (``error=access_denied``), or the provider
    refused the request with an OAuth error code (``error`` is that code)."""

    def __init__(self, error: str, description: str | None = None) -> None:
        super().__init__(
            f"the provider answered {error}" + (f": {description}" if description else "")
        )
        self.error = error
