"""Normalization of usernames and emails, shared by validation, lookups and migrations."""

from __future__ import annotations

import re
import unicodedata

_USERNAME_CHARS = re.compile(r"^[\w.\-]+$")


def normalize_username(raw: str) -> str:
    """NFKC form, so visually identical names are one name."""
    return unicodedata.normalize("NFKC", raw).strip()


def username_problem(username: str) -> str | None:
    """Why ``username`` (already normalized) is not acceptable, or None."""
    if not 3 <= len(username) <= 64:
        return "Username must be 3 to 64 characters long"
    # \w also admits "_" and, in Unicode mode, letters and digits of every script.
    if not _USERNAME_CHARS.fullmatch(username) or any(
        unicodedata.category(char)[0] not in "LN" and char not in "._-" for char in username
    ):
        return "Username may contain only letters, digits, '.', '_' and '-'"
    return None


def username_key(username: str) -> str:
    """The case-insensitive identity of a username."""
    return normalize_username(username).casefold()


def email_key(email: str) -> str:
    """The case-insensitive identity of an email address."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


def login_key(login: str) -> str:
    """What a login name (username or email) is compared by."""
    return normalize_username(login).casefold()


def has_control_characters(text: str) -> bool:
    """True for NUL, escapes and other C0/C1 controls, which no name or email may hold."""
    return any(unicodedata.category(char) == "Cc" for char in text)
