"""Web origins (RFC 6454) of URLs, what browsers compare for redirects, CSRF and WebAuthn;
and whether a host is this machine."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased, default port dropped;
    None for anything else (another scheme, no host, a bad port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme}://{parts.hostname.lower()}{suffix}"


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` is this machine: ``localhost``, a ``.localhost`` name (RFC 6761) or a
    loopback address (IPv6 with or without brackets). None or empty: False."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
