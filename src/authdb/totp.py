"""RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30-second steps) via ``pyotp``.

Codes of the current step and of one step either side are accepted (RFC 6238 section 5.2
allows for clock drift and a code typed as the step turns). The caller keeps the accepted
step and refuses that step or an earlier one afterwards, so no code works twice.
"""

from __future__ import annotations

import hmac
import io
from datetime import datetime

import pyotp
import segno

DIGITS = 6
STEP_SECONDS = 30
# Steps either side of the current one that still count (RFC 6238 section 6).
DRIFT_STEPS = 1
_QR_SCALE = 4  # pixels per module


def new_secret() -> str:
    """A random base32 secret of 160 bits, the size of the SHA-1 output (RFC 4226 section 4)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """``otpauth://totp/{issuer}:{account}?secret=...&issuer=...`` for authenticator apps."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """An SVG image of ``uri`` as a QR code: one ``<svg>`` element with its namespace, so it
    works inline in HTML and as an image file or ``data:`` URL alike. It has a ``viewBox``
    (CSS can scale it to a narrow screen) and ``role="img"`` named by its ``<title>``."""
    qr = segno.make(uri, error="m")
    buffer = io.BytesIO()
    # Black on white with its quiet zone whatever the page's colours: scanners need contrast.
    qr.save(
        buffer,
        kind="svg",
        xmldecl=False,
        nl=False,
        scale=_QR_SCALE,
        dark="#000",
        light="#fff",
        title="QR code for an authenticator app",
    )
    width, height = qr.symbol_size(scale=_QR_SCALE)
    opening = f'<svg viewBox="0 0 {width} {height}" role="img" '
    return buffer.getvalue().decode().replace("<svg ", opening, 1)


def normalize(code: str) -> str:
    """A code as typed: spaces and hyphens between digit groups are allowed."""
    return "".join(code.split()).replace("-", "")


def matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code ``code`` is, within the drift window, or None.

    Every candidate is compared in constant time, and all of them, so the time taken does
    not tell which step (if any) matched.
    """
    code = normalize(code)
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = totp.timecode(now)
    found: int | None = None
    for step in range(max(0, current - DRIFT_STEPS), current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found
