"""``authdb.totp``: RFC 6238 codes (current step and one either side), lenient spacing, strict
digits, and the provisioning URI and QR code an authenticator app reads.

Codes are computed with ``pyotp`` directly and with the RFC's own test vectors, so the module is
checked against something other than itself.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote, urlsplit

import pyotp
import pytest
import segno
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from authdb import totp

SVG_NS = "{http://www.w3.org/2000/svg}"

# Base32 secrets of 112 bits (pyotp's minimum) to 320; authdb makes 160-bit ones.
base32_secrets = st.binary(min_size=14, max_size=40).map(lambda raw: base64.b32encode(raw).decode())
times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
# Text an authenticator app could never show: not six ASCII digits once spaces are gone.
ASCII_DIGITS = "0123456789"


def _digits(zero: int) -> str:
    return "".join(chr(zero + n) for n in range(10))


# Digits of other scripts, all of them str.isdigit(); written as code points (they look alike).
OTHER_DIGITS = {
    "arabic-indic": _digits(0x0660),
    "extended-arabic-indic": _digits(0x06F0),
    "fullwidth": _digits(0xFF10),
    "devanagari": _digits(0x0966),
    "mathematical-bold": _digits(0x1D7CE),
    "superscript": "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",
}


def _step(now: datetime) -> int:
    """The RFC 6238 time step, computed without pyotp: floor(unix time / 30)."""
    return int(now.timestamp()) // 30


def _code(secret: str, now: datetime, offset: int = 0) -> str:
    return pyotp.TOTP(secret).at(now, counter_offset=offset)


def _window(secret: str, now: datetime) -> list[str]:
    return [_code(secret, now, offset) for offset in (-1, 0, 1)]


# --- matching ------------------------------------------------------------------------------------


# RFC 6238 appendix B (SHA-1 seed "12345678901234567890"), the last six of its eight digits.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "287082"),
    (1111111109, "081804"),
    (1111111111, "050471"),
    (1234567890, "005924"),
    (2000000000, "279037"),
    (20000000000, "353130"),
]


@pytest.mark.parametrize(("unix", "code"), RFC_VECTORS)
def test_the_rfc_6238_test_vectors_match_their_step(unix: int, code: str) -> None:
    now = datetime.fromtimestamp(unix, UTC)
    assert totp.matching_step(RFC_SECRET, code, now) == unix // 30
    # The same code is still good one step later (drift) and gone two steps later.
    assert totp.matching_step(RFC_SECRET, code, now + timedelta(seconds=30)) == unix // 30
    assert totp.matching_step(RFC_SECRET, code, now + timedelta(seconds=60)) is None


@settings(max_examples=300, deadline=None)
@given(base32_secrets, times, st.sampled_from([-1, 0, 1]))
def test_a_code_in_the_drift_window_matches_its_own_step(
    secret: str, now: datetime, offset: int
) -> None:
    window = _window(secret, now)
    assume(len(set(window)) == 3)  # two equal codes in one window (1 in 300,000) name no one step
    code = window[offset + 1]
    assert totp.matching_step(secret, code, now) == _step(now) + offset


@settings(max_examples=300, deadline=None)
@given(base32_secrets, times, st.sampled_from([-3, -2, 2, 3]))
def test_a_code_outside_the_window_does_not_match(secret: str, now: datetime, offset: int) -> None:
    code = _code(secret, now, offset)
    assume(code not in _window(secret, now))  # a coincidence, not a match of that step
    assert totp.matching_step(secret, code, now) is None


@settings(max_examples=200, deadline=None)
@given(base32_secrets, times, st.integers(min_value=0, max_value=29))
def test_every_second_of_a_step_agrees(secret: str, now: datetime, second: int) -> None:
    start = datetime.fromtimestamp(_step(now) * 30, UTC)
    code = _code(secret, start)
    assume(len(set(_window(secret, start))) == 3)
    assert totp.matching_step(secret, code, start + timedelta(seconds=second)) == _step(start)


def test_the_first_step_has_no_step_before_it() -> None:
    # A clock at the Unix epoch (a device that lost its time): step -1 does not exist, and
    # asking for it must not turn a code check into an exception.
    epoch = datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert totp.matching_step(RFC_SECRET, _code(RFC_SECRET, epoch), epoch) == 0
    assert totp.matching_step(RFC_SECRET, _code(RFC_SECRET, epoch, 1), epoch) == 1
    assert totp.matching_step(RFC_SECRET, _code(RFC_SECRET, epoch, 5), epoch) is None


def test_a_datetime_in_another_zone_is_the_same_instant() -> None:
    now = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    code = _code(RFC_SECRET, now)
    elsewhere = now.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert totp.matching_step(RFC_SECRET, code, elsewhere) == _step(now)


# --- what a person types -------------------------------------------------------------------------


NOW = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
CODE = _code(RFC_SECRET, NOW)


@pytest.mark.parametrize(
    "typed",
    [
        f"{CODE[:3]} {CODE[3:]}",
        f" {CODE} ",
        f"{CODE[:2]} {CODE[2:4]} {CODE[4:]}",
        f"{CODE[:3]}\t{CODE[3:]}\n",
        f"{CODE[:3]}\u00a0{CODE[3:]}",  # a no-break space pasted from a web page
        f"{CODE[:3]}-{CODE[3:]}",
    ],
    ids=["middle", "around", "pairs", "tab-newline", "nbsp", "hyphen"],
)
def test_spaces_inside_the_code_are_allowed(typed: str) -> None:
    assert totp.matching_step(RFC_SECRET, typed, NOW) == _step(NOW)


@pytest.mark.parametrize("script", sorted(OTHER_DIGITS))
def test_digits_of_other_scripts_never_match(script: str) -> None:
    # The right code, written in another script's digits: isdigit() is true for all of them.
    other = CODE.translate(str.maketrans(ASCII_DIGITS, OTHER_DIGITS[script]))
    assert other.isdigit() and other != CODE
    assert totp.matching_step(RFC_SECRET, other, NOW) is None
    mixed = CODE[:5] + other[5]
    assert totp.matching_step(RFC_SECRET, mixed, NOW) is None


@pytest.mark.parametrize(
    "typed",
    [
        "",
        " ",
        CODE[:5],
        CODE + "0",
        "0" + CODE,
        CODE + CODE,
        CODE[:5] + "x",
        "abcdef",
        f"+{CODE[1:]}",
        f"-{CODE[1:]}",
        f"{CODE[:5]}.",
        "\x00" + CODE,
        CODE + "\x00",
        f"{int(CODE):,}",
        "1e5000",
        OTHER_DIGITS["arabic-indic"][0] * 10_000,
        "1" * 100_000,
    ],
    ids=lambda typed: repr(typed)[:20],
)
def test_malformed_codes_never_match(typed: str) -> None:
    assert totp.matching_step(RFC_SECRET, typed, NOW) is None


@settings(max_examples=500, deadline=None)
@given(st.text(), times)
def test_any_text_is_answered_without_raising(typed: str, now: datetime) -> None:
    step = totp.matching_step(RFC_SECRET, typed, now)
    if step is None:
        return
    # A match is only ever six ASCII digits (spaces aside) that are the code of that step.
    digits = "".join(typed.split()).replace("-", "")
    assert re.fullmatch(r"[0-9]{6}", digits)
    assert abs(step - _step(now)) <= 1
    assert pyotp.TOTP(RFC_SECRET).generate_otp(step) == digits


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(exclude_characters=ASCII_DIGITS), min_size=1),
    st.integers(min_value=0, max_value=6),
)
def test_a_code_with_anything_but_spaces_and_hyphens_added_never_matches(
    noise: str, position: int
) -> None:
    assume("".join(noise.split()).replace("-", ""))  # something other than separators
    typed = CODE[:position] + noise + CODE[position:]
    assert totp.matching_step(RFC_SECRET, typed, NOW) is None


def test_normalize_keeps_what_is_not_a_separator() -> None:
    assert totp.normalize(" 12 3-456\n") == "123456"
    arabic = OTHER_DIGITS["arabic-indic"]
    assert totp.normalize(f"{arabic[:3]} {arabic[3:6]}") == arabic[:6]


# --- secrets -------------------------------------------------------------------------------------


def test_new_secrets_are_160_bit_base32_and_distinct() -> None:
    made = {totp.new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert len(base64.b32decode(secret)) == 20
        pyotp.TOTP(secret).now()  # pyotp accepts it


# --- provisioning URI ----------------------------------------------------------------------------


def _check_uri(uri: str, secret: str, account: str, issuer: str) -> None:
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    label = parts.path.removeprefix("/")
    # The label separator is the only literal ':'; a ':' in a name is percent-encoded.
    encoded_issuer, encoded_account = label.split(":")
    assert (unquote(encoded_issuer), unquote(encoded_account)) == (issuer, account)
    assert uri.startswith(f"otpauth://totp/{encoded_issuer}:{encoded_account}?secret={secret}&")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.name, parsed.issuer) == (secret, account, issuer)
    assert (parsed.digits, parsed.interval, parsed.digest().name) == (6, 30, "sha1")


@pytest.mark.parametrize(
    ("account", "issuer"),
    [
        ("alice", "authdb"),
        ("alice@example.com", "Example Inc."),
        ("alice smith", "Acme: Staging"),
        ("a:b@c", "x:y"),
        ("jürgen", "Société Générale"),
        ("山田", "認証"),
        ("o'brien&co", "A&B=C?#%"),
        ("slash/name", "issuer/with/slash"),
        ("+plus+", "100%"),
    ],
)
def test_the_provisioning_uri_round_trips(account: str, issuer: str) -> None:
    secret = totp.new_secret()
    _check_uri(
        totp.provisioning_uri(secret, account=account, issuer=issuer), secret, account, issuer
    )


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=1, max_size=64),
    st.text(min_size=1, max_size=64).filter(lambda issuer: issuer.strip() != ""),
    base32_secrets.map(lambda secret: secret.rstrip("=")),
)
def test_any_names_round_trip_through_pyotp(account: str, issuer: str, secret: str) -> None:
    _check_uri(
        totp.provisioning_uri(secret, account=account, issuer=issuer), secret, account, issuer
    )


def test_the_uri_carries_the_code_the_app_will_show() -> None:
    secret = totp.new_secret()
    app = pyotp.parse_uri(totp.provisioning_uri(secret, account="alice", issuer="authdb"))
    assert totp.matching_step(secret, app.at(NOW), NOW) == _step(NOW)


# --- QR code -------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _dark_modules(svg: ET.Element) -> set[tuple[int, int]]:
    """The modules the SVG paints dark, read back from its path (``M``, ``m``, ``h`` commands)."""
    paths = [
        p for p in svg.iter() if _local(p.tag) == "path" and p.get("stroke") not in (None, "none")
    ]
    assert len(paths) == 1
    dark: set[tuple[int, int]] = set()
    x = y = 0.0
    for command, first, second in re.findall(
        r"([Mmh])\s*(-?[\d.]+)(?:[\s,]+(-?[\d.]+))?", paths[0].get("d", "")
    ):
        if command == "M":
            x, y = float(first), float(second)
        elif command == "m":
            x, y = x + float(first), y + float(second)
        else:
            length = float(first)
            dark.update((int(x) + i, int(y)) for i in range(int(length)))
            x += length
    return dark


def _expected_modules(uri: str, level: str) -> set[tuple[int, int]]:
    """segno's encoding of ``uri``, inside the 4-module quiet zone QR codes require."""
    matrix = segno.make(uri, error=level).matrix
    return {
        (col + 4, row + 4) for row, line in enumerate(matrix) for col, on in enumerate(line) if on
    }


def _parse(svg: str) -> ET.Element:
    """One well-formed element (trailing content would not parse). Our own output, not
    untrusted input, so the stdlib parser is fine."""
    return ET.fromstring(svg)  # noqa: S314


def _qr(account: str = "alice", issuer: str = "authdb") -> tuple[str, str]:
    uri = totp.provisioning_uri(totp.new_secret(), account=account, issuer=issuer)
    return uri, totp.qr_svg(uri)


def test_qr_svg_is_one_svg_element_and_nothing_more() -> None:
    _, svg = _qr()
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<svg") == 1
    assert "<?xml" not in svg and "<!doctype" not in svg.lower()
    root = _parse(svg)
    assert _local(root.tag) == "svg"
    allowed = {"svg", "title", "desc", "g", "path", "rect"}
    for element in root.iter():
        assert _local(element.tag) in allowed, element.tag
        for name, value in element.attrib.items():
            assert not _local(name).lower().startswith("on"), name
            assert "href" not in name.lower(), name
            assert "javascript:" not in value.lower() and "url(" not in value.lower()
    assert "<script" not in svg.lower()
    assert "<foreignobject" not in svg.lower()


def test_qr_svg_is_an_svg_image_outside_html_too() -> None:
    # API clients show it as an image (<img src="data:image/svg+xml,...">, a file): without
    # the SVG namespace, browsers render nothing (naturalWidth 0 in Chromium).
    _, svg = _qr()
    assert _parse(svg).tag == f"{SVG_NS}svg"


def test_qr_svg_draws_exactly_that_uri() -> None:
    uri, svg = _qr("alice@example.com", "Acme")
    painted = _dark_modules(_parse(svg))
    # Whatever error-correction level it chose, the picture is the QR code of this URI.
    assert any(painted == _expected_modules(uri, level) for level in "lmqh")
    other, _ = _qr("alice@example.com", "Acme")
    assert not any(painted == _expected_modules(other, level) for level in "lmqh")


def test_qr_svg_puts_none_of_the_uri_in_markup() -> None:
    uri = "otpauth://totp/a:b?secret=AAAA&issuer=</title><script>alert(1)</script>"
    svg = totp.qr_svg(uri)
    assert "<script" not in svg.lower() and "secret" not in svg
    assert _local(_parse(svg).tag) == "svg"
