"""The API contract: the committed OpenAPI snapshot versus the live app (the CI gate), the
breaking-change rules of `hub.contract`, the `hub openapi` command and deprecation headers."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response
from pydantic import BaseModel

from hub import cli, contract
from hub.app import API_VERSION
from hub.contract import breaking_changes, check, is_gate_open, major_version
from hub.deprecation import deprecated, deprecation_headers
from hub.middleware import EdgeMiddleware

# --- the gate on the real app -------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> dict[str, Any]:
    return contract.live_schema()


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    return contract.load_snapshot()


def test_committed_snapshot_has_no_breaking_changes_against_the_live_app(
    snapshot: dict[str, Any], live: dict[str, Any]
) -> None:
    broken = check(snapshot, live)
    assert not broken, (
        f"{len(broken)} breaking change(s) to the API contract (hub/openapi.snapshot.json):\n"
        + "".join(f"  - {line}\n" for line in broken)
        + "If the break is intended, bump the major version (hub.app.API_VERSION) and run"
        " `hub openapi --write` to refresh the snapshot; otherwise restore what was removed or changed."
    )


def test_snapshot_is_openapi_31_rendered_stably(snapshot: dict[str, Any]) -> None:
    text = contract.SNAPSHOT_PATH.read_text(encoding="utf-8")
    assert text == contract.render(snapshot)  # pretty, sorted keys, trailing newline
    assert text.endswith("}\n") and text.startswith('{\n  "components"')
    assert snapshot["openapi"].startswith("3.1")
    assert major_version(snapshot) == major_version({"info": {"version": API_VERSION}})


def test_a_schema_compared_with_itself_has_no_breaking_changes(live: dict[str, Any]) -> None:
    assert breaking_changes(live, live) == []
    assert is_gate_open(live, live)


def test_message_names_method_path_and_field(snapshot: dict[str, Any]) -> None:
    new = copy.deepcopy(snapshot)
    del new["components"]["schemas"]["DealOut"]["properties"]["version"]
    broken = breaking_changes(snapshot, new)
    assert "PUT /api/v1/deals/by-ref/{system}/{external_id}: response 200 field 'version' removed" in broken
    assert "GET /api/v1/deals: response 200 field 'items[].version' removed" in broken
    assert all("version" in line for line in broken)


# --- synthetic specs ----------------------------------------------------------------------


def spec(paths: dict[str, Any], schemas: dict[str, Any] | None = None, version: str = "1.0.0", **components: Any) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": version},
        "paths": paths,
        "components": {"schemas": schemas or {}, **components},
    }


def ok(schema: dict[str, Any], status: str = "200", media: str = "application/json") -> dict[str, Any]:
    return {status: {"description": "ok", "content": {media: {"schema": schema}}}}


def op(
    responses: dict[str, Any] | None = None, body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
    body_required: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"responses": responses if responses is not None else {"204": {"description": "none"}}}
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    if params is not None:
        operation["parameters"] = params
    return operation


def obj(required: tuple[str, ...] = (), forbid: bool = True, **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": list(required)}
    if forbid:
        schema["additionalProperties"] = False
    return schema


def param(name: str, kind: str = "string", where: str = "query", required: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": {"type": kind, **extra}}


S = {"type": "string"}
I = {"type": "integer"}
NULLABLE_S = {"anyOf": [{"type": "string"}, {"type": "null"}]}
REF = "#/components/schemas/"


def response_diff(old: dict[str, Any], new: dict[str, Any], method: str = "get") -> list[str]:
    return breaking_changes(spec({"/x": {method: op(ok(old))}}), spec({"/x": {method: op(ok(new))}}))


def request_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return breaking_changes(spec({"/x": {"post": op(body=old)}}), spec({"/x": {"post": op(body=new)}}))


def param_diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    return breaking_changes(spec({"/x": {"get": op(params=old)}}), spec({"/x": {"get": op(params=new)}}))


# routes


def test_path_removed() -> None:
    old = spec({"/a": {"get": op()}, "/b": {"get": op(), "post": op()}})
    new = spec({"/a": {"get": op()}})
    assert breaking_changes(old, new) == ["GET /b: path removed", "POST /b: path removed"]


def test_method_removed() -> None:
    old = spec({"/a": {"get": op(), "delete": op()}})
    assert breaking_changes(old, spec({"/a": {"get": op()}})) == ["DELETE /a: method removed"]


def test_paths_and_methods_added_are_not_breaking() -> None:
    old = spec({"/a": {"get": op()}})
    new = spec({"/a": {"get": op(), "post": op(body=obj(name=S), body_required=False)}, "/b": {"get": op()}})
    assert breaking_changes(old, new) == []


def test_renaming_a_path_parameter_is_not_breaking() -> None:
    old = spec({"/d/{id}": {"get": op(params=[param("id", where="path", required=True)])}})
    new = spec({"/d/{deal_id}": {"get": op(params=[param("deal_id", where="path", required=True)])}})
    assert breaking_changes(old, new) == []
    narrowed = spec({"/d/{deal_id}": {"get": op(params=[param("deal_id", "integer", where="path", required=True)])}})
    assert breaking_changes(old, narrowed) == ["GET /d/{id}: parameter 'id' (path) type changed from 'string' to 'integer'"]


# responses


def test_response_field_removed() -> None:
    assert response_diff(obj(("id", "v"), id=S, v=I), obj(("id",), id=S)) == ["GET /x: response 200 field 'v' removed"]


def test_response_nested_and_array_item_fields_removed() -> None:
    old = obj(items={"type": "array", "items": obj(("a", "b"), a=S, b=S)}, owner=obj(("name",), name=S))
    new = obj(items={"type": "array", "items": obj(("a",), a=S)}, owner=obj())
    assert response_diff(old, new) == [
        "GET /x: response 200 field 'items[].b' removed",
        "GET /x: response 200 field 'owner.name' removed",
    ]


def test_response_field_type_changed() -> None:
    assert response_diff(obj(("v",), v=I), obj(("v",), v=S)) == [
        "GET /x: response 200 field 'v' type changed from 'integer' to 'string'"
    ]
    assert response_diff(obj(("v",), v=I), obj(("v",), v={"type": "array", "items": I})) == [
        "GET /x: response 200 field 'v' type changed from 'integer' to 'array'"
    ]


def test_response_body_type_changed() -> None:
    assert response_diff(obj(), {"type": "array", "items": obj()}) == [
        "GET /x: response 200 type changed from 'object' to 'array'"
    ]


def test_response_field_becoming_nullable_or_optional_is_breaking() -> None:
    assert response_diff(obj(("v",), v=S), obj(("v",), v=NULLABLE_S)) == ["GET /x: response 200 field 'v' became nullable"]
    assert response_diff(obj(("v",), v=S), obj((), v=S)) == ["GET /x: response 200 field 'v' became optional"]


def test_response_format_changed() -> None:
    old = obj(at={"type": "string", "format": "date-time"})
    assert response_diff(old, obj(at={"type": "string", "format": "date"})) == [
        "GET /x: response 200 field 'at' format changed from 'date-time' to 'date'"
    ]


def test_response_narrowing_and_additions_are_not_breaking() -> None:
    old = obj(("id", "v"), id=S, v=NULLABLE_S, n={"type": "number"})
    new = obj(("id", "v", "added"), id=S, v=S, n=I, added=obj(("x",), x=S), optional=S)
    assert response_diff(old, new) == []


def test_response_content_type_removed() -> None:
    old = {"200": {"description": "ok", "content": {"application/json": {"schema": S}, "text/csv": {"schema": S}}}}
    new = ok(S)
    assert breaking_changes(spec({"/x": {"get": op(old)}}), spec({"/x": {"get": op(new)}})) == [
        "GET /x: response 200 content type 'text/csv' removed"
    ]


def test_response_success_status_removed_but_error_responses_ignored() -> None:
    problem = {"application/problem+json": {"schema": obj(("code",), code=S)}}
    old = {**ok(obj(("id",), id=S)), "404": {"description": "x", "content": problem}}
    assert breaking_changes(spec({"/x": {"post": op(old)}}), spec({"/x": {"post": op(ok(obj(("id",), id=S), "201"))}})) == [
        "POST /x: response 200 removed"
    ]
    new = {**ok(obj(("id",), id=S)), "404": {"description": "x", "content": {"application/json": {"schema": S}}}}
    assert breaking_changes(spec({"/x": {"get": op(old)}}), spec({"/x": {"get": op(new)}})) == []


def test_response_enum_value_removed_or_added_is_not_breaking() -> None:
    old = obj(("s",), s={"type": "string", "enum": ["a", "b"]})
    assert response_diff(old, obj(("s",), s={"type": "string", "enum": ["a"]})) == []
    assert response_diff(old, obj(("s",), s={"type": "string", "enum": ["a", "b", "c"]})) == []


# request bodies


def test_request_field_made_required() -> None:
    assert request_diff(obj((), name=S), obj(("name",), name=S)) == ["POST /x: request body field 'name' became required"]


def test_new_required_request_field() -> None:
    assert request_diff(obj((), name=S), obj(("stage",), name=S, stage=S)) == [
        "POST /x: request body field 'stage' added as required"
    ]


def test_new_optional_request_field_and_required_becoming_optional_are_not_breaking() -> None:
    assert request_diff(obj(("name",), name=S), obj((), name=S, stage=S)) == []


def test_request_field_type_narrowed_or_changed() -> None:
    amount = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}
    assert request_diff(obj(amount=amount), obj(amount=NULLABLE_S)) == [
        "POST /x: request body field 'amount' type changed from 'null | number | string' to 'null | string'"
    ]
    assert request_diff(obj(n={"type": "number"}), obj(n=I)) == [
        "POST /x: request body field 'n' type changed from 'number' to 'integer'"
    ]
    assert request_diff(obj(s=NULLABLE_S), obj(s=S)) == ["POST /x: request body field 's' no longer accepts null"]


def test_request_field_widened_is_not_breaking() -> None:
    assert request_diff(obj(n=I, s=S), obj(n={"type": "number"}, s=NULLABLE_S)) == []


def test_request_field_removed_is_breaking_only_when_unknown_fields_are_rejected() -> None:
    assert request_diff(obj(name=S, stage=S), obj(name=S)) == [
        "POST /x: request body field 'stage' removed (unknown fields are rejected)"
    ]
    assert request_diff(obj(forbid=False, name=S, stage=S), obj(forbid=False, name=S)) == []


def test_request_model_starting_to_forbid_unknown_fields_is_breaking() -> None:
    assert request_diff(obj(forbid=False, name=S), obj(name=S)) == ["POST /x: request body no longer accepts unknown fields"]


def test_request_nested_and_array_items_are_checked() -> None:
    old = obj(refs={"type": "array", "items": obj(("system",), system=S, external_id=S)})
    new = obj(refs={"type": "array", "items": obj(("system", "external_id"), system=S, external_id=S)})
    assert request_diff(old, new) == ["POST /x: request body field 'refs[].external_id' became required"]


def test_request_enum_value_removed_or_enum_introduced_is_breaking() -> None:
    old = obj(role={"type": "string", "enum": ["ADMIN", "ANALYST"]})
    assert request_diff(old, obj(role={"type": "string", "enum": ["ADMIN"]})) == [
        "POST /x: request body field 'role' enum value 'ANALYST' removed"
    ]
    assert request_diff(old, obj(role={"type": "string", "enum": ["ADMIN", "ANALYST", "AUDITOR"]})) == []
    assert request_diff(obj(role=S), obj(role={"type": "string", "enum": ["ADMIN"]})) == [
        "POST /x: request body field 'role' restricted to enum values 'ADMIN'"
    ]


def test_request_bounds_pattern_and_format_tightened() -> None:
    old = obj(name={"type": "string", "maxLength": 300}, n={"type": "integer", "minimum": 0})
    assert request_diff(old, obj(name={"type": "string", "maxLength": 100}, n={"type": "integer", "minimum": 0})) == [
        "POST /x: request body field 'name' maxLength tightened from 300 to 100"
    ]
    assert request_diff(old, obj(name={"type": "string", "maxLength": 500}, n={"type": "integer"})) == []
    assert request_diff(obj(c=S), obj(c={"type": "string", "pattern": "^[A-Z]{3}$"})) == [
        "POST /x: request body field 'c' pattern added: ^[A-Z]{3}$"
    ]
    assert request_diff(obj(d=S), obj(d={"type": "string", "format": "date"})) == [
        "POST /x: request body field 'd' format changed from 'none' to 'date'"
    ]


def test_request_body_required_added_removed_and_content_type() -> None:
    body = obj(name=S)
    none, optional, required = op(), op(body=body, body_required=False), op(body=body)
    assert breaking_changes(spec({"/x": {"post": none}}), spec({"/x": {"post": required}})) == [
        "POST /x: request body added as required"
    ]
    assert breaking_changes(spec({"/x": {"post": none}}), spec({"/x": {"post": optional}})) == []
    assert breaking_changes(spec({"/x": {"post": optional}}), spec({"/x": {"post": required}})) == [
        "POST /x: request body became required"
    ]
    assert breaking_changes(spec({"/x": {"post": optional}}), spec({"/x": {"post": none}})) == ["POST /x: request body removed"]
    two = op(body=body)
    two["requestBody"]["content"]["application/merge-patch+json"] = {"schema": body}
    assert breaking_changes(spec({"/x": {"post": two}}), spec({"/x": {"post": required}})) == [
        "POST /x: request content type 'application/merge-patch+json' removed"
    ]


# parameters


def test_parameter_made_required() -> None:
    assert param_diff([param("limit", "integer")], [param("limit", "integer", required=True)]) == [
        "GET /x: parameter 'limit' (query) became required"
    ]


def test_new_required_parameter() -> None:
    assert param_diff([], [param("tenant", where="header", required=True)]) == [
        "GET /x: parameter 'tenant' (header) added as required"
    ]


def test_new_optional_parameter_is_not_breaking() -> None:
    assert param_diff([param("a")], [param("a"), param("b"), param("X-Trace", where="header")]) == []


def test_parameter_type_changed() -> None:
    assert param_diff([param("limit", "integer")], [param("limit", "string", pattern="^[0-9]+$")]) == [
        "GET /x: parameter 'limit' (query) type changed from 'integer' to 'string'"
    ]
    assert param_diff([param("limit", "integer", maximum=200)], [param("limit", "integer", maximum=100)]) == [
        "GET /x: parameter 'limit' (query) maximum tightened from 200 to 100"
    ]


def test_parameter_removed_is_breaking_and_header_names_ignore_case() -> None:
    assert param_diff([param("stage")], []) == ["GET /x: parameter 'stage' (query) removed"]
    assert param_diff([param("Idempotency-Key", where="header")], [param("idempotency-key", where="header")]) == []


def test_parameter_enum_value_removed() -> None:
    old = [param("sort", enum=["name", "-name"])]
    assert param_diff(old, [param("sort", enum=["name"])]) == ["GET /x: parameter 'sort' (query) enum value '-name' removed"]


# $ref, unions, cycles


def test_refs_are_resolved_and_renamed_components_match() -> None:
    deal = obj(("id", "version"), id=S, version=I)
    old = spec({"/d": {"get": op(ok({"$ref": REF + "DealOut"}))}}, {"DealOut": deal})
    renamed = spec({"/d": {"get": op(ok({"$ref": REF + "DealView"}))}}, {"DealView": deal})
    assert breaking_changes(old, renamed) == []
    inline = spec({"/d": {"get": op(ok(obj(("id",), id=S)))}})
    assert breaking_changes(old, inline) == ["GET /d: response 200 field 'version' removed"]


def test_a_change_in_a_shared_component_is_reported_at_every_use() -> None:
    ref = {"$ref": REF + "Ref"}
    paths = {"/a": {"get": op(ok(obj(one=ref, many={"type": "array", "items": ref})))}}
    old = spec(paths, {"Ref": obj(("system", "id"), system=S, id=S)})
    new = spec(paths, {"Ref": obj(("system",), system=S)})
    assert breaking_changes(old, new) == [
        "GET /a: response 200 field 'one.id' removed",
        "GET /a: response 200 field 'many[].id' removed",
    ]


def test_nullable_ref_union_and_3_0_nullable_and_type_lists() -> None:
    schemas = {"Owner": obj(("name", "email"), name=S, email=S)}
    old = spec({"/a": {"get": op(ok(obj(owner={"anyOf": [{"$ref": REF + "Owner"}, {"type": "null"}]})))}}, schemas)
    smaller = {"Owner": obj(("name",), name=S)}
    new = spec({"/a": {"get": op(ok(obj(owner={"anyOf": [{"$ref": REF + "Owner"}, {"type": "null"}]})))}}, smaller)
    assert breaking_changes(old, new) == ["GET /a: response 200 field 'owner.email' removed"]
    assert request_diff(obj(s={"type": ["string", "null"]}), obj(s={"type": "string", "nullable": True})) == []
    assert request_diff(obj(s={"type": "string", "nullable": True}), obj(s=S)) == [
        "POST /x: request body field 's' no longer accepts null"
    ]


def test_all_of_members_are_merged() -> None:
    schemas = {"Base": obj(("id",), forbid=False, id=S)}
    old = spec({"/a": {"get": op(ok({"allOf": [{"$ref": REF + "Base"}, obj(("v",), forbid=False, v=I)]}))}}, schemas)
    same = spec({"/a": {"get": op(ok(obj(("id", "v"), id=S, v=I)))}})
    assert breaking_changes(old, same) == []
    assert breaking_changes(old, spec({"/a": {"get": op(ok({"allOf": [{"$ref": REF + "Base"}]}))}}, schemas)) == [
        "GET /a: response 200 field 'v' removed"
    ]


def test_one_of_object_variants_are_paired_by_ref() -> None:
    schemas = {"Cat": obj(("meow",), meow=S), "Dog": obj(("bark",), bark=S)}
    body = {"oneOf": [{"$ref": REF + "Cat"}, {"$ref": REF + "Dog"}]}
    old = spec({"/pets": {"get": op(ok(body))}}, schemas)
    new = spec({"/pets": {"get": op(ok(body))}}, {"Cat": obj(("meow",), meow=S), "Dog": obj((), bark=S)})
    assert breaking_changes(old, new) == ["GET /pets: response 200 field 'bark' became optional"]
    only_cat = spec({"/pets": {"get": op(ok({"oneOf": [{"$ref": REF + "Cat"}]}))}}, schemas)
    assert breaking_changes(old, only_cat) == []  # fewer variants in a response: a narrowing
    assert breaking_changes(only_cat, old) == []  # another object variant: types unchanged


def test_recursive_schemas_terminate_and_are_still_compared() -> None:
    def tree(*fields: str) -> dict[str, Any]:
        node = obj(fields, **{f: S for f in fields}, children={"type": "array", "items": {"$ref": REF + "Node"}})
        return spec({"/tree": {"get": op(ok({"$ref": REF + "Node"}))}}, {"Node": node})

    assert breaking_changes(tree("name", "kind"), tree("name", "kind")) == []
    assert breaking_changes(tree("name", "kind"), tree("name")) == ["GET /tree: response 200 field 'kind' removed"]
    loop = spec({"/l": {"get": op(ok({"$ref": REF + "A"}))}}, {"A": {"$ref": REF + "B"}, "B": {"$ref": REF + "A"}})
    assert breaking_changes(loop, loop) == []


def test_parameters_request_bodies_and_responses_by_ref() -> None:
    def doc(limit_type: str, required_field: tuple[str, ...]) -> dict[str, Any]:
        return spec(
            {"/a": {"parameters": [{"$ref": "#/components/parameters/Limit"}], "post": {
                "requestBody": {"$ref": "#/components/requestBodies/Thing"},
                "responses": {"200": {"$ref": "#/components/responses/Thing"}},
            }}},
            {"Thing": obj(required_field, name=S, extra=S)},
            parameters={"Limit": param("limit", limit_type)},
            requestBodies={"Thing": {"content": {"application/json": {"schema": {"$ref": REF + "Thing"}}}}},
            responses={"Thing": {"description": "x", "content": {"application/json": {"schema": {"$ref": REF + "Thing"}}}}},
        )

    assert breaking_changes(doc("integer", ()), doc("integer", ())) == []
    assert breaking_changes(doc("integer", ()), doc("string", ("name",))) == [
        "POST /a: parameter 'limit' (query) type changed from 'integer' to 'string'",
        "POST /a: request body field 'name' became required",
    ]


# the major-version escape


def test_major_version_bump_opens_the_gate() -> None:
    old = spec({"/a": {"get": op()}, "/b": {"get": op()}})
    minor = spec({"/a": {"get": op()}}, version="1.1.0")
    major = spec({"/a": {"get": op()}}, version="2.0.0")
    assert check(old, minor) == ["GET /b: path removed"] and not is_gate_open(old, minor)
    assert check(old, major) == [] and is_gate_open(old, major)
    assert breaking_changes(old, major) == ["GET /b: path removed"]  # still reported, just allowed
    assert check(major, spec({}, version="1.0.0")) == ["GET /a: path removed"]  # going down is no escape
    assert check(old, spec({}, version="unversioned")) == ["GET /a: path removed", "GET /b: path removed"]
    assert major_version({"info": {"version": "v3.2"}}) == 3


# --- the `hub openapi` command --------------------------------------------------------------


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("`hub openapi` must not open the database or read the settings")

    monkeypatch.setattr(cli, "_open", refuse)
    monkeypatch.setattr(cli, "upgrade_to_head", refuse)
    monkeypatch.setattr(cli, "get_settings", refuse)


def test_cli_check_passes_on_the_committed_snapshot(no_database: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["openapi", "--check"]) == 0
    assert "no breaking changes" in capsys.readouterr().out


def test_cli_check_fails_against_a_doctored_snapshot(
    no_database: None, live: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doctored = copy.deepcopy(live)  # a snapshot promising more than the app has
    doctored["paths"]["/api/v1/gone"] = {"get": op()}
    doctored["components"]["schemas"]["DealOut"]["properties"]["legacy"] = S
    path = tmp_path / "openapi.snapshot.json"
    path.write_text(contract.render(doctored), encoding="utf-8")
    monkeypatch.setattr(contract, "SNAPSHOT_PATH", path)
    assert cli.main(["openapi", "--check"]) == 1
    err = capsys.readouterr().err
    assert "GET /api/v1/gone: path removed" in err
    assert "GET /api/v1/deals/{deal_id}: response 200 field 'legacy' removed" in err
    assert "hub openapi --write" in err and "major version" in err
    # refreshing on purpose warns about what it accepts
    assert cli.main(["openapi", "--write"]) == 0
    err = capsys.readouterr().err
    assert "warning: the new snapshot accepts" in err and "GET /api/v1/gone: path removed" in err
    assert cli.main(["openapi", "--check"]) == 0
    # the same break with a lower major version in the snapshot is accepted
    doctored["info"]["version"] = "0.9.0"
    path.write_text(contract.render(doctored), encoding="utf-8")
    assert cli.main(["openapi", "--check", "--snapshot", str(path)]) == 0
    assert "major version went from 0 to 1: accepting" in capsys.readouterr().out


def test_cli_check_without_a_snapshot_fails(no_database: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["openapi", "--check", "--snapshot", str(tmp_path / "missing.json")]) == 1
    assert "hub openapi --write" in capsys.readouterr().err


def test_cli_prints_and_writes_the_schema(
    no_database: None, live: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["openapi"]) == 0
    assert json.loads(capsys.readouterr().out) == live
    path = tmp_path / "snap.json"
    monkeypatch.setattr(contract, "SNAPSHOT_PATH", path)
    assert cli.main(["openapi", "--write"]) == 0
    assert path.read_text(encoding="utf-8") == contract.render(live)
    assert cli.main(["openapi", "--check"]) == 0
    assert "is current" in capsys.readouterr().out


# --- deprecation headers --------------------------------------------------------------------


class Thing(BaseModel):
    id: str


SUNSET = date(2028, 1, 1)
SINCE = date(2025, 1, 1)


def deprecated_app() -> FastAPI:
    router = APIRouter()
    mark = Depends(deprecated(SUNSET, "https://docs.example/deprecations/things", since=SINCE))

    @router.get("/old", deprecated=True, dependencies=[mark], response_model=Thing)
    async def old() -> Thing:
        return Thing(id="1")

    @router.post("/old", deprecated=True, dependencies=[mark], status_code=201)
    async def old_raw() -> Response:
        return Response(b'{"id":"1"}', status_code=201, media_type="application/json")

    @router.get("/old/missing", deprecated=True, dependencies=[mark])
    async def old_missing() -> Thing:
        raise HTTPException(404, "gone")

    @router.get("/new", response_model=Thing)
    async def new() -> Thing:
        return Thing(id="2")

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(EdgeMiddleware, max_body_bytes=1024)
    return app


EXPECTED = {
    "deprecation": "@1735689600",
    "sunset": "Sat, 01 Jan 2028 00:00:00 GMT",
    "link": '<https://docs.example/deprecations/things>; rel="deprecation"; type="text/html"',
}


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub.test")


async def test_deprecated_routes_answer_with_deprecation_sunset_and_link_once() -> None:
    """Also when the route builds its own Response or fails (the hub's mutating routes do)."""
    async with client_for(deprecated_app()) as client:
        for response in (await client.get("/old"), await client.post("/old"), await client.get("/old/missing")):
            assert response.status_code in (200, 201, 404)
            assert {k: response.headers[k] for k in EXPECTED} == EXPECTED
            assert len(response.headers.get_list("deprecation")) == 1
            assert len(response.headers.get_list("sunset")) == 1
        assert parsedate_to_datetime((await client.get("/old")).headers["sunset"]) == datetime(2028, 1, 1, tzinfo=UTC)
        assert "sunset" not in (await client.get("/new")).headers
        spec_paths = (await client.get("/openapi.json")).json()["paths"]
    assert spec_paths["/old"]["get"]["deprecated"] is True
    assert "deprecated" not in spec_paths["/new"]["get"]


def test_deprecation_header_values() -> None:
    assert deprecation_headers(date(2027, 6, 30)) == {"Sunset": "Wed, 30 Jun 2027 00:00:00 GMT", "Deprecation": "true"}
    at = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    assert deprecation_headers(date(2027, 6, 30), since=at)["Deprecation"] == f"@{int(at.timestamp())}"
    with pytest.raises(ValueError):
        deprecation_headers(date(2025, 1, 1), since=date(2026, 1, 1))
