"""AES-256-GCM sealing of tenant credentials: round trips, and every way to get it wrong."""

from __future__ import annotations

import secrets

import pytest

from pgtenantproxy.tenancy.crypto import (
    NONCE_BYTES,
    DataKey,
    DecryptionError,
    EncryptionKeyError,
    Keyring,
    Sealed,
    UnknownKeyError,
)

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def ring(hex_key: str = KEY) -> Keyring:
    return Keyring(DataKey.from_hex(hex_key, source="TEST_KEY"))


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    keyring = ring()
    first = keyring.seal("pässwörd", shop_id=7, purpose="password")
    second = keyring.seal("pässwörd", shop_id=7, purpose="password")
    assert first.blob != second.blob
    assert first.blob[1 : 1 + NONCE_BYTES] != second.blob[1 : 1 + NONCE_BYTES]
    assert len(first.blob) == 1 + NONCE_BYTES + len("pässwörd".encode()) + 16
    assert b"p\xc3\xa4ssw" not in first.blob
    assert keyring.open(first, shop_id=7, purpose="password") == "pässwörd"
    assert first.key_id == keyring.primary_id


@pytest.mark.parametrize("offset", [0, 1, 12, 13, -1])
def test_any_flipped_byte_fails(offset: int) -> None:
    keyring = ring()
    sealed = keyring.seal("secret", shop_id=1, purpose="password")
    blob = bytearray(sealed.blob)
    blob[offset] ^= 0x40
    with pytest.raises(DecryptionError):
        keyring.open(Sealed(sealed.key_id, bytes(blob)), shop_id=1, purpose="password")


def test_bound_to_shop_field_and_key_id() -> None:
    keyring = ring()
    sealed = keyring.seal("secret", shop_id=1, purpose="password")
    with pytest.raises(DecryptionError, match="shop 2"):
        keyring.open(sealed, shop_id=2, purpose="password")
    with pytest.raises(DecryptionError):
        keyring.open(sealed, shop_id=1, purpose="dsn")
    other = DataKey.generate()
    with pytest.raises(UnknownKeyError):
        keyring.open(Sealed(other.key_id, sealed.blob), shop_id=1, purpose="password")


def test_wrong_key_fails_and_previous_keys_still_open() -> None:
    old, new = ring(), ring(secrets.token_hex(32))
    sealed = old.seal("secret", shop_id=1, purpose="password")
    with pytest.raises(UnknownKeyError, match="not in the keyring"):
        new.open(sealed, shop_id=1, purpose="password")
    with pytest.raises(DecryptionError):  # same id label, different key material
        new.open(Sealed(new.primary_id, sealed.blob), shop_id=1, purpose="password")
    rotating = Keyring(new.primary, [old.primary])
    assert rotating.open(sealed, shop_id=1, purpose="password") == "secret"
    assert rotating.seal("x", shop_id=1, purpose="password").key_id == new.primary_id


def test_truncated_blob_fails_cleanly() -> None:
    keyring = ring()
    with pytest.raises(DecryptionError, match="not a sealed value"):
        keyring.open(Sealed(keyring.primary_id, b"\x01abc"), shop_id=1, purpose="password")


def test_key_id_is_a_stable_fingerprint_that_hides_the_key() -> None:
    assert ring().primary_id == ring().primary_id
    assert len(ring().primary_id) == 16 and ring().primary_id not in KEY
    assert ring().primary_id != ring(secrets.token_hex(32)).primary_id


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "TK is not set"),
        ({"TK": ""}, "TK is not set"),
        ({"TK": KEY[:-1]}, "TK must be exactly 64 hex characters (an AES-256 key), got 63 characters"),
        ({"TK": KEY + "0"}, "got 65 characters"),
        ({"TK": "g" + KEY[1:]}, "TK must contain only hex characters"),
        ({"TK": KEY, "TKP": "abc"}, "TKP (entry 1) must be exactly 64 hex characters"),
    ],
)
def test_key_configuration_errors_are_clear_and_never_echo_the_value(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(EncryptionKeyError) as info:
        Keyring.from_env("TK", "TKP", env)
    assert message in str(info.value)
    assert "secrets.token_hex(32)" in str(info.value)
    for value in env.values():
        if value:
            assert value not in str(info.value)


def test_keyring_from_env_with_previous_keys() -> None:
    previous = secrets.token_hex(32)
    keyring = Keyring.from_env("TK", "TKP", {"TK": KEY.upper(), "TKP": f" {previous} ,"})
    assert keyring.primary_id == ring().primary_id
    assert keyring.key_ids == {ring().primary_id, ring(previous).primary_id}


def test_reprs_hide_key_material() -> None:
    key = DataKey.from_hex(KEY, source="x")
    keyring = Keyring(key)
    for text in (
        repr(key),
        repr(keyring),
        str(keyring),
        repr(keyring.seal("pw", shop_id=1, purpose="password")),
    ):
        assert KEY not in text and bytes.fromhex(KEY).hex() not in text and "pw'" not in text
