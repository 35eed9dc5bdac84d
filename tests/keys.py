"""Signing keys for JWT tests: an RSA and an EC key, published as a JWKS file."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

RSA_KID = "test-rsa"
EC_KID = "test-ec"


@lru_cache(maxsize=1)
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@lru_cache(maxsize=1)
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_jwks(path: Path) -> Path:
    keys = []
    for kid, alg, public in (
        (RSA_KID, "RS256", json.loads(RSAAlgorithm.to_jwk(rsa_key().public_key()))),
        (EC_KID, "ES256", json.loads(ECAlgorithm.to_jwk(ec_key().public_key()))),
    ):
        keys.append({**public, "kid": kid, "alg": alg, "use": "sig"})
    path.write_text(json.dumps({"keys": keys}))
    return path


def make_token(
    *,
    tenant_id: str,
    roles: list[str],
    sub: str = "user-1",
    alg: str = "HS256",
    secret: str | None = None,
    issuer: str = "https://idp.test",
    audience: str = "deal-hub",
    expires_in: int = 300,
    not_before: int | None = None,
    extra: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "tenant_id": tenant_id,
        "sub": sub,
        "roles": roles,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + expires_in,
        **(extra or {}),
    }
    if not_before is not None:
        claims["nbf"] = now + not_before
    for name in drop:
        claims.pop(name, None)
    if alg == "HS256":
        from tests.conftest import TEST_JWT_SECRET

        return jwt.encode(claims, secret or TEST_JWT_SECRET, algorithm="HS256")
    if alg == "RS256":
        return jwt.encode(claims, rsa_key(), algorithm="RS256", headers={"kid": RSA_KID})
    return jwt.encode(claims, ec_key(), algorithm="ES256", headers={"kid": EC_KID})
