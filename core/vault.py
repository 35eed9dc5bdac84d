"""The credential vault: authenticated encryption of secrets at rest, with rotatable keys.

Each record is sealed with AES-256-GCM under the keyring's *active* key and a random
96-bit nonce. The additional authenticated data binds the ciphertext to where it lives
(purpose, tenant id, record id) and to the key id it was sealed with, so a ciphertext
copied to another row, another tenant or relabelled with another key id fails to open.

The keyring is `kid:base64key` entries separated by commas or newlines (`HUB_VAULT_KEYS`);
the first is active, the others only open older records until `hub vault rotate`
re-seals them. Without a configured keyring the embedded default keeps one random key in
`<data_dir>/vault.keys` (mode 0600), created on first start; no key is ever built in.

Nothing here ever puts key material or plaintext into an exception message or a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("core.vault")

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_AAD_VERSION = "hub-vault/1"
# A random 32-byte key has ~30 distinct byte values and is almost never printable text;
# fewer distinct values, or all-printable bytes, mean a typed or example "key".
_MIN_DISTINCT_BYTES = 20
_PLACEHOLDER_KEY_IDS = frozenset({"changeme", "change-me", "example", "placeholder", "todo", "xxx"})


class VaultError(Exception):
    """A record could not be sealed or opened (wrong place, tampered, unknown key)."""


class KeyringInvalid(ValueError):
    """A configured keyring is malformed or holds a key that is not random enough."""


@dataclass(frozen=True)
class VaultKey:
    kid: str
    material: bytes = field(repr=False)


@dataclass(frozen=True)
class Keyring:
    """The vault's keys, the active (sealing) one first."""

    keys: tuple[VaultKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringInvalid("the vault keyring holds no key")

    @property
    def active(self) -> VaultKey:
        return self.keys[0]

    def get(self, kid: str) -> VaultKey | None:
        for key in self.keys:
            if key.kid == kid:
                return key
        return None

    @property
    def key_ids(self) -> list[str]:
        return [key.kid for key in self.keys]

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids})"


def _looks_random(material: bytes) -> bool:
    printable = all(32 <= b < 127 for b in material)
    return len(set(material)) >= _MIN_DISTINCT_BYTES and not printable


def parse_keyring(text: str) -> Keyring:
    """Parse `kid:base64key[,kid:base64key...]` (commas or newlines; `#` starts a comment).

    :raises KeyringInvalid: with a message naming the entry, never its key.
    """
    entries = [
        part.strip()
        for line in text.splitlines()
        for part in line.split("#", 1)[0].split(",")
        if part.strip()
    ]
    keys: list[VaultKey] = []
    for position, entry in enumerate(entries, start=1):
        kid, sep, encoded = entry.partition(":")
        kid, encoded = kid.strip(), encoded.strip()
        if not sep or not _KEY_ID.match(kid):
            raise KeyringInvalid(f"vault key #{position} must read `kid:base64key` with a kid matching {KEY_ID_PATTERN}")
        if kid.lower() in _PLACEHOLDER_KEY_IDS:
            raise KeyringInvalid(f"vault key {kid!r} is a placeholder; generate one with `hub vault generate-key`")
        try:
            material = base64.b64decode(encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringInvalid(f"vault key {kid!r} is not valid base64") from None
        if len(material) != KEY_BYTES:
            raise KeyringInvalid(f"vault key {kid!r} must decode to {KEY_BYTES} bytes (AES-256), not {len(material)}")
        if not _looks_random(material):
            raise KeyringInvalid(
                f"vault key {kid!r} looks like a placeholder, not random bytes; generate one with `hub vault generate-key`"
            )
        if any(k.kid == kid for k in keys):
            raise KeyringInvalid(f"vault key id {kid!r} appears twice")
        keys.append(VaultKey(kid, material))
    if not keys:
        raise KeyringInvalid("the vault keyring holds no key")
    return Keyring(tuple(keys))


def generate_key_line(kid: str | None = None) -> str:
    """A new `kid:base64key` entry from the OS's CSPRNG."""
    kid = kid or f"k{secrets.token_hex(4)}"
    if not _KEY_ID.match(kid):
        raise KeyringInvalid(f"a key id must match {KEY_ID_PATTERN}")
    while True:
        material = secrets.token_bytes(KEY_BYTES)
        if _looks_random(material):  # fails with negligible probability; never ship one that fails
            return f"{kid}:{base64.b64encode(material).decode()}"


def load_keyring(configured: str | None, key_file: Path) -> Keyring:
    """The configured keyring, else the embedded default's key file (created on first use)."""
    if configured:
        return parse_keyring(configured)
    try:
        return parse_keyring(key_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(parents=True, exist_ok=True)
    line = generate_key_line()
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return parse_keyring(key_file.read_text(encoding="utf-8"))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# The hub's credential vault key (first = active). Back it up; never commit it.\n")
        handle.write(line + "\n")
    log.warning("generated a new vault key in %s; back it up, or set HUB_VAULT_KEYS", key_file)
    return parse_keyring(line)


class Sealed(NamedTuple):
    key_id: str
    nonce: bytes
    ciphertext: bytes


def _aad(purpose: str, tenant_id: str, record_id: str, key_id: str) -> bytes:
    return orjson.dumps([_AAD_VERSION, purpose, tenant_id, record_id, key_id])


class Vault:
    """Seals and opens JSON documents bound to (purpose, tenant, record, key id)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def active_key_id(self) -> str:
        return self.keyring.active.kid

    def seal(self, document: Mapping[str, Any], *, purpose: str, tenant_id: str, record_id: str) -> Sealed:
        key = self.keyring.active
        nonce = secrets.token_bytes(NONCE_BYTES)
        plaintext = orjson.dumps(dict(document))
        ciphertext = AESGCM(key.material).encrypt(nonce, plaintext, _aad(purpose, tenant_id, record_id, key.kid))
        return Sealed(key.kid, nonce, ciphertext)

    def open(self, sealed: Sealed, *, purpose: str, tenant_id: str, record_id: str) -> dict[str, Any]:
        """The document sealed in `sealed`.

        :raises VaultError: unknown key id, or the ciphertext, nonce or binding do not authenticate.
        """
        key = self.keyring.get(sealed.key_id)
        if key is None:
            raise VaultError(f"sealed with key {sealed.key_id!r}, which is not in the keyring")
        if len(sealed.nonce) != NONCE_BYTES:
            raise VaultError("malformed nonce")
        try:
            plaintext = AESGCM(key.material).decrypt(
                sealed.nonce, sealed.ciphertext, _aad(purpose, tenant_id, record_id, sealed.key_id)
            )
        except InvalidTag:
            raise VaultError("the sealed record does not authenticate (tampered, or moved from another row)") from None
        document = orjson.loads(plaintext)
        if not isinstance(document, dict):
            raise VaultError("the sealed record is not a JSON object")
        return document

    def reseal(self, sealed: Sealed, *, purpose: str, tenant_id: str, record_id: str) -> Sealed:
        """`sealed` opened and sealed again under the active key (key rotation)."""
        document = self.open(sealed, purpose=purpose, tenant_id=tenant_id, record_id=record_id)
        return self.seal(document, purpose=purpose, tenant_id=tenant_id, record_id=record_id)

    # -- signatures (OAuth state) ----------------------------------------------------------

    def _mac_key(self, key: VaultKey, purpose: str) -> bytes:
        # A separate key per purpose, derived so the encryption key is never used for MACs.
        return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=f"hub-mac/1:{purpose}".encode()).derive(key.material)

    def sign(self, data: bytes, *, purpose: str) -> str:
        """`kid.base64url(HMAC-SHA256)` of `data` under a key derived from the active key."""
        key = self.keyring.active
        tag = hmac.new(self._mac_key(key, purpose), data, hashlib.sha256).digest()
        return f"{key.kid}.{base64.urlsafe_b64encode(tag).decode().rstrip('=')}"

    def verify(self, data: bytes, signature: str, *, purpose: str) -> bool:
        """Whether `signature` (from `sign`) is valid for `data`, in constant time."""
        kid, _, encoded = signature.partition(".")
        key = self.keyring.get(kid)
        if key is None or not encoded:
            return False
        expected = hmac.new(self._mac_key(key, purpose), data, hashlib.sha256).digest()
        given = base64.urlsafe_b64encode(expected).decode().rstrip("=")
        return hmac.compare_digest(given.encode(), encoded.encode())
