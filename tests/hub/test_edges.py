"""The HTTP edge: every error is a problem document, request ids are kept or
replaced, oversized and non-JSON bodies are refused, failures leak nothing and
change nothing, and the OpenAPI document describes all of it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core import outbox
from core.models import AuditEvent, Deal, OutboxEvent
from core.roles import Role
from tests.conftest import deal_body

PROBLEM = "application/problem+json"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "details", "request_id"}
UUID_LEN = 36


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM
    body = response.json()
    assert PROBLEM_FIELDS <= set(body), body
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    assert body["code"] == body["code"].upper() and " " not in body["code"]
    if code is not None:
        assert body["code"] == code
    assert isinstance(body["details"], list)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def row_counts(db, tenant_id: str) -> dict[str, int]:
    async with db.read(tenant_id) as session:
        return {
            model.__name__: (await session.execute(select(func.count()).select_from(model))).scalar_one()
            for model in (Deal, AuditEvent, OutboxEvent)
        }


def big_deal(size: int) -> dict[str, Any]:
    return deal_body(attributes={"blob": "x" * size})


# Every route that takes a JSON body: (method, path template, a valid body).
BODY_ROUTES = [
    ("POST", "/api/v1/deals", deal_body()),
    ("PATCH", "/api/v1/deals/{deal_id}", {"stage": "ic_review"}),
    ("PUT", "/api/v1/deals/by-ref/salesforce/edge-1", deal_body()),
    ("POST", "/api/v1/deals/batch-upsert", {"items": [{"system": "salesforce", "external_id": "b1", "deal": deal_body()}]}),
    ("POST", "/api/v1/api-keys", {"name": "k", "roles": ["ANALYST"]}),
]
BODY_ROUTE_IDS = [f"{m} {p}" for m, p, _ in BODY_ROUTES]


async def existing_deal(client, tenant) -> str:
    r = await client.post("/api/v1/deals", json=deal_body("existing"), headers=tenant.headers())
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --------------------------------------------------------------------------- error shapes


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/deals", "/nope", "/api/v1/deals/x/y/z/w"])
async def test_unknown_route_is_404_problem(client, tenant, path):
    r = await client.get(path, headers=tenant.headers())
    assert_problem(r, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/api/v1/deals"), ("DELETE", "/api/v1/deals"), ("POST", "/api/v1/me"), ("PATCH", "/api/v1/api-keys")],
)
async def test_wrong_method_is_405_problem(client, tenant, method, path):
    r = await client.request(method, path, headers=tenant.headers())
    body = assert_problem(r, 405, "METHOD_NOT_ALLOWED")
    assert "allow" in r.headers
    assert body["title"]


@pytest.mark.parametrize(("method", "template", "valid"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
async def test_malformed_json_is_400_problem(client, db, tenant, method, template, valid):
    path = template.format(deal_id=await existing_deal(client, tenant))
    before = await row_counts(db, tenant.id)
    r = await client.request(
        method, path, content=b'{"name": "Acme", ', headers=tenant.headers(**{"Content-Type": "application/json"})
    )
    assert_problem(r, 400, "MALFORMED_JSON")
    assert await row_counts(db, tenant.id) == before


async def test_validation_error_is_422_without_echoing_input(client, db, tenant):
    before = await row_counts(db, tenant.id)
    body = {
        "name": "",
        "currency": "SECRET-VALUE-currency",
        "amount": "SECRET-VALUE-amount",
        "close_date": "SECRET-VALUE-date",
        "attributes": "SECRET-VALUE-attributes",
        "external_refs": [{"system": "SECRET VALUE system", "external_id": "x"}],
        "password": "SECRET-VALUE-extra",
    }
    r = await client.post("/api/v1/deals", json=body, headers=tenant.headers())
    problem = assert_problem(r, 422, "VALIDATION_FAILED")
    assert "SECRET" not in r.text
    fields = {tuple(d["loc"]) for d in problem["details"]}
    for field in ("name", "currency", "amount", "close_date", "attributes", "password"):
        assert ("body", field) in fields, field
    for detail in problem["details"]:
        assert set(detail) >= {"loc", "msg"}
        assert "input" not in detail and "ctx" not in detail
    assert await row_counts(db, tenant.id) == before


async def test_query_validation_error_is_422_without_echoing_input(client, tenant):
    r = await client.get("/api/v1/deals", params={"limit": "SECRET-VALUE", "sort": "SECRET-SORT"}, headers=tenant.headers())
    problem = assert_problem(r, 422, "VALIDATION_FAILED")
    assert "SECRET" not in r.text
    assert {tuple(d["loc"]) for d in problem["details"]} >= {("query", "limit"), ("query", "sort")}


@pytest.mark.parametrize("cursor", ["²", "١٢", "9" * 32, str(2**63), "-1", "12a"], ids=repr)
async def test_bad_audit_cursor_is_422(client, tenant, cursor):
    """Unicode digits pass str.isdigit() but not int(), and too many digits overflow the
    bigint seq: both are the same 422 as any other cursor the API did not issue."""
    r = await client.get("/api/v1/audit-events", params={"cursor": cursor}, headers=tenant.headers(Role.AUDITOR))
    problem = assert_problem(r, 422, "VALIDATION_FAILED")
    assert problem["details"] == [{"loc": ["query", "cursor"], "msg": "invalid cursor"}]


async def test_the_largest_audit_cursor_is_accepted(client, tenant):
    r = await client.get("/api/v1/audit-events", params={"cursor": str(2**63 - 1)}, headers=tenant.headers(Role.AUDITOR))
    assert r.status_code == 200, r.text
    assert r.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(("method", "template", "valid"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
async def test_body_over_limit_with_content_length_is_413(client, db, settings, tenant, method, template, valid):
    path = template.format(deal_id=await existing_deal(client, tenant))
    before = await row_counts(db, tenant.id)
    payload = json.dumps({**valid, "padding": "x" * (settings.max_body_bytes + 1)}).encode()
    r = await client.request(method, path, content=payload, headers=tenant.headers(**{"Content-Type": "application/json"}))
    assert_problem(r, 413, "PAYLOAD_TOO_LARGE")
    assert await row_counts(db, tenant.id) == before


async def _stream(data: bytes, chunk: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def test_streamed_body_over_limit_is_413(client, db, settings, tenant):
    assert settings.max_body_bytes == 256 * 1024
    before = await row_counts(db, tenant.id)
    payload = json.dumps(big_deal(settings.max_body_bytes + 10)).encode()
    r = await client.post(
        "/api/v1/deals",
        content=_stream(payload),
        headers=tenant.headers(**{"Content-Type": "application/json"}),
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "PAYLOAD_TOO_LARGE")
    assert await row_counts(db, tenant.id) == before


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_delete_body_over_limit_is_413(client, db, settings, tenant, streamed):
    """A DELETE carrying an Idempotency-Key has its body read (to fingerprint it), so
    the limit holds for it as for POST, PUT and PATCH."""
    deal_id = await existing_deal(client, tenant)
    before = await row_counts(db, tenant.id)
    payload = b"x" * (settings.max_body_bytes + 1)
    r = await client.request(
        "DELETE",
        f"/api/v1/deals/{deal_id}",
        content=_stream(payload) if streamed else payload,
        headers=tenant.headers(**{"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"}),
    )
    assert_problem(r, 413, "PAYLOAD_TOO_LARGE")
    assert await row_counts(db, tenant.id) == before
    assert (await client.get(f"/api/v1/deals/{deal_id}", headers=tenant.headers())).status_code == 200


async def test_streamed_body_under_limit_is_accepted(client, settings, tenant):
    payload = json.dumps(big_deal(settings.max_body_bytes // 2)).encode()
    r = await client.post(
        "/api/v1/deals", content=_stream(payload), headers=tenant.headers(**{"Content-Type": "application/json"})
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 201, r.text


async def test_body_just_under_limit_with_content_length_is_accepted(client, settings, tenant):
    payload = json.dumps(big_deal(settings.max_body_bytes - 1024)).encode()
    assert len(payload) <= settings.max_body_bytes
    r = await client.post("/api/v1/deals", content=payload, headers=tenant.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("method", "template", "valid"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_body_is_415(client, db, tenant, method, template, valid, content_type):
    path = template.format(deal_id=await existing_deal(client, tenant))
    before = await row_counts(db, tenant.id)
    headers = tenant.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = await client.request(method, path, content=json.dumps(valid).encode(), headers=headers)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert await row_counts(db, tenant.id) == before


async def test_json_variants_are_accepted(client, tenant):
    deal_id = await existing_deal(client, tenant)
    r = await client.patch(
        f"/api/v1/deals/{deal_id}",
        content=json.dumps({"stage": "ic_review"}).encode(),
        headers=tenant.headers(**{"Content-Type": "application/merge-patch+json"}),
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/api/v1/deals",
        content=json.dumps(deal_body()).encode(),
        headers=tenant.headers(**{"Content-Type": "application/json; charset=utf-8"}),
    )
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- unhandled errors


async def test_unhandled_exception_is_500_without_internals(client, db, tenant, monkeypatch):
    async def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr("core.deals.create", boom)
    before = await row_counts(db, tenant.id)
    r = await client.post("/api/v1/deals", json=deal_body(), headers=tenant.headers(**{"X-Request-ID": "req-500-check"}))
    body = assert_problem(r, 500, "INTERNAL")
    assert body["request_id"] == "req-500-check"
    for leak in ("secret-internal-detail", "RuntimeError", "Traceback", 'File "', "core/deals", "boom"):
        assert leak not in r.text
    assert await row_counts(db, tenant.id) == before


async def test_database_error_is_500_without_sql(client, db, tenant, monkeypatch):
    async def boom(*args: Any, **kwargs: Any) -> None:
        raise IntegrityError("INSERT INTO deals (secret_column) VALUES (?)", {"secret_column": "s3cr3t"}, Exception("uq"))

    monkeypatch.setattr("core.deals.upsert_many", boom)
    r = await client.put("/api/v1/deals/by-ref/salesforce/sql-1", json=deal_body(), headers=tenant.headers())
    assert_problem(r, 500, "INTERNAL")
    for leak in ("INSERT", "secret_column", "s3cr3t", "IntegrityError", "sqlalchemy"):
        assert leak not in r.text


async def test_failure_after_the_change_rolls_everything_back(client, db, tenant, monkeypatch):
    """The deal row and its audit event are written before the outbox; a crash there
    must leave no deal, no audit event and no outbox event."""
    calls = []

    async def crash(self: outbox.Outbox) -> None:
        calls.append(len(self._pending))
        raise RuntimeError("secret-internal-detail")

    before = await row_counts(db, tenant.id)
    monkeypatch.setattr(outbox.Outbox, "flush", crash)
    r = await client.put("/api/v1/deals/by-ref/salesforce/atomic-1", json=deal_body("Atomic"), headers=tenant.headers())
    monkeypatch.undo()
    assert_problem(r, 500, "INTERNAL")
    assert "secret-internal-detail" not in r.text
    assert calls and calls[0] >= 1  # the crash came after the change was staged
    assert await row_counts(db, tenant.id) == before
    r = await client.get("/api/v1/deals/by-ref/salesforce/atomic-1", headers=tenant.headers())
    assert_problem(r, 404, "NOT_FOUND")
    trail = await client.get("/api/v1/audit-events/verify", headers=tenant.headers(Role.AUDITOR))
    assert trail.json()["intact"] is True
    # And the hub works normally afterwards.
    r = await client.put("/api/v1/deals/by-ref/salesforce/atomic-1", json=deal_body("Atomic"), headers=tenant.headers())
    assert r.status_code == 201, r.text
    after = await row_counts(db, tenant.id)
    assert after == {k: v + 1 for k, v in before.items()}


# --------------------------------------------------------------------------- request ids


async def test_valid_request_id_is_echoed(client, tenant):
    rid = "client-req_42.abc:7"
    r = await client.get("/api/v1/me", headers=tenant.headers(**{"X-Request-ID": rid}))
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid


async def test_correlation_id_is_used_as_request_id(client, tenant):
    rid = str(uuid.uuid4())
    r = await client.get("/api/v1/nope", headers=tenant.headers(**{"X-Correlation-ID": rid}))
    assert r.headers["x-request-id"] == rid
    assert r.json()["request_id"] == rid


async def test_valid_correlation_id_wins_over_an_invalid_request_id(client, tenant):
    rid = "corr-123"
    r = await client.get("/api/v1/me", headers=tenant.headers(**{"X-Request-ID": "has spaces", "X-Correlation-ID": rid}))
    assert r.headers["x-request-id"] == rid


@pytest.mark.parametrize(
    "bad", ["x" * 129, "has spaces", "semi;colon", "new\tline", "ünïcode", "<script>", "a,b", ""]
)
async def test_invalid_request_id_is_replaced_by_a_uuid(client, tenant, bad):
    headers = tenant.headers()
    r = await client.get("/api/v1/nope", headers={**headers, "X-Request-ID": bad.encode("utf-8")})
    rid = r.headers["x-request-id"]
    assert rid != bad
    assert str(uuid.UUID(rid)) == rid and len(rid) == UUID_LEN
    assert r.json()["request_id"] == rid


async def test_max_length_request_id_is_kept(client, tenant):
    rid = "r" * 128
    r = await client.get("/api/v1/me", headers=tenant.headers(**{"X-Request-ID": rid}))
    assert r.headers["x-request-id"] == rid


async def test_every_response_carries_a_fresh_request_id(client, tenant, settings, monkeypatch):
    deal_id = await existing_deal(client, tenant)
    responses = [
        await client.get("/health"),
        await client.get("/openapi.json"),
        await client.get("/api/v1/me", headers=tenant.headers()),
        await client.get(f"/api/v1/deals/{deal_id}", headers=tenant.headers()),
        await client.delete(f"/api/v1/deals/{deal_id}", headers=tenant.headers()),  # 204
        await client.get("/api/v1/me"),  # 401
        await client.get("/api/v1/audit-events", headers=tenant.headers(Role.ANALYST)),  # 403
        await client.get(f"/api/v1/deals/{uuid.uuid4()}", headers=tenant.headers()),  # 404
        await client.put("/api/v1/deals", headers=tenant.headers()),  # 405
        await client.post("/api/v1/deals", content=b"{", headers=tenant.headers(**{"Content-Type": "application/json"})),
        await client.post("/api/v1/deals", content=b"x" * (settings.max_body_bytes + 1), headers=tenant.headers(**{"Content-Type": "application/json"})),
        await client.post("/api/v1/deals", content=b"hello", headers=tenant.headers(**{"Content-Type": "text/plain"})),
        await client.post("/api/v1/deals", json={}, headers=tenant.headers()),  # 422
    ]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 200, 204, 401, 403, 404, 405, 400, 413, 415, 422]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids)
    assert len(set(ids)) == len(ids)
    for r in responses:
        assert len(r.headers.get_list("x-request-id")) == 1
        if r.status_code >= 400:
            assert r.json()["request_id"] == r.headers["x-request-id"]

    async def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr("core.deals.get", boom)
    r = await client.get(f"/api/v1/deals/{deal_id}", headers=tenant.headers(**{"X-Request-ID": "on-a-500"}))
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "on-a-500" == r.json()["request_id"]


async def test_request_id_is_recorded_in_the_audit_trail(client, tenant):
    rid = f"audit-{uuid.uuid4()}"
    r = await client.post("/api/v1/deals", json=deal_body(), headers=tenant.headers(**{"X-Request-ID": rid}))
    assert r.status_code == 201
    trail = await client.get("/api/v1/audit-events", params={"request_id": rid}, headers=tenant.headers(Role.AUDITOR))
    items = trail.json()["items"]
    assert [(e["event_type"], e["resource"]["id"]) for e in items] == [("deal.created", r.json()["id"])]


# --------------------------------------------------------------------------- OpenAPI


@pytest.fixture
async def openapi(client) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def api_operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(ops) >= 10
    return ops


async def test_openapi_is_3_1_and_docs_are_served(client, openapi):
    assert openapi["openapi"].startswith("3.1.")
    assert openapi["info"]["version"]
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text


async def test_problem_schema_is_published(openapi):
    problem = openapi["components"]["schemas"]["Problem"]
    assert PROBLEM_FIELDS <= set(problem["properties"])
    assert {"type", "title", "status", "detail", "code"} <= set(problem.get("required", []))


async def test_every_api_operation_documents_problem_errors(openapi):
    missing = []
    wrong_media = []
    for method, path, op in api_operations(openapi):
        errors = {status: resp for status, resp in op["responses"].items() if status[0] in "45"}
        problem_refs = [
            status
            for status, resp in errors.items()
            if resp.get("content", {}).get(PROBLEM, {}).get("schema", {}).get("$ref") == "#/components/schemas/Problem"
        ]
        if not problem_refs:
            missing.append((method, path))
        for status, resp in errors.items():
            if set(resp.get("content", {})) != {PROBLEM}:
                wrong_media.append((method, path, status, sorted(resp.get("content", {}))))
        if "security" in op or "401" in errors:
            assert "401" in errors, (method, path)
    assert not missing, f"operations without a problem+json error response: {missing}"
    # The API answers every error as problem+json, so that is all the document may promise.
    assert not wrong_media, wrong_media


async def test_every_request_body_has_an_example(openapi):
    without = []
    bodies = 0
    schemas = openapi["components"]["schemas"]
    for method, path, op in api_operations(openapi):
        if "requestBody" not in op:
            continue
        bodies += 1
        media = op["requestBody"]["content"]["application/json"]
        schema = media.get("schema", {})
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        if not (media.get("examples") or media.get("example") or schema.get("examples") or schema.get("example")):
            without.append((method, path))
    assert bodies >= 5
    assert not without, f"request bodies without an example: {without}"
