"""Hosted pages: server-rendered sign-in, registration, recovery and account pages.

``build(deps)`` returns the router (``auth.pages_router``). The pages work without JavaScript,
load nothing from another origin and authenticate with a session cookie; every form carries a
CSRF token (see ``authdb.http.csrf``).
"""

from authdb.http.pages.router import build

__all__ = ["build"]
