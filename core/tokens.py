"""Bearer JWTs: HS256 with a shared secret (development), RS256/ES256 against a
JWKS from a file or URL (an enterprise IdP). `exp` is required; `nbf`, `iss` and
`aud` are checked; the claims `tenant_id`, `sub` and `roles` make the principal."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from core.errors import Unauthorized
from core.identity import Principal
from core.roles import parse_roles
from core.settings import Settings

_ASYMMETRIC = {"RS256", "ES256"}
_JWKS_TTL_SECONDS = 300.0
# An unknown `kid` triggers a refetch, at most this often (key rotation, not a DoS lever).
_JWKS_MIN_REFETCH_SECONDS = 30.0


class JWTVerifier:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_seconds
        self._algorithms = set(settings.jwt_algorithms)
        self._jwks_url = settings.jwks_url
        self._jwks_file = settings.jwks_file
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._secret or self._jwks_url or self._jwks_file)

    async def _load_jwks(self, *, force: bool = False) -> None:
        age = time.monotonic() - self._fetched_at
        if self._keys and not force and age < _JWKS_TTL_SECONDS:
            return
        if force and age < _JWKS_MIN_REFETCH_SECONDS:
            return
        async with self._lock:
            if self._jwks_file is not None:
                data = await asyncio.to_thread(self._jwks_file.read_text)
            else:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self._jwks_url or "")
                    response.raise_for_status()
                    data = response.text
            jwks = PyJWKSet.from_dict(json.loads(data))
            self._keys = {k.key_id or "": k for k in jwks.keys}
            self._fetched_at = time.monotonic()

    async def _key_for(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthorized("Token algorithm not accepted")
        if alg == "HS256":
            if not self._secret:
                raise Unauthorized("Token algorithm not accepted")
            return self._secret
        if alg not in _ASYMMETRIC or not (self._jwks_url or self._jwks_file):
            raise Unauthorized("Token algorithm not accepted")
        kid = header.get("kid") or ""
        try:
            await self._load_jwks()
            if kid not in self._keys:
                await self._load_jwks(force=True)
        except (OSError, httpx.HTTPError, ValueError, jwt.PyJWTError):
            raise Unauthorized("Signing keys are unavailable") from None
        key = self._keys.get(kid) or (next(iter(self._keys.values())) if len(self._keys) == 1 and not kid else None)
        if key is None:
            raise Unauthorized("Token signed with an unknown key")
        if key.algorithm_name != alg:
            # A kid naming a key of another algorithm (an EC key for RS256): not this key.
            raise Unauthorized("Token signed with an unknown key")
        return key.key

    async def verify(self, token: str) -> Principal:
        if not self.enabled:
            raise Unauthorized("Bearer tokens are not enabled")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Malformed bearer token") from None
        key = await self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "tenant_id"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Token issuer not accepted") from None
        except jwt.PyJWTError:
            raise Unauthorized("Invalid bearer token") from None
        tenant_id, sub = claims.get("tenant_id"), claims.get("sub")
        if not isinstance(tenant_id, str) or not isinstance(sub, str):
            raise Unauthorized("Token claims tenant_id and sub must be strings")
        return Principal(tenant_id=tenant_id, actor_kind="user", actor_id=sub, roles=parse_roles(claims.get("roles")))
