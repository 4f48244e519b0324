"""Naming devices from their User-Agent, for session lists, passkey names and the security
timeline (pure functions: the http and services layers both use them)."""

from __future__ import annotations

import re

# (pattern, name) in order: Edge and Opera also say Chrome, Chrome also says Safari.
_BROWSERS = (
    (re.compile(r"Edg(e|A|iOS)?/"), "Edge"),
    (re.compile(r"OPR/|Opera"), "Opera"),
    (re.compile(r"Firefox/|FxiOS/"), "Firefox"),
    (re.compile(r"Chrome/|CriOS/|Chromium/"), "Chrome"),
    (re.compile(r"Safari/"), "Safari"),
)
_SYSTEMS = (
    (re.compile(r"iPhone|iPad|iPod"), "iOS"),
    (re.compile(r"Android"), "Android"),
    (re.compile(r"Windows"), "Windows"),
    (re.compile(r"Mac OS X|Macintosh"), "macOS"),
    (re.compile(r"CrOS"), "ChromeOS"),
    (re.compile(r"Linux"), "Linux"),
)


def recognised_device(user_agent: str | None) -> str | None:
    """ "Chrome on Linux", "Firefox" or "iOS" from a User-Agent; None when nothing is known."""
    if not user_agent:
        return None
    browser = next((name for pattern, name in _BROWSERS if pattern.search(user_agent)), None)
    system = next((name for pattern, name in _SYSTEMS if pattern.search(user_agent)), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system


def device_name(user_agent: str | None) -> str:
    """A person's name for a device: ``recognised_device``, else the raw agent (cut to 60
    characters), else "Unknown device"."""
    if not user_agent:
        return "Unknown device"
    return recognised_device(user_agent) or user_agent[:60]
