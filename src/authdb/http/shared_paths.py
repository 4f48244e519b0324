"""``/register``, ``/verify`` and ``/logout``: API endpoints and page forms on one path.

A browser's form post (a form body, no ``Authorization``) belongs to the page; anything else
to the API. Each side's route matches only partially what belongs to the other, so either
router can be included first and both still answer what is theirs: Starlette takes the first
full match, and falls back to a partial one only when nothing matches fully (a form post to an
app without pages still reaches the API route, which refuses it as before).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Scope

from authdb.http.errors import AuthRoute

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def is_page_form(scope: Scope) -> bool:
    """A browser's form post: a form body and no ``Authorization`` (a bearer call is the API's,
    whatever its content type)."""
    headers = Headers(scope=scope)
    if "authorization" in headers:
        return False
    content_type = headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() in _FORM_TYPES


class SharedWithPageForm(AuthRoute):
    """An API route whose path a page form shares: it steps aside for a page's form post."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL and scope.get("method") == "POST" and is_page_form(scope):
            return Match.PARTIAL, child
        return match, child
