"""AES-256-GCM for the tenant credentials kept in the control schema.

Sealed value layout: ``b"\\x01" + nonce (12 random bytes) + ciphertext + tag (16)``.
The associated data binds a value to where it belongs: the shop id, the field
(``password``, ``dsn``) and the key id. So a ciphertext copied into another
shop's row, into another field, or relabelled with another key id fails to
decrypt, as does any flipped bit. Each row records the key id it was sealed
with; the :class:`Keyring` holds the primary key (encrypts) and previous keys
(decrypt only), so keys can be rotated: set the new key, keep the old one in
the "previous" variable, run ``rotate-key``, then drop the old one.

A key id is a fingerprint (HMAC-SHA256 of a fixed label under the key, 16 hex
characters): it identifies a key without revealing it. Key material never
appears in a repr, an exception message or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pgtenantproxy.tenancy.errors import TenancyError

FORMAT_VERSION = 1
NONCE_BYTES = 12
KEY_HEX_CHARS = 64
GENERATE_HINT = 'generate one with: python -c "import secrets; print(secrets.token_hex(32))"'


class CryptoError(TenancyError):
    """Base class of encryption failures."""


class EncryptionKeyError(CryptoError):
    """The key in the environment is missing or malformed (a startup error)."""


class DecryptionError(CryptoError):
    """A sealed value does not open: tampered, wrong key, or another shop's or field's value."""


class UnknownKeyError(DecryptionError):
    """The value was sealed with a key id the keyring does not hold."""


@dataclass(frozen=True)
class Sealed:
    """An encrypted value and the id of the key that sealed it."""

    key_id: str
    blob: bytes = field(repr=False)


@dataclass(frozen=True)
class DataKey:
    """One AES-256 key; its bytes never show in a repr."""

    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise EncryptionKeyError("an AES-256 key is 32 bytes")

    @property
    def key_id(self) -> str:
        return hmac.new(self.material, b"pgtenantproxy key id v1", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_hex(cls, text: str, *, source: str) -> DataKey:
        """Parse 64 hex characters; ``source`` names where they came from, for the message."""
        text = text.strip()
        if len(text) != KEY_HEX_CHARS:
            raise EncryptionKeyError(
                f"{source} must be exactly {KEY_HEX_CHARS} hex characters (an AES-256 key), "
                f"got {len(text)} characters; {GENERATE_HINT}"
            )
        try:
            material = bytes.fromhex(text)
        except ValueError:
            raise EncryptionKeyError(
                f"{source} must contain only hex characters 0-9, a-f; {GENERATE_HINT}"
            ) from None
        return cls(material)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(32))


def _aad(shop_id: int, purpose: str, key_id: str) -> bytes:
    return f"pgtenantproxy/v{FORMAT_VERSION}|shop={shop_id}|field={purpose}|key={key_id}".encode()


class Keyring:
    """The primary key (seals and opens) plus previous keys (open only)."""

    def __init__(self, primary: DataKey, previous: Iterable[DataKey] = ()) -> None:
        self.primary = primary
        self._keys: dict[str, DataKey] = {k.key_id: k for k in previous}
        self._keys[primary.key_id] = primary

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary.key_id!r}, keys={sorted(self._keys)!r})"

    @property
    def primary_id(self) -> str:
        return self.primary.key_id

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @classmethod
    def from_env(
        cls, key_env: str, previous_env: str, environ: Mapping[str, str] | None = None
    ) -> Keyring:
        """The primary key from ``key_env``; comma-separated previous keys from ``previous_env``."""
        env = os.environ if environ is None else environ
        raw = env.get(key_env)
        if not raw:
            raise EncryptionKeyError(
                f"{key_env} is not set: the tenant credential key (64 hex characters) is required; "
                f"{GENERATE_HINT}"
            )
        primary = DataKey.from_hex(raw, source=key_env)
        previous = [
            DataKey.from_hex(part, source=f"{previous_env} (entry {i + 1})")
            for i, part in enumerate(p for p in env.get(previous_env, "").split(",") if p.strip())
        ]
        return cls(primary, previous)

    def seal(self, plaintext: str, *, shop_id: int, purpose: str) -> Sealed:
        key = self.primary
        nonce = secrets.token_bytes(NONCE_BYTES)
        body = AESGCM(key.material).encrypt(nonce, plaintext.encode(), _aad(shop_id, purpose, key.key_id))
        return Sealed(key.key_id, bytes([FORMAT_VERSION]) + nonce + body)

    def open(self, sealed: Sealed, *, shop_id: int, purpose: str) -> str:
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise UnknownKeyError(
                f"shop {shop_id}: {purpose} was sealed with key {sealed.key_id}, which is not in the "
                "keyring (set it as the primary or previous key)"
            )
        blob = sealed.blob
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != FORMAT_VERSION:
            raise DecryptionError(f"shop {shop_id}: {purpose} is not a sealed value of this format")
        nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plain = AESGCM(key.material).decrypt(nonce, body, _aad(shop_id, purpose, sealed.key_id))
        except InvalidTag:
            raise DecryptionError(
                f"shop {shop_id}: {purpose} failed authentication (tampered, or not this shop's value)"
            ) from None
        return plain.decode()
