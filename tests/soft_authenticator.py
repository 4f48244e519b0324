"""A software WebAuthn authenticator and client, for tests that have no browser.

It plays both halves of a browser ceremony: the *client* (which builds ``clientDataJSON``
from the options the server sent and the page's origin) and the *authenticator* (which keeps
discoverable credentials, signs with their private keys and keeps their sign counters). Its
input is the JSON the server returns (WebAuthn Level 3 JSON encoding: binary fields as
unpadded base64url); its output is a ``RegistrationResponseJSON`` or
``AuthenticationResponseJSON`` dict, as ``PublicKeyCredential.toJSON()`` gives in a browser.

Built on ``fido2`` (binary structures, COSE keys) and ``cryptography`` (keys, signatures).
Attestation is ``fmt: "none"``. Every ceremony takes knobs to misbehave: another origin, a
wrong rp id (its hash goes into the authenticator data), the UP and UV flags, the sign counter,
the credential type, the challenge, and a tampered signature or client data, so that tests can
check that a relying party refuses each of them.

    authenticator = SoftAuthenticator(origin="http://localhost:8000")
    credential = authenticator.register(creation_options)      # -> RegistrationResponseJSON
    assertion = authenticator.authenticate(request_options)    # -> AuthenticationResponseJSON
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fido2.cose import ES256, CoseKey, EdDSA
from fido2.webauthn import AttestationObject, AttestedCredentialData, AuthenticatorData

__all__ = [
    "ALGORITHMS",
    "AuthenticatorError",
    "SoftAuthenticator",
    "StoredCredential",
    "b64url_decode",
    "b64url_encode",
]

#: COSE algorithm identifiers the authenticator can make keys for.
ALGORITHMS: dict[str, int] = {"ES256": ES256.ALGORITHM, "EdDSA": EdDSA.ALGORITHM}

#: The AAGUID this authenticator reports (any 16 bytes; "none" attestation does not vouch).
AAGUID = bytes.fromhex("5c0f7e1a8b9d4e2fa1b3c4d5e6f70812")

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_UNSET: Any = object()

FLAG = AuthenticatorData.FLAG


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as WebAuthn's JSON encoding writes binary fields."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode` (padding optional)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AuthenticatorError(Exception):
    """What ``navigator.credentials`` would reject with (``InvalidStateError``,
    ``NotAllowedError``, ``NotSupportedError``): the ceremony produces no credential."""


@dataclass
class StoredCredential:
    """One discoverable ("resident") credential the authenticator holds."""

    credential_id: bytes
    private_key: PrivateKey
    algorithm: int
    rp_id: str
    user_handle: bytes
    user_name: str = ""
    counter: int = 0

    @property
    def id(self) -> str:
        """The credential id, base64url (the ``id`` of the JSON responses)."""
        return b64url_encode(self.credential_id)

    @property
    def cose_public_key(self) -> CoseKey:
        """The public key as the COSE map the authenticator data carries."""
        if self.algorithm == ES256.ALGORITHM:
            return ES256.from_cryptography_key(self.private_key.public_key())
        return EdDSA.from_cryptography_key(self.private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        """The signature WebAuthn expects: DER ECDSA over SHA-256 for ES256, raw Ed25519."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self.private_key.sign(data)


def _new_key(algorithm: int) -> PrivateKey:
    if algorithm == ES256.ALGORITHM:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == EdDSA.ALGORITHM:
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported COSE algorithm {algorithm}")


def _unwrap(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept the options themselves, ``{"publicKey": options}`` (as passed to
    ``navigator.credentials``) or authdb's ``{"flow_id", "options": options}``."""
    if "publicKey" in options:
        return options["publicKey"]
    if "options" in options and "challenge" not in options:
        return options["options"]
    return options


@dataclass
class SoftAuthenticator:
    """A platform authenticator with discoverable credentials, plus the browser around it.

    :param origin: the origin the "page" runs on; it goes into ``clientDataJSON``.
    :param algorithm: ``"ES256"`` or ``"EdDSA"``, the key type of new credentials (it must be
        among the server's ``pubKeyCredParams``).
    :param user_verified: the UV flag (a PIN or biometric check happened).
    :param user_present: the UP flag (a touch happened).
    :param counter_step: how much each assertion adds to a credential's sign counter (0 for
        authenticators that keep no counter, as many synced passkeys do).
    :param backup_eligible: the BE and BS flags (a synced passkey).

    Every knob can be overridden for one ceremony through the keyword arguments of
    :meth:`register` and :meth:`authenticate`.
    """

    origin: str = "http://localhost:8000"
    algorithm: str = "ES256"
    user_verified: bool = True
    user_present: bool = True
    counter_step: int = 1
    backup_eligible: bool = False
    credentials: dict[bytes, StoredCredential] = field(default_factory=dict)

    # --- the store ---------------------------------------------------------------------------

    def credential(self, credential_id: bytes | str) -> StoredCredential:
        """The stored credential with this id (bytes, or base64url text)."""
        if isinstance(credential_id, str):
            credential_id = b64url_decode(credential_id)
        return self.credentials[credential_id]

    def set_counter(self, credential_id: bytes | str, value: int) -> None:
        """Set a credential's sign counter (the next assertion reports ``value + step``)."""
        self.credential(credential_id).counter = value

    def decrement_counter(self, credential_id: bytes | str, by: int = 1) -> None:
        """Move a credential's counter back, as a cloned authenticator would appear."""
        stored = self.credential(credential_id)
        stored.counter = max(0, stored.counter - by)

    def clone(self) -> SoftAuthenticator:
        """Another authenticator holding copies of the same keys and counters (a cloned
        security key); counters then advance independently."""
        copies = {cid: StoredCredential(**{**vars(c)}) for cid, c in self.credentials.items()}
        return SoftAuthenticator(
            origin=self.origin,
            algorithm=self.algorithm,
            user_verified=self.user_verified,
            user_present=self.user_present,
            counter_step=self.counter_step,
            backup_eligible=self.backup_eligible,
            credentials=copies,
        )

    # --- shared pieces -----------------------------------------------------------------------

    def _flags(self, *, present: bool, verified: bool, attested: bool) -> AuthenticatorData.FLAG:
        flags = FLAG(0)
        if present:
            flags |= FLAG.UP
        if verified:
            flags |= FLAG.UV
        if self.backup_eligible:
            flags |= FLAG.BE | FLAG.BS
        if attested:
            flags |= FLAG.AT
        return flags

    @staticmethod
    def _client_data(
        type_: str, challenge: str, origin: str, extra: Mapping[str, Any] | None
    ) -> bytes:
        """``clientDataJSON`` bytes: the challenge is echoed as the base64url text it came as.

        ``extra`` members are written as given, even nonsense (not parsed back: a test may
        want a challenge that is not base64url, or a type that is not a string)."""
        data = {"type": type_, "challenge": challenge, "origin": origin, "crossOrigin": False}
        data.update(extra or {})
        return json.dumps(data, separators=(",", ":")).encode()

    # --- registration ------------------------------------------------------------------------

    def register(
        self,
        options: Mapping[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        client_data_type: str = "webauthn.create",
        client_data_extra: Mapping[str, Any] | None = None,
        user_verified: bool | None = None,
        user_present: bool | None = None,
        algorithm: str | None = None,
        credential_id: bytes | None = None,
        respect_exclude: bool = True,
        att_stmt: Mapping[str, Any] | None = None,
        credential_type: str = "public-key",
        store: bool = True,
    ) -> dict[str, Any]:
        """``navigator.credentials.create()``: make a credential for ``options``
        (PublicKeyCredentialCreationOptionsJSON) and return its RegistrationResponseJSON.

        :param origin: the page origin to put in clientDataJSON (default: ``self.origin``).
        :param rp_id: the rp id whose SHA-256 goes into the authenticator data (default: the
            options' ``rp.id``; another value forges a wrong rp id hash).
        :param challenge: the challenge text to echo (default: the options').
        :param client_data_type: ``webauthn.create`` unless testing a wrong type.
        :param client_data_extra: more members for clientDataJSON (may override any).
        :param credential_id: use this id instead of 16 random bytes (e.g. one already taken).
        :param respect_exclude: refuse, like a real authenticator, when it already holds one of
            ``excludeCredentials`` (``AuthenticatorError``); False skips the check.
        :param att_stmt: a non-empty attestation statement makes a bad "none" attestation.
        :param credential_type: the ``type`` member of the response.
        :param store: keep the new credential (False: the authenticator forgets it).
        """
        opts = _unwrap(options)
        rp_id = rp_id if rp_id is not None else str(opts["rp"]["id"])
        origin = origin if origin is not None else self.origin
        alg = ALGORITHMS[algorithm or self.algorithm]
        offered = [p.get("alg") for p in opts.get("pubKeyCredParams") or []]
        if offered and alg not in offered:
            raise AuthenticatorError(f"NotSupportedError: algorithm {alg} not in {offered}")
        if respect_exclude:
            for descriptor in opts.get("excludeCredentials") or []:
                if b64url_decode(descriptor["id"]) in self.credentials:
                    raise AuthenticatorError("InvalidStateError: credential excluded")

        user = opts["user"]
        stored = StoredCredential(
            credential_id=credential_id if credential_id is not None else os.urandom(16),
            private_key=_new_key(alg),
            algorithm=alg,
            rp_id=str(opts["rp"]["id"]),
            user_handle=b64url_decode(user["id"]),
            user_name=str(user.get("name", "")),
        )
        client_data = self._client_data(
            client_data_type,
            challenge if challenge is not None else str(opts["challenge"]),
            origin,
            client_data_extra,
        )
        auth_data = AuthenticatorData.create(
            hashlib.sha256(rp_id.encode()).digest(),
            self._flags(
                present=self.user_present if user_present is None else user_present,
                verified=self.user_verified if user_verified is None else user_verified,
                attested=True,
            ),
            stored.counter,
            AttestedCredentialData.create(AAGUID, stored.credential_id, stored.cose_public_key),
        )
        attestation = AttestationObject.create("none", auth_data, dict(att_stmt or {}))
        if store:
            self.credentials[stored.credential_id] = stored
        return {
            "id": stored.id,
            "rawId": stored.id,
            "type": credential_type,
            "response": {
                "clientDataJSON": b64url_encode(client_data),
                "attestationObject": b64url_encode(bytes(attestation)),
                "transports": ["internal", "hybrid"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    # --- authentication ----------------------------------------------------------------------

    def pick(self, rp_id: str, allow: list[Mapping[str, Any]] | None = None) -> StoredCredential:
        """The credential a user would choose for ``rp_id``: among ``allow`` when given,
        else among the discoverable ones; more than one candidate must be chosen explicitly."""
        if allow:
            candidates = [
                self.credentials[b64url_decode(d["id"])]
                for d in allow
                if b64url_decode(d["id"]) in self.credentials
            ]
        else:
            candidates = [c for c in self.credentials.values() if c.rp_id == rp_id]
        if not candidates:
            raise AuthenticatorError(f"NotAllowedError: no credential for {rp_id!r}")
        if len(candidates) > 1:
            raise AuthenticatorError("several credentials fit: pass credential_id")
        return candidates[0]

    def authenticate(
        self,
        options: Mapping[str, Any],
        *,
        credential_id: bytes | str | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        client_data_type: str = "webauthn.get",
        client_data_extra: Mapping[str, Any] | None = None,
        user_verified: bool | None = None,
        user_present: bool | None = None,
        counter: int | None = None,
        user_handle: bytes | None = _UNSET,
        bad_signature: bool = False,
        replace_client_data: bytes | None = None,
        credential_type: str = "public-key",
    ) -> dict[str, Any]:
        """``navigator.credentials.get()``: sign ``options``' challenge
        (PublicKeyCredentialRequestOptionsJSON, or authdb's ``{"flow_id", "options"}``) and
        return the AuthenticationResponseJSON.

        :param credential_id: which stored credential to use (default: the only one for the
            rp id, see :meth:`pick`).
        :param origin: the page origin (default: ``self.origin``).
        :param rp_id: the rp id hashed into the authenticator data (default: the options'
            ``rpId``, else the credential's).
        :param challenge: the challenge text to echo (default: the options').
        :param client_data_type: ``webauthn.get`` unless testing a wrong type.
        :param client_data_extra: more members for clientDataJSON (may override any).
        :param counter: report exactly this sign counter (and keep it); default: the stored
            counter plus ``counter_step``.
        :param user_handle: the userHandle to report (default: the credential's; None leaves
            it out, as a non-discoverable credential would).
        :param bad_signature: flip a bit of the signature after signing.
        :param replace_client_data: send these bytes as clientDataJSON instead of the ones
            that were signed.
        :param credential_type: the ``type`` member of the response.
        """
        opts = _unwrap(options)
        if credential_id is not None:
            stored = self.credential(credential_id)
        else:
            stored = self.pick(str(opts.get("rpId") or ""), opts.get("allowCredentials"))
        if rp_id is None:
            rp_id = str(opts.get("rpId") or stored.rp_id)
        if counter is None:
            counter = stored.counter + self.counter_step
        stored.counter = counter
        client_data = self._client_data(
            client_data_type,
            challenge if challenge is not None else str(opts["challenge"]),
            origin if origin is not None else self.origin,
            client_data_extra,
        )
        auth_data = AuthenticatorData.create(
            hashlib.sha256(rp_id.encode()).digest(),
            self._flags(
                present=self.user_present if user_present is None else user_present,
                verified=self.user_verified if user_verified is None else user_verified,
                attested=False,
            ),
            counter,
        )
        signature = stored.sign(bytes(auth_data) + hashlib.sha256(client_data).digest())
        if bad_signature:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        if replace_client_data is not None:
            client_data = replace_client_data
        handle = stored.user_handle if user_handle is _UNSET else user_handle
        response: dict[str, Any] = {
            "clientDataJSON": b64url_encode(client_data),
            "authenticatorData": b64url_encode(bytes(auth_data)),
            "signature": b64url_encode(signature),
        }
        if handle is not None:
            response["userHandle"] = b64url_encode(handle)
        return {
            "id": stored.id,
            "rawId": stored.id,
            "type": credential_type,
            "response": response,
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
