"""Normalization of usernames and emails, shared by validation, lookups and migrations.

A lookup key must be *stable*: computing it again from the key changes nothing, and every case
variant of a name maps to the same key. ``casefold`` alone is neither (``"ΐ".upper()``
casefolds to a different sequence of code points than ``"ΐ"`` does), so keys build on
``NFKC(casefold(NFKC(text)))``, Unicode's compatibility caseless matching (Unicode 15, D146)
finished with a composition so that keys stay short; see ``fold``.
"""

from __future__ import annotations

import re
import unicodedata

_USERNAME_CHARS = re.compile(r"^[\w.\-]+$")
USERNAME_MIN = 3
USERNAME_MAX = 64
# The key columns' widths: a name or address is refused when its key would not fit.
USERNAME_KEY_MAX = 64
EMAIL_KEY_MAX = 320

# Bidirectional embeddings, overrides and isolates (Unicode TR9): they reorder how text is
# shown, so a name could display as another ("Trojan Source", CVE-2021-42574).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: C0 and C1 controls (NUL, escapes, line breaks); Cs: lone surrogates, which no encoding
# can store; Zl/Zp: line and paragraph separators, which forge lines in logs.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def normalize_username(raw: str) -> str:
    """NFKC form, so visually identical names are one name."""
    return unicodedata.normalize("NFKC", raw).strip()


def _fold_once(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def fold(text: str) -> str:
    """Compatibility caseless form of ``text``: stable under repetition and case changes.

    Case folding alone does not close over case: the upper case of the dotless i (U+0131) is
    ``"I"``, which folds to ``"i"``. Folding the upper case of the folded form again until
    nothing changes makes every case variant (upper, lower, title, swapped, decomposed) share
    one key; so dotless and dotted i are one letter in names, as a careful reader would take
    them anyway.
    """
    key = _fold_once(text)
    for _ in range(8):  # one or two rounds in practice; the bound only guards the loop
        again = _fold_once(key.upper())
        if again == key:
            break
        key = again
    return key


def username_problem(username: str) -> str | None:
    """Why ``username`` (already normalized) is not acceptable, or None.

    Limits hold for the stored name *and* its case-folded key, which can be longer
    (``"ß"`` folds to ``"ss"``).
    """
    if not USERNAME_MIN <= len(username) <= USERNAME_MAX:
        return f"Username must be {USERNAME_MIN} to {USERNAME_MAX} characters long"
    # \w also admits "_" and, in Unicode mode, letters and digits of every script.
    if not _USERNAME_CHARS.fullmatch(username) or any(
        unicodedata.category(char)[0] not in "LN" and char not in "._-" for char in username
    ):
        return "Username may contain only letters, digits, '.', '_' and '-'"
    if len(username_key(username)) > USERNAME_KEY_MAX:
        return f"Username is too long once case-folded (at most {USERNAME_KEY_MAX} characters)"
    return None


def username_key(username: str) -> str:
    """The case-insensitive identity of a username."""
    return fold(username).strip()


def email_key(email: str) -> str:
    """The case-insensitive identity of an email address."""
    return fold(email).strip()


def login_key(login: str) -> str:
    """What a login name (username or email) is compared by."""
    return fold(login).strip()


def control_character(text: str) -> str | None:
    """The first character no text field may hold (controls, bidi overrides), or None."""
    for char in text:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _REFUSED_CATEGORIES:
            return char
    return None


def has_control_characters(text: str) -> bool:
    """True for NUL, escapes, C1 controls, bidi overrides and the like."""
    return control_character(text) is not None
