"""Authentication (API keys, JWTs), authorisation (the policy table) and the
settings that guard them."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import fastapi.routing
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.routing import APIRoute
from pydantic import ValidationError

from core.roles import POLICY, Permission, Role
from core.settings import Settings
from tests.conftest import TEST_JWT_SECRET, deal_body
from tests.keys import EC_KID, RSA_KID, ec_key, make_token, rsa_key

PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    for field in ("type", "title", "detail", "request_id"):
        assert body[field], field
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A JWT built by hand, for tokens a JWT library refuses to produce."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


def good_claims(tenant_id: str, roles: list[str] | None = None) -> dict[str, Any]:
    now = int(time.time())
    return {
        "tenant_id": tenant_id,
        "sub": "user-1",
        "roles": roles or ["ADMIN"],
        "iss": "https://idp.test",
        "aud": "deal-hub",
        "iat": now,
        "exp": now + 300,
    }


# --------------------------------------------------------------------------- API keys


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credential"),
        pytest.param({"X-API-Key": ""}, id="empty-key"),
        pytest.param({"X-API-Key": "not-a-key"}, id="malformed"),
        pytest.param({"X-API-Key": "hub_abc_def"}, id="malformed-short-prefix"),
        pytest.param({"X-API-Key": "hub_0123456789ab_c_d"}, id="malformed-extra-part"),
        pytest.param({"X-API-Key": "hub_0123456789ab_" + "A" * 43}, id="unknown-prefix"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic-auth"),
        pytest.param({"Authorization": "Bearer"}, id="empty-bearer"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, id="garbage-bearer"),
    ],
)
async def test_missing_or_bad_credential_is_401_problem(client, tenant, headers):
    r = await client.get("/api/v1/me", headers=headers)
    assert_problem(r, 401, "UNAUTHORIZED")
    assert "www-authenticate" in r.headers


async def test_key_with_known_prefix_but_wrong_secret_is_401(client, tenant):
    real = tenant.keys[Role.ADMIN]
    prefix = real.rsplit("_", 1)[0]
    forged = prefix + "_" + ("B" * 43 if not real.endswith("B" * 43) else "C" * 43)
    assert (await client.get("/api/v1/me", headers={"X-API-Key": real})).status_code == 200
    assert_problem(await client.get("/api/v1/me", headers={"X-API-Key": forged}), 401, "UNAUTHORIZED")


async def test_api_key_identifies_tenant_and_role(client, tenant):
    r = await client.get("/api/v1/me", headers=tenant.headers(Role.AUDITOR))
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["tenant_id"] == tenant.id
    assert me["tenant_name"] == tenant.name
    assert me["actor_kind"] == "api_key"
    assert me["roles"] == ["AUDITOR"]


async def test_revoked_key_stops_working_at_once(client, tenant):
    admin = tenant.headers(Role.ADMIN)
    r = await client.post("/api/v1/api-keys", json={"name": "crm", "roles": ["INTEGRATION_SERVICE"]}, headers=admin)
    assert r.status_code == 201, r.text
    issued = r.json()
    key_headers = {"X-API-Key": issued["key"]}
    # Used once, so any principal cache holds it.
    assert (await client.get("/api/v1/deals", headers=key_headers)).status_code == 200

    r = await client.delete(f"/api/v1/api-keys/{issued['id']}", headers=admin)
    assert r.status_code == 204, r.text

    assert_problem(await client.get("/api/v1/deals", headers=key_headers), 401, "UNAUTHORIZED")
    listed = {k["id"]: k for k in (await client.get("/api/v1/api-keys", headers=admin)).json()["items"]}
    assert listed[issued["id"]]["revoked_at"] is not None
    # Revoking again is harmless; other keys keep working.
    assert (await client.delete(f"/api/v1/api-keys/{issued['id']}", headers=admin)).status_code == 204
    assert (await client.get("/api/v1/me", headers=admin)).status_code == 200


async def test_revoking_unknown_key_is_404(client, tenant):
    r = await client.delete(f"/api/v1/api-keys/{uuid.uuid4()}", headers=tenant.headers())
    assert_problem(r, 404, "NOT_FOUND")


async def test_issued_key_is_shown_once_and_works(client, tenant):
    admin = tenant.headers(Role.ADMIN)
    r = await client.post("/api/v1/api-keys", json={"name": "analyst bot", "roles": ["ANALYST"]}, headers=admin)
    assert r.status_code == 201, r.text
    issued = r.json()
    plaintext = issued["key"]
    assert plaintext.startswith(issued["prefix"])
    assert issued["roles"] == ["ANALYST"]
    assert issued["revoked_at"] is None

    me = await client.get("/api/v1/me", headers={"X-API-Key": plaintext})
    assert me.status_code == 200, me.text
    assert me.json()["tenant_id"] == tenant.id
    assert me.json()["actor_id"] == issued["id"]
    assert me.json()["roles"] == ["ANALYST"]
    # The new key has exactly its roles: an ANALYST cannot manage keys.
    assert_problem(await client.get("/api/v1/api-keys", headers={"X-API-Key": plaintext}), 403, "FORBIDDEN")


async def test_replayed_issue_does_not_show_the_secret_again(client, tenant):
    admin = tenant.headers(Role.ADMIN, **{"Idempotency-Key": str(uuid.uuid4())})
    body = {"name": "once", "roles": ["PARTNER"]}
    first = await client.post("/api/v1/api-keys", json=body, headers=admin)
    assert first.status_code == 201, first.text
    assert first.json()["key"]
    again = await client.post("/api/v1/api-keys", json=body, headers=admin)
    assert again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["key"] is None
    assert first.json()["key"] not in again.text


async def test_key_list_and_audit_never_contain_secrets(client, tenant):
    admin = tenant.headers(Role.ADMIN)
    r = await client.post("/api/v1/api-keys", json={"name": "listed", "roles": ["ANALYST"]}, headers=admin)
    issued = r.json()
    plaintext = issued["key"]
    secret_part = plaintext.rsplit("_", 1)[1]
    key_hash = hashlib.sha256(plaintext.encode()).hexdigest()

    listing = await client.get("/api/v1/api-keys", headers=admin)
    assert listing.status_code == 200, listing.text
    items = listing.json()["items"]
    assert {k["id"] for k in items} >= {issued["id"]}
    assert len(items) == len(Role) + 1  # one per role from the fixture, plus this one
    mine = next(k for k in items if k["id"] == issued["id"])
    assert mine["prefix"] == plaintext[: len(mine["prefix"])]
    assert "key" not in mine
    for fixture_key in tenant.keys.values():
        assert fixture_key not in listing.text
        assert fixture_key.rsplit("_", 1)[1] not in listing.text
    assert plaintext not in listing.text
    assert secret_part not in listing.text
    assert key_hash not in listing.text

    trail = await client.get("/api/v1/audit-events", params={"resource_type": "api_key"}, headers=admin)
    assert trail.status_code == 200
    assert any(e["resource"]["id"] == issued["id"] for e in trail.json()["items"])
    assert secret_part not in trail.text
    assert key_hash not in trail.text


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.ADMIN])
async def test_only_admin_manages_keys(client, tenant, role):
    headers = tenant.headers(role)
    assert_problem(await client.get("/api/v1/api-keys", headers=headers), 403, "FORBIDDEN")
    r = await client.post("/api/v1/api-keys", json={"name": "sneaky", "roles": ["ADMIN"]}, headers=headers)
    assert_problem(r, 403, "FORBIDDEN")
    victim = (await client.get("/api/v1/me", headers=tenant.headers(Role.ANALYST))).json()["actor_id"]
    assert_problem(await client.delete(f"/api/v1/api-keys/{victim}", headers=headers), 403, "FORBIDDEN")
    # Nothing was issued or revoked.
    listed = (await client.get("/api/v1/api-keys", headers=tenant.headers(Role.ADMIN))).json()["items"]
    assert len(listed) == len(Role)
    assert all(k["revoked_at"] is None for k in listed)


async def test_issue_key_validates_roles(client, tenant):
    admin = tenant.headers(Role.ADMIN)
    r = await client.post("/api/v1/api-keys", json={"name": "x", "roles": []}, headers=admin)
    assert_problem(r, 422, "VALIDATION_FAILED")
    r = await client.post("/api/v1/api-keys", json={"name": "x", "roles": ["SUPERUSER"]}, headers=admin)
    assert_problem(r, 422, "VALIDATION_FAILED")


# --------------------------------------------------------------------------- JWTs


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
async def test_jwt_accepted(client, tenant, alg):
    token = make_token(tenant_id=tenant.id, roles=["PARTNER", "IC_MEMBER"], sub="alice@fund.example", alg=alg)
    r = await client.get("/api/v1/me", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenant_id": tenant.id,
        "tenant_name": tenant.name,
        "actor_kind": "user",
        "actor_id": "alice@fund.example",
        "roles": ["IC_MEMBER", "PARTNER"],
    }


async def test_jwt_roles_are_enforced(client, tenant):
    analyst = bearer(make_token(tenant_id=tenant.id, roles=["ANALYST"]))
    assert (await client.get("/api/v1/deals", headers=analyst)).status_code == 200
    assert_problem(await client.get("/api/v1/audit-events", headers=analyst), 403, "FORBIDDEN")


@functools.lru_cache(maxsize=1)
def _other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rsa_public_pem() -> bytes:
    return rsa_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _bad_tokens(tenant_id: str) -> dict[str, str]:
    claims = good_claims(tenant_id)
    hs = lambda key: lambda data: hmac.new(key, data, hashlib.sha256).digest()  # noqa: E731
    return {
        "expired": make_token(tenant_id=tenant_id, roles=["ADMIN"], expires_in=-3600),
        "expired-rs256": make_token(tenant_id=tenant_id, roles=["ADMIN"], alg="RS256", expires_in=-3600),
        "not-yet-valid": make_token(tenant_id=tenant_id, roles=["ADMIN"], not_before=3600),
        "wrong-issuer": make_token(tenant_id=tenant_id, roles=["ADMIN"], issuer="https://evil.test"),
        "wrong-audience": make_token(tenant_id=tenant_id, roles=["ADMIN"], audience="other-app"),
        "wrong-audience-es256": make_token(tenant_id=tenant_id, roles=["ADMIN"], alg="ES256", audience="other-app"),
        "missing-exp": make_token(tenant_id=tenant_id, roles=["ADMIN"], drop=("exp",)),
        "missing-tenant": make_token(tenant_id=tenant_id, roles=["ADMIN"], drop=("tenant_id",)),
        "missing-sub": make_token(tenant_id=tenant_id, roles=["ADMIN"], drop=("sub",)),
        "missing-issuer": make_token(tenant_id=tenant_id, roles=["ADMIN"], drop=("iss",)),
        "missing-audience": make_token(tenant_id=tenant_id, roles=["ADMIN"], drop=("aud",)),
        "tenant-not-a-string": make_token(tenant_id=tenant_id, roles=["ADMIN"], extra={"tenant_id": 42}),
        "hs256-other-secret": make_token(tenant_id=tenant_id, roles=["ADMIN"], secret="another-secret-" + "z" * 40),
        "rs256-other-key": jwt.encode(claims, _other_rsa_key(), algorithm="RS256", headers={"kid": RSA_KID}),
        "es256-other-key": jwt.encode(
            claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": EC_KID}
        ),
        "tampered-payload": _tamper(make_token(tenant_id=tenant_id, roles=["ANALYST"]), {**claims, "roles": ["ADMIN"]}),
        "alg-none": hand_made_token({"alg": "none", "typ": "JWT"}, claims),
        "alg-None": hand_made_token({"alg": "None", "typ": "JWT"}, claims),
        "alg-hs512": jwt.encode(claims, TEST_JWT_SECRET + "x" * 40, algorithm="HS512"),
        # Algorithm confusion: HS256 keyed with the IdP's public key, which anyone can read.
        "hs256-with-rsa-public-pem": hand_made_token(
            {"alg": "HS256", "typ": "JWT", "kid": RSA_KID}, claims, hs(_rsa_public_pem())
        ),
        "rs256-header-hmac-signed": hand_made_token(
            {"alg": "RS256", "typ": "JWT", "kid": RSA_KID}, claims, hs(_rsa_public_pem())
        ),
        "unknown-kid": jwt.encode(claims, rsa_key(), algorithm="RS256", headers={"kid": "no-such-key"}),
        "no-kid": jwt.encode(claims, rsa_key(), algorithm="RS256"),
        # A kid naming a key of another type than the token's algorithm.
        "es256-with-rsa-kid": jwt.encode(claims, ec_key(), algorithm="ES256", headers={"kid": RSA_KID}),
        "rs256-with-ec-kid": jwt.encode(claims, rsa_key(), algorithm="RS256", headers={"kid": EC_KID}),
        "alg-not-a-string": hand_made_token({"alg": ["HS256"], "typ": "JWT"}, claims, hs(TEST_JWT_SECRET.encode())),
        "header-not-json": "bm90LWpzb24." + b64url(json.dumps(claims).encode()) + ".c2ln",
    }


def _tamper(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


BAD_TOKEN_CASES = list(_bad_tokens("t").keys())


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
async def test_bad_jwt_is_401(client, tenant, case):
    token = _bad_tokens(tenant.id)[case]
    r = await client.get("/api/v1/me", headers=bearer(token))
    body = assert_problem(r, 401, "UNAUTHORIZED")
    assert token not in r.text
    assert "Traceback" not in body["detail"]


async def test_good_token_still_accepted_alongside_bad_cases(client, tenant):
    # Guards the 401 cases above: the claims they start from are otherwise valid.
    claims = good_claims(tenant.id)
    for token in (
        jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256"),
        jwt.encode(claims, rsa_key(), algorithm="RS256", headers={"kid": RSA_KID}),
        jwt.encode(claims, ec_key(), algorithm="ES256", headers={"kid": EC_KID}),
    ):
        assert (await client.get("/api/v1/me", headers=bearer(token))).status_code == 200


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
async def test_jwt_for_unknown_tenant_is_401(client, alg):
    token = make_token(tenant_id=str(uuid.uuid4()), roles=["ADMIN"], alg=alg)
    assert_problem(await client.get("/api/v1/me", headers=bearer(token)), 401, "UNAUTHORIZED")
    assert_problem(await client.get("/api/v1/deals", headers=bearer(token)), 401, "UNAUTHORIZED")


async def test_unknown_role_names_grant_nothing(client, tenant):
    nothing = bearer(make_token(tenant_id=tenant.id, roles=["SUPERUSER", "admin", "Admin", "*", "ROOT"]))
    for path in ("/api/v1/me", "/api/v1/deals", "/api/v1/api-keys", "/api/v1/audit-events"):
        assert_problem(await client.get(path, headers=nothing), 403, "FORBIDDEN")

    not_a_list = bearer(make_token(tenant_id=tenant.id, roles="ADMIN"))  # type: ignore[arg-type]
    assert_problem(await client.get("/api/v1/api-keys", headers=not_a_list), 403, "FORBIDDEN")

    mixed = bearer(make_token(tenant_id=tenant.id, roles=["ANALYST", "GOD_MODE", {"role": "ADMIN"}]))  # type: ignore[list-item]
    me = await client.get("/api/v1/me", headers=mixed)
    assert me.status_code == 200, me.text
    assert me.json()["roles"] == ["ANALYST"]
    assert_problem(await client.get("/api/v1/api-keys", headers=mixed), 403, "FORBIDDEN")


# --------------------------------------------------------------------------- RBAC

# One representative request per permission: (method, path, body, success statuses).
# Paths are the routes' templates; `{deal_id}` becomes a fresh deal per request and
# `{external_id}` a fresh external id.
REPRESENTATIVE: dict[Permission, tuple[str, str, dict[str, Any] | None, set[int]]] = {
    Permission.IDENTITY_READ: ("GET", "/api/v1/me", None, {200}),
    Permission.DEALS_READ: ("GET", "/api/v1/deals/{deal_id}", None, {200}),
    Permission.DEALS_WRITE: ("PATCH", "/api/v1/deals/{deal_id}", {"stage": "ic_review"}, {200}),
    Permission.DEALS_DELETE: ("DELETE", "/api/v1/deals/{deal_id}", None, {204}),
    Permission.DEALS_UPSERT: ("PUT", "/api/v1/deals/by-ref/{system}/{external_id}", deal_body(), {201}),
    Permission.AUDIT_READ: ("GET", "/api/v1/audit-events", None, {200}),
    Permission.API_KEYS_MANAGE: ("GET", "/api/v1/api-keys", None, {200}),
    Permission.CONNECTORS_READ: ("GET", "/api/v1/connectors", None, {200}),
    Permission.CONNECTIONS_MANAGE: ("GET", "/api/v1/connections", None, {200}),
    Permission.WEBHOOKS_MANAGE: ("GET", "/api/v1/webhook-endpoints", None, {200}),
    Permission.RUNS_READ: ("GET", "/api/v1/runs", None, {200}),
    # An unknown run: allowed roles get past authorisation to the 404.
    Permission.RUNS_MANAGE: ("POST", "/api/v1/runs/{run_id}/cancel", None, {404}),
}
# Routes that take no credential, on purpose (a `hub.auth.public(reason)` dependency).
PUBLIC_ROUTES = {("GET", "/api/v1/oauth/callback")}


def api_routes(app: Any) -> list[Any]:
    """Every route the app serves, including those of included routers (newer FastAPI
    versions keep included routers as one entry of `app.routes` and expand them lazily)."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(iter_contexts(app.routes)) if iter_contexts is not None else list(app.routes)


def _is_public(dependant: Any) -> bool:
    return getattr(dependant.call, "public", None) is not None or any(_is_public(d) for d in dependant.dependencies)


def public_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of the API routes declared public."""
    return {
        (method, route.path)
        for route in api_routes(app)
        if (getattr(route, "path", None) or "").startswith("/api/") and _is_public(route.dependant)
        for method in route.methods
    }


def route_permissions(app: Any) -> dict[tuple[str, str], set[Permission]]:
    """(method, path) of every API route but the public ones -> the permissions its
    dependencies require."""
    found: dict[tuple[str, str], set[Permission]] = {}

    def walk(dependant: Any, into: set[Permission]) -> None:
        permission = getattr(dependant.call, "permission", None)
        if permission is not None:
            into.add(permission)
        for sub in dependant.dependencies:
            walk(sub, into)

    for route in api_routes(app):
        path = getattr(route, "path", None) or ""
        if path.startswith("/api/") and not _is_public(route.dependant):
            assert isinstance(getattr(route, "original_route", route), APIRoute), path
            for method in route.methods:
                perms: set[Permission] = set()
                walk(route.dependant, perms)
                found[(method, path)] = perms
    return found


async def _fresh_deal(client, tenant) -> str:
    r = await client.post("/api/v1/deals", json=deal_body(f"rbac {uuid.uuid4().hex[:8]}"), headers=tenant.headers())
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.parametrize("permission", list(REPRESENTATIVE), ids=lambda p: p.value)
async def test_policy_table_per_role(app, client, make_tenant, permission):
    method, template, body, ok = REPRESENTATIVE[permission]
    # The representative route really is guarded by this permission.
    assert route_permissions(app)[(method, template)] == {permission}
    tenant = await make_tenant()
    outcomes: dict[Role, int] = {}
    for role in Role:
        path = template.format(
            deal_id=await _fresh_deal(client, tenant), system="salesforce", external_id=uuid.uuid4().hex,
            run_id=uuid.uuid4(),
        )
        r = await client.request(method, path, json=body, headers=tenant.headers(role))
        outcomes[role] = r.status_code
        if role in POLICY[permission]:
            assert r.status_code in ok, (role, r.status_code, r.text)
        else:
            assert_problem(r, 403, "FORBIDDEN")
    allowed = {role for role, status in outcomes.items() if status != 403}
    assert allowed == set(POLICY[permission])


async def test_every_guarded_permission_has_a_representative(app):
    used = set().union(*route_permissions(app).values())
    assert used, "no API route requires a permission"
    assert used <= set(REPRESENTATIVE), f"add a representative request for {used - set(REPRESENTATIVE)}"


def _fill(path: str) -> str:
    values = {"system": "salesforce", "external_id": "rbac-probe"}
    out = path
    for name in [part[1:-1] for part in path.split("/") if part.startswith("{")]:
        out = out.replace("{" + name + "}", values.get(name, str(uuid.uuid4())))
    return out


async def test_every_api_route_enforces_its_policy_for_every_role(app, client, tenant):
    """Each route, each role: denied roles get 403 before anything else happens;
    allowed roles get past authorisation (404/422 on the probe's dummy ids and body)."""
    failures = []
    routes = route_permissions(app)
    assert len(routes) >= 10
    for (method, path), perms in sorted(routes.items()):
        (permission,) = perms
        for role in Role:
            body = {} if method in {"POST", "PUT", "PATCH"} else None
            r = await client.request(method, _fill(path), json=body, headers=tenant.headers(role))
            denied = role not in POLICY[permission]
            if denied and (r.status_code != 403 or r.json().get("code") != "FORBIDDEN"):
                failures.append((method, path, role.value, r.status_code))
            if not denied and r.status_code in (401, 403):
                failures.append((method, path, role.value, r.status_code))
    assert not failures


def test_only_the_listed_routes_are_public(app):
    assert public_routes(app) == PUBLIC_ROUTES


def test_every_api_route_requires_a_permission(app):
    routes = route_permissions(app)
    assert len(routes) >= 10
    unprotected = sorted(key for key, perms in routes.items() if not perms)
    assert not unprotected, f"routes without a require(...) dependency: {unprotected}"
    ambiguous = sorted(key for key, perms in routes.items() if len(perms) > 1)
    assert not ambiguous


def test_policy_table_covers_every_permission_and_only_admin_manages():
    assert set(POLICY) == set(Permission)
    for permission in (
        Permission.API_KEYS_MANAGE,
        Permission.CONNECTIONS_MANAGE,
        Permission.WEBHOOKS_MANAGE,
    ):
        assert POLICY[permission] == frozenset({Role.ADMIN})
    assert Role.AUDITOR in POLICY[Permission.AUDIT_READ]
    assert Role.INTEGRATION_SERVICE in POLICY[Permission.DEALS_UPSERT]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "secret",
    ["changeme", "secret", "CHANGEME", "  password  ", "", "short-but-random-9f3k", "x" * 31],
)
def test_placeholder_or_short_jwt_secret_is_refused(secret):
    with pytest.raises(ValidationError) as info:
        Settings(jwt_secret=secret)
    assert "jwt_secret" in str(info.value)


def test_jwt_secret_from_environment_is_checked(monkeypatch):
    monkeypatch.setenv("HUB_JWT_SECRET", "changeme")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("HUB_JWT_SECRET", "r" * 32)
    assert Settings().jwt_secret.get_secret_value() == "r" * 32  # type: ignore[union-attr]


def test_long_random_secret_is_accepted():
    assert Settings(jwt_secret="x" * 32).jwt_secret is not None
    assert Settings(jwt_secret=None).jwt_secret is None
