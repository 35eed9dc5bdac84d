"""The credential vault: AES-256-GCM sealing bound to its row, keyrings (rotation,
placeholder refusal), the embedded default's generated key file, and state signatures."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from pydantic import ValidationError

from core.settings import Settings
from core.vault import (
    KEY_BYTES,
    NONCE_BYTES,
    KeyringInvalid,
    Sealed,
    Vault,
    VaultError,
    generate_key_line,
    load_keyring,
    parse_keyring,
)

SECRETS = {"secrets": {"api_key": "kc_live_abc123"}, "token": {"access_token": "00Dx!AR8AQ", "refresh_token": "5Aep86"}}
WHERE = {"purpose": "connection-credentials", "tenant_id": "tenant-a", "record_id": "connection-1"}


@pytest.fixture
def vault() -> Vault:
    return Vault(parse_keyring(generate_key_line("k1")))


def test_seal_and_open(vault):
    sealed = vault.seal(SECRETS, **WHERE)
    assert sealed.key_id == "k1"
    assert len(sealed.nonce) == NONCE_BYTES
    assert b"kc_live_abc123" not in sealed.ciphertext and b"00Dx" not in sealed.ciphertext
    assert vault.open(sealed, **WHERE) == SECRETS


def test_each_seal_uses_a_fresh_nonce(vault):
    first, second = vault.seal(SECRETS, **WHERE), vault.seal(SECRETS, **WHERE)
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize("part", ["ciphertext", "nonce"])
@pytest.mark.parametrize("position", [0, -1, 7])
def test_a_flipped_byte_is_refused(vault, part, position):
    sealed = vault.seal(SECRETS, **WHERE)
    data = bytearray(getattr(sealed, part))
    data[position] ^= 0x01
    with pytest.raises(VaultError) as info:
        vault.open(sealed._replace(**{part: bytes(data)}), **WHERE)
    assert "kc_live" not in str(info.value)


@pytest.mark.parametrize(
    "moved",
    [
        {"record_id": "connection-2"},  # copied onto another connection's row
        {"tenant_id": "tenant-b"},  # ...or another tenant's
        {"purpose": "oauth-state"},  # ...or used as another kind of record
    ],
    ids=["other-row", "other-tenant", "other-purpose"],
)
def test_a_ciphertext_moved_elsewhere_is_refused(vault, moved):
    sealed = vault.seal(SECRETS, **WHERE)
    with pytest.raises(VaultError):
        vault.open(sealed, **{**WHERE, **moved})


def test_a_relabelled_key_id_is_refused():
    keyring = parse_keyring(f"{generate_key_line('new')},{generate_key_line('old')}")
    vault = Vault(keyring)
    sealed = vault.seal(SECRETS, **WHERE)
    # Even a key in the ring: the key id is part of the authenticated data.
    with pytest.raises(VaultError):
        vault.open(sealed._replace(key_id="old"), **WHERE)


def test_an_unknown_key_id_is_refused(vault):
    sealed = vault.seal(SECRETS, **WHERE)
    other = Vault(parse_keyring(generate_key_line("k2")))
    with pytest.raises(VaultError, match="not in the keyring"):
        other.open(sealed, **WHERE)


def test_rotation_keeps_old_records_readable_and_reseals_with_the_active_key():
    old_line, new_line = generate_key_line("old"), generate_key_line("new")
    before = Vault(parse_keyring(old_line)).seal(SECRETS, **WHERE)
    rotated = Vault(parse_keyring(f"{new_line}\n{old_line}"))
    assert rotated.active_key_id == "new"
    assert rotated.open(before, **WHERE) == SECRETS  # the old key still opens what it sealed
    after = rotated.reseal(before, **WHERE)
    assert after.key_id == "new"
    assert Vault(parse_keyring(new_line)).open(after, **WHERE) == SECRETS  # the old key can now go


def _b64(material: bytes) -> str:
    return base64.b64encode(material).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "changeme",
        "k1",
        f"k1:{_b64(os.urandom(16))}",  # AES-128 size: too short
        f"k1:{_b64(os.urandom(48))}",
        "k1:not base64!!",
        f"k1:{_b64(bytes(KEY_BYTES))}",  # all zeros
        f"k1:{_b64(b'A' * KEY_BYTES)}",
        f"k1:{_b64(b'this-is-my-very-secret-vault-key')}",  # typed text, not random bytes
        f"k1:{_b64(b'0123456789abcdef0123456789abcdef')}",
        f"changeme:{_b64(os.urandom(KEY_BYTES))}",
        f"bad id:{_b64(os.urandom(KEY_BYTES))}",
        f"k1:{_b64(os.urandom(KEY_BYTES))},k1:{_b64(os.urandom(KEY_BYTES))}",  # duplicate id
    ],
)
def test_placeholder_short_or_malformed_keys_are_refused(text):
    with pytest.raises(KeyringInvalid):
        parse_keyring(text)


def test_settings_refuse_a_placeholder_vault_key_without_echoing_it():
    typed = _b64(b"this-is-my-very-secret-vault-key")
    with pytest.raises(ValidationError) as info:
        Settings(vault_keys=f"prod:{typed}")
    assert "vault_keys" in str(info.value)
    assert typed not in str(info.value)
    with pytest.raises(ValidationError):
        Settings(vault_keys="changeme")


def test_settings_accept_a_generated_keyring_from_the_environment(monkeypatch):
    line = f"{generate_key_line('a')},{generate_key_line('b')}"
    monkeypatch.setenv("HUB_VAULT_KEYS", line)
    settings = Settings()
    assert settings.vault_keys is not None
    assert parse_keyring(settings.vault_keys.get_secret_value()).key_ids == ["a", "b"]
    assert line not in repr(settings)


def test_keyring_accepts_urlsafe_base64_comments_and_newlines():
    material = os.urandom(KEY_BYTES)
    urlsafe = base64.urlsafe_b64encode(material).decode().rstrip("=")
    keyring = parse_keyring(f"# rotated 2026-01\nk2:{urlsafe}\n{generate_key_line('k1')}  # old\n")
    assert keyring.key_ids == ["k2", "k1"]
    assert keyring.active.material == material
    assert urlsafe not in repr(keyring)


def test_the_embedded_default_generates_a_private_key_file_once(tmp_path):
    key_file = tmp_path / "data" / "vault.keys"
    first = load_keyring(None, key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = load_keyring(None, key_file)
    assert again.active == first.active  # the same key on the next start
    elsewhere = load_keyring(None, tmp_path / "other" / "vault.keys")
    assert elsewhere.active.material != first.active.material  # random, never built in


def test_a_configured_keyring_wins_over_the_key_file(tmp_path):
    key_file = tmp_path / "vault.keys"
    keyring = load_keyring(generate_key_line("cfg"), key_file)
    assert keyring.key_ids == ["cfg"]
    assert not key_file.exists()


def test_signatures_verify_and_resist_tampering(vault):
    signature = vault.sign(b"payload", purpose="oauth-state")
    assert vault.verify(b"payload", signature, purpose="oauth-state")
    assert not vault.verify(b"payloaD", signature, purpose="oauth-state")
    assert not vault.verify(b"payload", signature, purpose="other")
    assert not vault.verify(b"payload", signature[:-2] + "AA", purpose="oauth-state")
    assert not vault.verify(b"payload", "unknown." + signature.split(".", 1)[1], purpose="oauth-state")
    assert not Vault(parse_keyring(generate_key_line("k1"))).verify(b"payload", signature, purpose="oauth-state")


def test_open_refuses_a_malformed_nonce(vault):
    sealed = vault.seal(SECRETS, **WHERE)
    with pytest.raises(VaultError):
        vault.open(Sealed(sealed.key_id, sealed.nonce[:8], sealed.ciphertext), **WHERE)
