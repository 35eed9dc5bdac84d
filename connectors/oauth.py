"""The host's side of OAuth 2.0: the authorization-code flow with PKCE (authlib's helpers),
and which OAuth client a connection uses.

Imports the SDK only; the hub and the worker call it. The flow's persistence (the state,
the verifier, the tokens) belongs to the host.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from pydantic import BaseModel, SecretStr

from connectors.sdk import AuthSpec, OAuth2AuthorizationCode, OAuth2ClientCredentials
from connectors.sdk._auth import _token_request

# RFC 7636: 43-128 characters; 64 from authlib's unreserved alphabet is ~380 bits.
VERIFIER_LENGTH = 64
CLIENT_ID_FIELD = "client_id"
CLIENT_SECRET_FIELD = "client_secret"


@dataclass(frozen=True)
class OAuthClient:
    """An OAuth client registration (the app the provider knows)."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the admin's browser, and the PKCE verifier to keep for the callback."""

    url: str
    code_verifier: str | None = field(repr=False)


def is_oauth(spec: AuthSpec | None) -> bool:
    return isinstance(spec, (OAuth2AuthorizationCode, OAuth2ClientCredentials))


def client_for(
    connector_key: str,
    config: BaseModel,
    secrets: Mapping[str, str],
    registered: Mapping[str, OAuthClient],
) -> OAuthClient | None:
    """The OAuth client of one connection: its own (a connector whose ``Config`` declares
    ``client_id``/``client_secret``, typical of client-credentials APIs where each customer
    registers an app) or else the hub's registration for the connector (``HUB_OAUTH_CLIENTS``,
    typical of authorization-code apps like Salesforce's connected app)."""
    own_id = secrets.get(CLIENT_ID_FIELD) or getattr(config, CLIENT_ID_FIELD, None)
    if isinstance(own_id, SecretStr):
        own_id = own_id.get_secret_value()
    if isinstance(own_id, str) and own_id:
        own_secret = secrets.get(CLIENT_SECRET_FIELD) or getattr(config, CLIENT_SECRET_FIELD, None)
        if isinstance(own_secret, SecretStr):
            own_secret = own_secret.get_secret_value()
        return OAuthClient(own_id, own_secret if isinstance(own_secret, str) and own_secret else None)
    return registered.get(connector_key)


def authorization_request(
    spec: OAuth2AuthorizationCode, client: OAuthClient, *, redirect_uri: str, state: str
) -> AuthorizationRequest:
    """The provider's authorization URL with ``state`` and, if the spec wants PKCE, an S256
    code challenge whose verifier the host must keep for ``exchange_code``."""
    verifier = generate_token(VERIFIER_LENGTH) if spec.pkce else None
    extra: dict[str, Any] = dict(spec.authorize_params)
    if verifier is not None:
        extra.update(code_challenge=create_s256_code_challenge(verifier), code_challenge_method="S256")
    url = prepare_grant_uri(
        spec.authorize_url,
        client.client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=" ".join(spec.scopes) or None,
        state=state,
        **extra,
    )
    return AuthorizationRequest(url=str(url), code_verifier=verifier)


def with_expiry(token: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """``token`` with ``expires_at`` (epoch seconds) derived from ``expires_in`` if missing."""
    out = dict(token)
    if "expires_at" not in out and out.get("expires_in") is not None:
        try:
            out["expires_at"] = int((now if now is not None else time.time()) + float(out["expires_in"]))
        except (TypeError, ValueError):
            pass
    return out


async def exchange_code(
    http: httpx.AsyncClient,
    spec: OAuth2AuthorizationCode,
    client: OAuthClient,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str | None,
) -> dict[str, Any]:
    """Trade an authorization code for tokens (RFC 6749 §4.1.3, with the PKCE verifier).

    :raises AuthError: the provider refused the code, verifier or client.
    :raises ProviderUnavailable: the token endpoint failed or could not be reached.
    """
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "client_id": client.client_id}
    if client.client_secret:
        form["client_secret"] = client.client_secret
    if code_verifier:
        form["code_verifier"] = code_verifier
    return with_expiry(await _token_request(http, spec.token_url, form))
