"""The WebAuthn relying party: options, challenges and verification of passkey ceremonies.

Protocol only, no database: ``authdb.services.passkeys`` stores credentials and spends
challenges. Built on py_webauthn (the optional extra ``authdb[passkeys]``), imported when a
ceremony starts so that a deployment without the extra still runs and says what to install.

Challenges are sealed, not stored: 32 random bytes plus who and what they are for and when they
expire, encrypted and authenticated under the deployment secret (``authdb.sealing``). Handing
one out writes nothing; the server recognises its own challenge in the client's
``clientDataJSON``, and the service records each one as spent when it is presented.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from authdb.errors import (
    FeatureNotInstalled,
    InvalidPasskey,
    InvalidPasskeyRegistration,
    PasskeysUnavailable,
)
from authdb.origins import origin_of
from authdb.sealing import Sealer, Unsealable
from authdb.settings import Settings

# SPEC, "Passkeys": a challenge is single-use and expires after 5 minutes.
CHALLENGE_LIFETIME = timedelta(minutes=5)
TIMEOUT_MS = int(CHALLENGE_LIFETIME.total_seconds() * 1000)
SEAL_PURPOSE = "authdb webauthn challenge"
REGISTER = "register"
LOGIN = "login"
# WebAuthn Level 3, section 5.1: a credential id is at most 1023 bytes.
MAX_CREDENTIAL_ID_BYTES = 1023
USER_HANDLE_BYTES = 32
# A COSE public key of any algorithm offered is well under this (RSA-4096: about 550 bytes).
MAX_PUBLIC_KEY_BYTES = 2048
# clientDataJSON is a few hundred bytes; a bound keeps parsing it cheap (and shallow).
MAX_CLIENT_DATA_CHARS = 8192
NEEDS_EXTRA = "Passkeys need the 'passkeys' extra: pip install 'authdb[passkeys]'"
_NONCE_BYTES = 32


def webauthn_library() -> ModuleType:
    """py_webauthn, or FeatureNotInstalled (501) naming the extra to install."""
    try:
        import webauthn
    except ImportError:
        raise FeatureNotInstalled(NEEDS_EXTRA) from None
    return webauthn


def is_installed() -> bool:
    """Whether the ``passkeys`` extra is installed."""
    try:
        webauthn_library()
    except FeatureNotInstalled:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """Who the passkeys are for: ``id`` (a host name, the RP ID) and the page ``origin``."""

    id: str
    origin: str
    name: str


def relying_party(settings: Settings) -> RelyingParty:
    """The relying party of ``AUTHDB_PUBLIC_URL``: its host is the RP ID, its origin the origin.

    Raises PasskeysUnavailable (409) for an IP address: browsers accept only a domain as RP ID
    (WebAuthn Level 3, section 5.1.3 relies on a "registrable domain suffix").
    """
    parts = urlsplit(settings.public_url)
    host = (parts.hostname or "").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise PasskeysUnavailable
    origin = origin_of(settings.public_url)
    assert origin is not None  # AUTHDB_PUBLIC_URL is checked to be an absolute http(s) URL
    return RelyingParty(id=host, origin=origin, name=settings.site_name)


def available(settings: Settings) -> bool:
    """Whether passkeys can work here: a domain-name ``PUBLIC_URL`` and the extra installed."""
    try:
        relying_party(settings)
    except PasskeysUnavailable:
        return False
    return is_installed()


# --- challenges ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """What a sealed challenge was issued for.

    ``user_id`` and ``user_handle`` for a registration; ``username`` for a sign-in that only a
    passkey of that account may complete (None: any account's).
    """

    purpose: str
    expires_at: datetime
    user_id: int | None = None
    user_handle: bytes | None = None
    username: str | None = None


def seal_challenge(sealer: Sealer, challenge: Challenge) -> bytes:
    """The challenge bytes to send: ``challenge`` sealed with 32 random bytes of its own."""
    payload = {
        "n": b64encode(os.urandom(_NONCE_BYTES)),
        "e": int(challenge.expires_at.timestamp()),
        "u": challenge.user_id,
        "h": b64encode(challenge.user_handle) if challenge.user_handle else None,
        "l": challenge.username,
    }
    # Not ASCII-escaped: a long non-ASCII name would otherwise grow the flow id sixfold.
    return sealer.seal(json.dumps(payload, ensure_ascii=False).encode(), challenge.purpose)


def open_challenge(sealer: Sealer, raw: bytes, purpose: str, now: datetime) -> Challenge | None:
    """The challenge ``raw`` carries if this server sealed it for ``purpose`` and it has not
    expired; else None. Whether it was spent already is the caller's to check."""
    try:
        plain, _ = sealer.open(raw, purpose)
        payload = json.loads(plain)
        expires_at = datetime.fromtimestamp(int(payload["e"]), UTC)
        handle = payload["h"]
        challenge = Challenge(
            purpose=purpose,
            expires_at=expires_at,
            user_id=payload["u"],
            user_handle=b64decode(handle) if handle else None,
            username=payload["l"],
        )
    except (Unsealable, ValueError, KeyError, TypeError):
        return None
    return challenge if now < expires_at else None


def b64encode(data: bytes) -> str:
    """base64url without padding, as WebAuthn's JSON encoding uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; ValueError when it is not base64url."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


# --- options ---------------------------------------------------------------------------------


def creation_options(
    rp: RelyingParty,
    *,
    challenge: bytes,
    user_handle: bytes,
    username: str,
    display_name: str,
    exclude: list[bytes],
) -> dict[str, Any]:
    """PublicKeyCredentialCreationOptionsJSON (WebAuthn Level 3, section 5.4): a discoverable
    credential (``residentKey: required``), user verification preferred, no attestation."""
    webauthn = webauthn_library()
    structs = webauthn.helpers.structs
    options = webauthn.generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=user_handle,
        user_name=username,
        user_display_name=display_name,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        authenticator_selection=structs.AuthenticatorSelectionCriteria(
            resident_key=structs.ResidentKeyRequirement.REQUIRED,
            require_resident_key=True,
            user_verification=structs.UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[structs.PublicKeyCredentialDescriptor(id=c) for c in exclude],
    )
    return dict(json.loads(webauthn.options_to_json(options)))


def request_options(rp: RelyingParty, *, challenge: bytes) -> dict[str, Any]:
    """PublicKeyCredentialRequestOptionsJSON (section 5.5) for a discoverable credential: no
    ``allowCredentials``, so that the options never tell which accounts have passkeys."""
    webauthn = webauthn_library()
    options = webauthn.generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        user_verification=webauthn.helpers.structs.UserVerificationRequirement.PREFERRED,
    )
    return dict(json.loads(webauthn.options_to_json(options)))


# --- reading and verifying responses ----------------------------------------------------------


def _client_data(credential: dict[str, Any]) -> dict[str, Any] | None:
    """A response's ``clientDataJSON``, parsed but unverified; None when malformed."""
    try:
        encoded = credential["response"]["clientDataJSON"]
        if not isinstance(encoded, str) or len(encoded) > MAX_CLIENT_DATA_CHARS:
            return None
        client_data = json.loads(b64decode(encoded))
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    return client_data if isinstance(client_data, dict) else None


def client_challenge(credential: dict[str, Any]) -> bytes | None:
    """The challenge in a response's ``clientDataJSON``, unverified (to find which sealed
    challenge it answers); None when there is none to read."""
    client_data = _client_data(credential)
    try:
        return b64decode(client_data["challenge"]) if client_data is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def _same_origin(credential: dict[str, Any]) -> bool:
    """The ceremony ran in a top-level page, not in a frame of another site (WebAuthn Level
    3, section 5.8.1: ``crossOrigin``); our pages cannot be framed, so a frame is never ours."""
    client_data = _client_data(credential)
    return client_data is not None and client_data.get("crossOrigin") in (None, False)


def credential_id(credential: dict[str, Any]) -> bytes | None:
    """A response's credential id (``rawId``), unverified; None when malformed or too long."""
    try:
        raw = b64decode(credential["rawId"])
    except (KeyError, TypeError, ValueError):
        return None
    return raw if 0 < len(raw) <= MAX_CREDENTIAL_ID_BYTES else None


def user_handle(credential: dict[str, Any]) -> bytes | None:
    """The ``userHandle`` an assertion carries (None: absent or malformed)."""
    try:
        handle = credential["response"]["userHandle"]
        return b64decode(handle) if handle else None
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A verified registration: what to store."""

    credential_id: bytes
    public_key: bytes  # COSE_Key
    sign_count: int
    aaguid: str
    backup_eligible: bool
    backed_up: bool


@dataclass(frozen=True, slots=True)
class Assertion:
    """A verified sign-in: the authenticator's new counter and flags."""

    sign_count: int
    user_verified: bool
    backed_up: bool


def verify_registration(
    rp: RelyingParty, credential: dict[str, Any], challenge: bytes
) -> NewCredential:
    """Verify a RegistrationResponseJSON (WebAuthn Level 3, section 7.1): type, challenge,
    origin, RP ID hash, user presence, attestation ("none" or a verifiable one).

    Raises InvalidPasskeyRegistration (400) on any failure, malformed input included.
    """
    webauthn = webauthn_library()
    if not _same_origin(credential):
        raise InvalidPasskeyRegistration
    try:
        verified = webauthn.verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_origin=rp.origin,
            expected_rp_id=rp.id,
        )
    except Exception:
        # Untrusted bytes: a parse error of any kind is a bad response, never a 500.
        raise InvalidPasskeyRegistration from None
    too_big = len(verified.credential_public_key) > MAX_PUBLIC_KEY_BYTES
    if len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES or too_big:
        raise InvalidPasskeyRegistration
    structs = webauthn.helpers.structs
    return NewCredential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        backup_eligible=verified.credential_device_type
        == structs.CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
    )


def verify_assertion(
    rp: RelyingParty, credential: dict[str, Any], challenge: bytes, public_key: bytes
) -> Assertion:
    """Verify an AuthenticationResponseJSON (section 7.2): type, challenge, origin, RP ID
    hash, user presence and the signature by ``public_key``. The sign counter is returned, not
    judged: the caller compares it with the stored one (and audits a counter going back).

    Raises InvalidPasskey (401) on any failure, malformed input included.
    """
    webauthn = webauthn_library()
    if not _same_origin(credential):
        raise InvalidPasskey
    try:
        verified = webauthn.verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=public_key,
            credential_current_sign_count=0,  # judged by the caller, after the signature
        )
    except Exception:
        raise InvalidPasskey from None
    return Assertion(
        sign_count=verified.new_sign_count,
        user_verified=verified.user_verified,
        backed_up=verified.credential_backed_up,
    )


def counter_went_back(stored: int, presented: int) -> bool:
    """Whether a sign counter signals a cloned authenticator (section 6.1.1): either is
    non-zero and the new one is not greater. Authenticators without a counter send 0."""
    return (stored > 0 or presented > 0) and presented <= stored
