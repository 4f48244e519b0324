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


# Token endpoint errors that blame the client's id or secret (RFC 6749, section 5.2, and
# GitHub's own word): a misconfiguration of the deployment, not the person's failure.
CLIENT_REFUSED = frozenset(
    {"invalid_client", "unauthorized_client", "incorrect_client_credentials"}
)


class ProviderFailed(Exception):
    """The provider could not be used: down, slow, or its answer failed a check (a bad ID
    token, a refused code). The message says why, for the log and the audit trail; it never
    holds a token or a secret."""


class ProviderDenied(ProviderFailed):
    """The provider refused the request with an OAuth error code: ``error`` is that code,
    cleaned (see ``error_code``)."""

    def __init__(self, error: object) -> None:
        self.error = error_code(error)
        super().__init__(f"the provider answered {self.error}")


def error_code(text: object) -> str:
    """An OAuth error code as authdb keeps it (trail, log, page): RFC 6749's characters
    (section 5.2 allows printable ASCII; letters, digits, ``_.-`` is what real codes use),
    64 at most. A provider's or a URL's words never reach a line unfiltered."""
    if not isinstance(text, str):
        return "an error"
    kept = "".join(ch for ch in text[:64] if ch.isascii() and (ch.isalnum() or ch in "_.-"))
    return kept or "an error"
