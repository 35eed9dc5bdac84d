"""The API contract gate: find the breaking changes between two OpenAPI 3.1 documents.

The committed snapshot (`hub/openapi.snapshot.json`) is what clients were promised. CI
compares it with the live app's schema (`tests/hub/test_contract.py`, `hub openapi --check`);
a breaking change fails unless the major part of `info.version` went up. After an
intended change, refresh the snapshot with `hub openapi --write` (and, if it breaks, bump
the major version in `hub.app.API_VERSION`).

What counts as breaking (each message names method, path and field):

Routes
- a path removed, a method removed. Paths are matched by their template, so renaming a
  path parameter (`/deals/{id}` -> `/deals/{deal_id}`) is not a change for clients.

Responses (only success responses, 2xx: errors are problem+json and checked elsewhere)
- a 2xx status removed (e.g. 200 became 201), a response content type removed;
- a field removed, at any depth (nested objects, array items, union variants);
- a field's type changed or widened (string -> integer, string -> string | null: a client
  parsing the old type breaks), a `format` changed or dropped (date-time -> date);
- a required (always present) field became optional (clients rely on its presence).
- Not breaking: new fields, a type narrowed (string | null -> string), enum values added
  or removed (clients must tolerate unknown enum values; fewer values is a narrowing).

Requests (body, and parameters in path, query, header, cookie)
- a body field or parameter newly required, or added as required; a body newly required;
- a type narrowed or changed (number | string -> string, number -> integer, no longer
  nullable), an enum value removed or an enum introduced, a `format` added or changed, a
  bound tightened (`maxLength`, `minLength`, `maximum`, `minimum`, `maxItems`, `minItems`,
  ...) or a `pattern` added or changed;
- a body field removed **when the new model forbids unknown fields**
  (`additionalProperties: false`, as every hub request model does): a client that still
  sends it gets a 422. Where unknown fields are allowed, the removed field is simply
  ignored and that is not reported. An object that starts forbidding unknown fields is
  breaking for the same reason;
- a parameter removed: the hub ignores unknown parameters, so a client's filter or header
  would be silently dropped, changing what it gets back;
- the request body removed, or a request content type removed.
- Not breaking: new optional fields and parameters, a type widened (integer -> number,
  string -> string | null), a field no longer required, enum values added, bounds loosened.

Schemas are compared after resolving local `$ref`s (`#/components/...`, also for
parameters, request bodies and responses); `allOf` members are merged, `anyOf`/`oneOf`
are unions whose variants are paired by `$ref` name, then by type; nullable unions
(`anyOf: [X, {type: null}]`, `type: [X, "null"]`, 3.0's `nullable: true`) are X plus
null. Recursive schemas are followed once per `$ref` pair (cycle protection).
Not checked: security requirements, response headers, links and callbacks, and a new
variant of an existing type in a response union (another object shape in a `oneOf`).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import unquote

__all__ = [
    "SNAPSHOT_PATH",
    "breaking_changes",
    "check",
    "is_gate_open",
    "live_schema",
    "load_snapshot",
    "major_version",
    "render",
    "run_cli",
    "write_snapshot",
]

SNAPSHOT_PATH = Path(__file__).with_name("openapi.snapshot.json")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_MAX_DEPTH = 64
_PARAM = re.compile(r"\{([^}/]+)\}")

Direction = Literal["request", "response"]
Types = frozenset[str] | None  # None: no type information, anything goes
Alt = tuple[dict[str, Any], str | None]  # a resolved schema and the $ref it came from


# --- the gate ---------------------------------------------------------------------------


def major_version(doc: dict[str, Any]) -> int | None:
    """The major part of `info.version` ("1.4.2" -> 1, "v2" -> 2), None if it has none."""
    match = re.match(r"\s*v?(\d+)", str((doc.get("info") or {}).get("version", "")))
    return int(match.group(1)) if match else None


def _major_bumped(old: dict[str, Any], new: dict[str, Any]) -> bool:
    before, after = major_version(old), major_version(new)
    return before is not None and after is not None and after > before


def check(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The breaking changes from `old` to `new`, or none at all when the major version went up."""
    return [] if _major_bumped(old, new) else breaking_changes(old, new)


def is_gate_open(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when `new` may replace `old`: nothing breaks, or the major version went up."""
    return not check(old, new)


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every change from `old` to `new` that can break an existing client, as messages like
    "PUT /api/v1/deals/by-ref/{system}/{external_id}: response 200 field 'version' removed".
    The version is not looked at (see `check`)."""
    return list(dict.fromkeys(_Diff(old, new).run()))


# --- resolving schemas ------------------------------------------------------------------


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#"):
        return None  # external references are not followed: treated as "anything"
    node: Any = doc
    for raw in ref[1:].lstrip("/").split("/") if ref[1:] else []:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _deref(doc: dict[str, Any], node: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Follow `$ref`s (keeping sibling keywords, as 3.1 allows); also the refs passed."""
    refs: list[str] = []
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if ref in refs:
            return {}, tuple(refs)
        refs.append(ref)
        target = _pointer(doc, ref)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings} if isinstance(target, dict) else (target if not siblings else siblings)
    if node is True or node is None:
        return {}, tuple(refs)
    if node is False:
        return {"not": {}}, tuple(refs)
    return (node if isinstance(node, dict) else {}), tuple(refs)


def _merge_all_of(doc: dict[str, Any], schema: dict[str, Any], seen: frozenset[str]) -> tuple[dict[str, Any], str | None]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    properties = dict(merged.get("properties") or {})
    required = list(merged.get("required") or [])
    members = [m for m in schema["allOf"] if m is not True]
    only_ref: str | None = None
    for member in members:
        resolved, refs = _deref(doc, member)
        if seen.intersection(refs):
            continue
        if len(members) == 1 and refs:
            only_ref = refs[-1]
        if "allOf" in resolved:
            resolved, _ = _merge_all_of(doc, resolved, seen.union(refs))
        properties.update(resolved.get("properties") or {})
        required += resolved.get("required") or []
        for key, value in resolved.items():
            if key not in ("properties", "required", "title", "description"):
                merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = list(dict.fromkeys(required))
    return merged, only_ref


def _alternatives(doc: dict[str, Any], node: Any, seen: frozenset[str] = frozenset()) -> tuple[list[Alt], bool]:
    """The non-null alternatives a schema allows (each resolved, allOf merged) and whether
    it also allows null."""
    schema, refs = _deref(doc, node)
    if seen.intersection(refs):
        return [], False
    seen = seen.union(refs)
    name = refs[-1] if refs else None
    if "allOf" in schema:
        schema, only_ref = _merge_all_of(doc, schema, seen)
        name = name or only_ref
    nullable = schema.get("nullable") is True
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            alternatives: list[Alt] = []
            for member in schema[key]:
                alts, null = _alternatives(doc, member, seen)
                alternatives += alts
                nullable = nullable or null
            return alternatives, nullable
    kind = schema.get("type")
    if kind == "null":
        return [], True
    if isinstance(kind, list) and "null" in kind:
        rest = [t for t in kind if t != "null"]
        if not rest:
            return [], True
        schema = {**schema, "type": rest[0] if len(rest) == 1 else rest}
        nullable = True
    if isinstance(schema.get("enum"), list) and None in schema["enum"]:
        values = [v for v in schema["enum"] if v is not None]
        if not values:
            return [], True
        schema = {**schema, "enum": values}
        nullable = True
    if "const" in schema and schema["const"] is None:
        return [], True
    return [(schema, name)], nullable


_PY_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (dict, "object"), (list, "array"))


def _value_type(value: Any) -> str:
    return next((name for kind, name in _PY_TYPES if isinstance(value, kind)), "null")


def _variant_types(schema: dict[str, Any]) -> Types:
    if schema == {"not": {}}:
        return frozenset()
    kind = schema.get("type")
    if isinstance(kind, str):
        return frozenset({kind})
    if isinstance(kind, list):
        return frozenset(kind)
    if isinstance(schema.get("enum"), list):
        return frozenset(_value_type(v) for v in schema["enum"])
    if "const" in schema:
        return frozenset({_value_type(schema["const"])})
    if any(k in schema for k in ("properties", "additionalProperties", "required", "patternProperties")):
        return frozenset({"object"})
    if any(k in schema for k in ("items", "prefixItems")):
        return frozenset({"array"})
    return None


def _types(alts: list[Alt], nullable: bool) -> Types:
    found: set[str] = set()
    for schema, _ in alts:
        kinds = _variant_types(schema)
        if kinds is None:
            return None
        found |= kinds
    if nullable:
        found.add("null")
    return frozenset(found)


def _covers(wide: Types, narrow: Types) -> bool:
    """Does `wide` accept every value of `narrow`? (an integer is a number)"""
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(t in wide or (t == "integer" and "number" in wide) for t in narrow)


def _show_types(kinds: Types) -> str:
    return "any" if kinds is None else " | ".join(sorted(kinds)) or "nothing"


def _show_value(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value)


def _enum(alts: list[Alt]) -> set[str] | None:
    """The values allowed (JSON-encoded), or None when not restricted to an enum."""
    values: set[str] = set()
    for schema, _ in alts:
        if isinstance(schema.get("enum"), list):
            values |= {json.dumps(v, sort_keys=True) for v in schema["enum"]}
        elif "const" in schema:
            values.add(json.dumps(schema["const"], sort_keys=True))
        else:
            return None
    return values if alts else None


def _extras_allowed(schema: dict[str, Any]) -> bool:
    return schema.get("additionalProperties", True) is not False and schema.get("unevaluatedProperties", True) is not False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --- comparing ----------------------------------------------------------------------------


@dataclass
class _Where:
    """What is being compared: "GET /x" and "response 200", and how values flow."""

    operation: str
    subject: str
    direction: Direction
    out: list[str] = field(repr=False, default_factory=list)

    def emit(self, path: str, what: str) -> None:
        subject = f"{self.subject} field '{path}'" if path else self.subject
        self.out.append(f"{self.operation}: {subject} {what}")


_UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER_BOUNDS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")


class _Diff:
    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.old, self.new = old, new
        self.out: list[str] = []

    # routes

    def run(self) -> list[str]:
        old_paths: dict[str, Any] = self.old.get("paths") or {}
        new_paths: dict[str, Any] = self.new.get("paths") or {}
        by_template: dict[str, list[str]] = {}
        for path in new_paths:
            by_template.setdefault(_PARAM.sub("{}", path), []).append(path)
        for path, old_item in old_paths.items():
            old_item, _ = _deref(self.old, old_item)
            match = path if path in new_paths else None
            if match is None:
                candidates = by_template.get(_PARAM.sub("{}", path), [])
                match = candidates[0] if len(candidates) == 1 else None
            old_ops = {m: op for m, op in old_item.items() if m in HTTP_METHODS and isinstance(op, dict)}
            if match is None:
                self.out += [f"{method.upper()} {path}: path removed" for method in old_ops]
                continue
            new_item, _ = _deref(self.new, new_paths[match])
            renames = dict(zip(_PARAM.findall(path), _PARAM.findall(match), strict=False))
            for method, old_op in old_ops.items():
                new_op = new_item.get(method)
                if not isinstance(new_op, dict):
                    self.out.append(f"{method.upper()} {path}: method removed")
                    continue
                self._operation(f"{method.upper()} {path}", old_item, old_op, new_item, new_op, renames)
        return self.out

    def _where(self, operation: str, subject: str, direction: Direction) -> _Where:
        return _Where(operation, subject, direction, self.out)

    def _operation(
        self,
        name: str,
        old_item: dict[str, Any],
        old_op: dict[str, Any],
        new_item: dict[str, Any],
        new_op: dict[str, Any],
        renames: dict[str, str],
    ) -> None:
        self._parameters(name, self._params(self.old, old_item, old_op), self._params(self.new, new_item, new_op), renames)
        self._request_body(name, old_op.get("requestBody"), new_op.get("requestBody"))
        self._responses(name, old_op.get("responses") or {}, new_op.get("responses") or {})

    # parameters

    @staticmethod
    def _params(doc: dict[str, Any], item: dict[str, Any], op: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
            param, _ = _deref(doc, raw)
            where, name = str(param.get("in", "")), str(param.get("name", ""))
            found[(where, name.lower() if where == "header" else name)] = param
        return found

    @staticmethod
    def _param_schema(param: dict[str, Any]) -> Any:
        if "schema" in param:
            return param["schema"]
        content = param.get("content") or {}
        return next((media.get("schema", {}) for media in content.values() if isinstance(media, dict)), {})

    def _parameters(
        self,
        name: str,
        old: dict[tuple[str, str], dict[str, Any]],
        new: dict[tuple[str, str], dict[str, Any]],
        renames: dict[str, str],
    ) -> None:
        matched: set[tuple[str, str]] = set()
        for (where, key), old_param in old.items():
            new_key = (where, renames.get(key, key)) if where == "path" else (where, key)
            label = f"parameter '{old_param.get('name')}' ({where})"
            new_param = new.get(new_key)
            if new_param is None:
                self.out.append(f"{name}: {label} removed")
                continue
            matched.add(new_key)
            if new_param.get("required") and not old_param.get("required"):
                self.out.append(f"{name}: {label} became required")
            self._schema(
                self._where(name, label, "request"),
                self._param_schema(old_param),
                self._param_schema(new_param),
                "",
                frozenset(),
            )
        for key, new_param in new.items():
            if key not in matched and new_param.get("required"):
                self.out.append(f"{name}: parameter '{new_param.get('name')}' ({key[0]}) added as required")

    # request body

    def _request_body(self, name: str, old_raw: Any, new_raw: Any) -> None:
        old = _deref(self.old, old_raw)[0] if old_raw is not None else None
        new = _deref(self.new, new_raw)[0] if new_raw is not None else None
        if old is None:
            if new is not None and new.get("required"):
                self.out.append(f"{name}: request body added as required")
            return
        if new is None:
            self.out.append(f"{name}: request body removed")
            return
        if new.get("required") and not old.get("required"):
            self.out.append(f"{name}: request body became required")
        old_content, new_content = old.get("content") or {}, new.get("content") or {}
        for media, old_media in old_content.items():
            if media not in new_content:
                self.out.append(f"{name}: request content type '{media}' removed")
                continue
            subject = "request body" if media == "application/json" else f"request body ({media})"
            self._schema(
                self._where(name, subject, "request"),
                (old_media or {}).get("schema", {}),
                (new_content[media] or {}).get("schema", {}),
                "",
                frozenset(),
            )

    # responses

    def _responses(self, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        for status, old_raw in old.items():
            if not str(status).startswith("2"):
                continue
            if status not in new:
                self.out.append(f"{name}: response {status} removed")
                continue
            old_response, _ = _deref(self.old, old_raw)
            new_response, _ = _deref(self.new, new[status])
            old_content, new_content = old_response.get("content") or {}, new_response.get("content") or {}
            for media, old_media in old_content.items():
                if media not in new_content:
                    self.out.append(f"{name}: response {status} content type '{media}' removed")
                    continue
                old_schema = (old_media or {}).get("schema")
                if old_schema is None:
                    continue
                subject = f"response {status}" if media == "application/json" else f"response {status} ({media})"
                self._schema(
                    self._where(name, subject, "response"),
                    old_schema,
                    (new_content[media] or {}).get("schema", {}),
                    "",
                    frozenset(),
                )

    # schemas

    def _schema(self, at: _Where, old: Any, new: Any, path: str, stack: frozenset[tuple[str | None, str | None]]) -> None:
        if len(stack) > _MAX_DEPTH or path.count(".") + path.count("[]") > _MAX_DEPTH:
            return
        old_alts, old_null = _alternatives(self.old, old)
        new_alts, new_null = _alternatives(self.new, new)
        old_types, new_types = _types(old_alts, old_null), _types(new_alts, new_null)
        if at.direction == "response":
            if not _covers(old_types, new_types):
                if new_types is not None and "null" in new_types and _covers(old_types, new_types - {"null"}):
                    at.emit(path, "became nullable")
                else:
                    at.emit(path, f"type changed from '{_show_types(old_types)}' to '{_show_types(new_types)}'")
        else:
            if not _covers(new_types, old_types):
                if old_types is not None and "null" in old_types and _covers(new_types, old_types - {"null"}):
                    at.emit(path, "no longer accepts null")
                else:
                    at.emit(path, f"type changed from '{_show_types(old_types)}' to '{_show_types(new_types)}'")
            old_enum, new_enum = _enum(old_alts), _enum(new_alts)
            if new_enum is not None:
                if old_enum is None:
                    at.emit(path, "restricted to enum values " + ", ".join(sorted(_show_value(json.loads(v)) for v in new_enum)))
                else:
                    for value in sorted(old_enum - new_enum):
                        at.emit(path, f"enum value {_show_value(json.loads(value))} removed")
        for (old_schema, old_ref), (new_schema, new_ref) in _pair(old_alts, new_alts):
            key = (old_ref, new_ref)
            if (old_ref or new_ref) and key in stack:
                continue  # a cycle: this pair of schemas is already being compared further up
            inner = stack | {key} if (old_ref or new_ref) else stack
            self._variant(at, old_schema, new_schema, path, inner)

    def _variant(
        self,
        at: _Where,
        old: dict[str, Any],
        new: dict[str, Any],
        path: str,
        stack: frozenset[tuple[str | None, str | None]],
    ) -> None:
        self._format_and_bounds(at, old, new, path)
        old_types, new_types = _variant_types(old), _variant_types(new)
        if _has(old_types, "object") and _has(new_types, "object"):
            self._object(at, old, new, path, stack)
        if _has(old_types, "array") and _has(new_types, "array") and ("items" in old or "items" in new):
            self._schema(at, old.get("items", {}), new.get("items", {}), f"{path}[]", stack)

    def _format_and_bounds(self, at: _Where, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_format, new_format = old.get("format"), new.get("format")
        if at.direction == "response":
            if old_format is not None and new_format != old_format:
                at.emit(path, f"format changed from '{old_format}' to '{new_format or 'none'}'")
            return
        if new_format is not None and new_format != old_format:
            at.emit(path, f"format changed from '{old_format or 'none'}' to '{new_format}'")
        if new.get("pattern") is not None and new.get("pattern") != old.get("pattern"):
            at.emit(path, "pattern " + ("added" if old.get("pattern") is None else "changed") + f": {new['pattern']}")
        for key in _UPPER_BOUNDS + _LOWER_BOUNDS:
            before, after = _number(old.get(key)), _number(new.get(key))
            if after is None:
                continue
            tighter = before is None or (after < before if key in _UPPER_BOUNDS else after > before)
            if tighter:
                shown = "none" if before is None else old[key]
                at.emit(path, f"{key} tightened from {shown} to {new[key]}")

    def _object(
        self,
        at: _Where,
        old: dict[str, Any],
        new: dict[str, Any],
        path: str,
        stack: frozenset[tuple[str | None, str | None]],
    ) -> None:
        old_props: dict[str, Any] = old.get("properties") or {}
        new_props: dict[str, Any] = new.get("properties") or {}
        old_required, new_required = set(old.get("required") or []), set(new.get("required") or [])
        old_extra, new_extra = old.get("additionalProperties"), new.get("additionalProperties")
        if at.direction == "response":
            for name, old_schema in old_props.items():
                here = _join(path, name)
                if name not in new_props:
                    at.emit(here, "removed")
                    continue
                if name in old_required and name not in new_required:
                    at.emit(here, "became optional")
                self._schema(at, old_schema, new_props[name], here, stack)
        else:
            open_now = _extras_allowed(new)
            for name, old_schema in old_props.items():
                here = _join(path, name)
                if name not in new_props:
                    if not open_now:
                        at.emit(here, "removed (unknown fields are rejected)")
                    elif isinstance(new_extra, dict):
                        self._schema(at, old_schema, new_extra, here, stack)
                    continue
                if name in new_required and name not in old_required:
                    at.emit(here, "became required")
                self._schema(at, old_schema, new_props[name], here, stack)
            for name in sorted(new_required - old_required - set(old_props)):
                at.emit(_join(path, name), "added as required")
            if _extras_allowed(old) and not open_now:
                at.emit(path, "no longer accepts unknown fields")
        if isinstance(old_extra, dict) and isinstance(new_extra, dict):
            self._schema(at, old_extra, new_extra, _join(path, "*"), stack)


def _has(kinds: Types, kind: str) -> bool:
    return kinds is None or kind in kinds


def _pair(old: list[Alt], new: list[Alt]) -> Iterator[tuple[Alt, Alt]]:
    """Pair union variants: same $ref first, then the same types, then overlapping types."""
    free = list(range(len(new)))

    def take(test: Any) -> int | None:
        for index in free:
            if test(new[index]):
                free.remove(index)
                return index
        return None

    pending: list[Alt] = []
    for alt in old:
        index = take(lambda n, a=alt: a[1] is not None and n[1] == a[1]) if alt[1] else None
        if index is None:
            pending.append(alt)
        else:
            yield alt, new[index]
    still: list[Alt] = []
    for alt in pending:
        index = take(lambda n, a=alt: _variant_types(n[0]) == _variant_types(a[0]))
        if index is None:
            still.append(alt)
        else:
            yield alt, new[index]
    for alt in still:
        index = take(lambda n, a=alt: _overlap(_variant_types(a[0]), _variant_types(n[0])))
        if index is not None:
            yield alt, new[index]


def _overlap(one: Types, other: Types) -> bool:
    return one is None or other is None or bool(one & other)


# --- snapshot and CLI ---------------------------------------------------------------------


def render(schema: dict[str, Any]) -> str:
    """The snapshot's text: pretty, sorted keys, trailing newline (stable diffs)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def live_schema() -> dict[str, Any]:
    """The schema the current code serves at /openapi.json (no database, no lifespan)."""
    from core.settings import Settings
    from hub.app import create_app

    with tempfile.TemporaryDirectory(prefix="hub-openapi-") as data_dir:
        app = create_app(Settings(demo_tenant=False, data_dir=Path(data_dir)))
        return json.loads(json.dumps(app.openapi()))


def load_snapshot(path: Path | str | None = None) -> dict[str, Any]:
    return json.loads(Path(path or SNAPSHOT_PATH).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def write_snapshot(schema: dict[str, Any], path: Path | str | None = None) -> Path:
    target = Path(path or SNAPSHOT_PATH)
    target.write_text(render(schema), encoding="utf-8")
    return target


def _lines(items: Iterable[str]) -> str:
    return "".join(f"  - {item}\n" for item in items)


def run_cli(
    *,
    check_only: bool = False,
    write: bool = False,
    snapshot: Path | str | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """`hub openapi [--check | --write] [--snapshot PATH]`; returns the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    path = Path(snapshot) if snapshot else SNAPSHOT_PATH
    live = live_schema()
    if write:
        if path.exists():
            accepted = check(load_snapshot(path), live)
            if accepted:
                err.write(
                    f"warning: the new snapshot accepts {len(accepted)} breaking change(s) without a major"
                    f" version bump (info.version {live.get('info', {}).get('version')}):\n{_lines(accepted)}"
                )
        out.write(f"wrote {write_snapshot(live, path)}\n")
        return 0
    if not check_only:
        out.write(render(live))
        return 0
    if not path.exists():
        err.write(f"no contract snapshot at {path}; create it with `hub openapi --write`\n")
        return 1
    old = load_snapshot(path)
    broken = breaking_changes(old, live)
    if broken and not _major_bumped(old, live):
        err.write(
            f"{len(broken)} breaking change(s) against {path}:\n{_lines(broken)}"
            "If the break is intended, bump the major version (hub.app.API_VERSION) and run"
            " `hub openapi --write`; otherwise restore the removed or changed parts.\n"
        )
        return 1
    if broken:
        out.write(
            f"major version went from {major_version(old)} to {major_version(live)}: accepting"
            f" {len(broken)} breaking change(s); run `hub openapi --write` to record them\n"
        )
    elif render(old) != render(live):
        out.write(f"no breaking changes; {path.name} is out of date, refresh it with `hub openapi --write`\n")
    else:
        out.write(f"no breaking changes; {path.name} is current\n")
    return 0
