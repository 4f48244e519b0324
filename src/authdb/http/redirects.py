"""Where a browser may be sent after signing in: ``next=`` without open redirects.

Only two shapes pass (OWASP Unvalidated Redirects cheat sheet): a path on this site, or an
absolute http(s) URL whose origin is ``PUBLIC_URL``'s or listed in
``AUTHDB_ALLOWED_REDIRECT_ORIGINS``. Browsers read URLs more loosely than Python does (a
backslash acts as a slash, tabs and newlines are dropped, ``https:evil.example`` is absolute), so
the rules are written against those readings: anything not plainly one of the two shapes, in
printable ASCII, is refused.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from authdb.origins import origin_of

# A path: one slash, then no second slash or backslash, then URL characters only (RFC 3986
# unreserved, sub-delims, ":", "@", "/", "?", "#", "%"). No backslash, space or control anywhere.
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?#]*")
_ABSOLUTE = re.compile(r"https?://[A-Za-z0-9\-._~!$&'()*+,;=:@%/?#\[\]]+")
_MAX_CHARS = 2048


def _climbs(path: str) -> bool:
    """Whether a path has ``.`` or ``..`` segments (``%2e`` too): ``/..//evil.example``
    resolves to ``//evil.example``, which a lenient server or proxy may redirect off-site."""
    route = re.split(r"[?#]", path, maxsplit=1)[0]
    segments = route.lower().replace("%2e", ".").split("/")
    return any(segment in (".", "..") for segment in segments)


def safe_next(value: str | None, *, public_url: str, allowed_origins: list[str]) -> str | None:
    """``value`` if it is a same-site path or an allowed absolute URL, else None.

    ``public_url`` is ``PUBLIC_URL``; ``allowed_origins`` are ``scheme://host[:port]`` entries.
    """
    if not value or len(value) > _MAX_CHARS:
        return None
    if _LOCAL_PATH.fullmatch(value):
        return None if _climbs(value) else value
    if not _ABSOLUTE.fullmatch(value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[": an unbalanced IPv6 bracket
        return None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return None  # https://app.example@evil.example: who the user thinks vs who it is
    origin = origin_of(value)
    allowed = {origin_of(public_url), *(origin_of(o) for o in allowed_origins)}
    return value if origin is not None and origin in allowed else None
