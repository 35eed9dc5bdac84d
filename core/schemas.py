"""Pydantic shapes of the domain at its edges (HTTP bodies, event payloads)."""

from __future__ import annotations

import math
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, field_validator

# No slash (it is a path segment) and no blank or control character first. Explicit ranges,
# not \s, so every regex dialect (pydantic's, a client's validator) reads it the same way.
EXTERNAL_ID_PATTERN = r"^[^/\x00-\x20\x7f-\xa0][^/]*$"
SYSTEM_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
SystemName = Annotated[str, StringConstraints(pattern=SYSTEM_PATTERN)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=EXTERNAL_ID_PATTERN)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Sent and shown as a decimal string so no digit is lost to floating point.
Amount = Annotated[
    Decimal,
    Field(ge=0, max_digits=20, decimal_places=4),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]{1,16}(\.[0-9]{1,4})?$", "examples": ["25000000.00"]}),
]
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_DEPTH = 32
_INT_LIMIT = 2**63
# From here on orjson writes an integral float in exponent form, while PostgreSQL's jsonb
# gives it back as an integer: the audit hash and the stored payloads would disagree.
_EXPONENT_FLOAT = 1e16


# Values kept as they are; checked by exact type first, as nearly every value is one (a sync
# validates thousands of attributes per page).
_AS_IS = frozenset({str, bool, type(None)})


def _json_value(value: Any, depth: int) -> Any:
    """`value` with numbers in a form every backend keeps exactly; raises on what none can."""
    if depth > MAX_ATTRIBUTE_DEPTH:
        raise ValueError(f"attributes nest at most {MAX_ATTRIBUTE_DEPTH} levels deep")
    if isinstance(value, dict):
        if depth == MAX_ATTRIBUTE_DEPTH:  # even a plain value inside is one level too deep
            return {k: _json_value(v, depth + 1) for k, v in value.items()}
        return {k: v if type(v) in _AS_IS else _json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth == MAX_ATTRIBUTE_DEPTH:
            return [_json_value(v, depth + 1) for v in value]
        return [v if type(v) in _AS_IS else _json_value(v, depth + 1) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("attribute numbers must be finite")
        if value == 0:
            return 0.0  # no negative zero: jsonb drops its sign
        if value.is_integer() and abs(value) >= _EXPONENT_FLOAT:
            value = int(Decimal(repr(value)))
        else:
            return value
    if isinstance(value, int):
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise ValueError("attribute numbers must lie within +-9.2e18")
        return value
    raise ValueError(f"unsupported attribute value of type {type(value).__name__}")


def _check_attributes(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
    return _json_value(value, 1)  # type: ignore[no-any-return]


_ATTRIBUTE_SCALAR = [
    {"type": "string"},
    {"type": "boolean"},
    {"type": "null"},
    {"type": "number", "minimum": -9.2e18, "maximum": 9.2e18},
]
# What the validator above accepts, as far as a schema can say it (two levels deep).
ATTRIBUTES_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_ATTRIBUTES,
    "additionalProperties": {
        "anyOf": [
            *_ATTRIBUTE_SCALAR,
            {"type": "array", "items": {"anyOf": _ATTRIBUTE_SCALAR}},
            {"type": "object", "additionalProperties": {"anyOf": _ATTRIBUTE_SCALAR}},
        ]
    },
    "examples": [{"sector": "fintech", "fund": "III"}],
}
Attributes = Annotated[dict[str, Any], WithJsonSchema(ATTRIBUTES_SCHEMA)]


class _Strict(BaseModel):
    # No whitespace stripping: what the published schema accepts is exactly what validates.
    model_config = ConfigDict(extra="forbid")


class ExternalRef(_Strict):
    system: SystemName = Field(examples=["salesforce"])
    external_id: ExternalId = Field(examples=["0065e00000Abc12AAC"])


class DealFields(_Strict):
    """A deal's business fields, as a CRM would push them (a full representation)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=300)] = Field(examples=["Acme Series B"])
    stage: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, examples=["diligence"]
    )
    amount: Amount | None = Field(default=None, examples=["25000000.00"])
    currency: Currency | None = Field(default=None, examples=["USD"])
    close_date: date | None = None
    company: Annotated[str, StringConstraints(max_length=300)] | None = Field(default=None, examples=["Acme Corp"])
    owner: Annotated[str, StringConstraints(max_length=200)] | None = Field(default=None, examples=["jane@fund.example"])
    attributes: Attributes = Field(default_factory=dict)

    _attrs = field_validator("attributes")(_check_attributes)


class DealCreate(DealFields):
    external_refs: list[ExternalRef] = Field(default_factory=list, max_length=20)


class DealPatch(_Strict):
    """A JSON merge patch of a deal: absent fields stay, null clears, attributes merge."""

    # Absent keeps the name; null is refused (a deal always has one), so the schema says string.
    name: Annotated[
        Annotated[str, StringConstraints(min_length=1, max_length=300)] | None,
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 300}),
    ] = None
    stage: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    close_date: date | None = None
    company: Annotated[str, StringConstraints(max_length=300)] | None = None
    owner: Annotated[str, StringConstraints(max_length=200)] | None = None
    attributes: Annotated[dict[str, Any] | None, WithJsonSchema({"anyOf": [ATTRIBUTES_SCHEMA, {"type": "null"}]})] = None

    _attrs = field_validator("attributes")(_check_attributes)

    @field_validator("name")
    @classmethod
    def _name_not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("name cannot be cleared")
        return value


class DealOut(BaseModel):
    id: str
    name: str
    stage: str | None
    amount: Decimal | None
    currency: str | None
    close_date: date | None
    company: str | None
    owner: str | None
    attributes: dict[str, Any]
    external_refs: list[ExternalRef]
    version: int
    created_at: datetime
    updated_at: datetime


class DealPage(BaseModel):
    items: list[DealOut]
    next_cursor: str | None


class UpsertItem(_Strict):
    system: SystemName
    external_id: ExternalId
    deal: DealFields


class UpsertResult(BaseModel):
    index: int
    status: Literal["created", "updated", "unchanged", "failed"]
    deal_id: str | None = None
    version: int | None = None
    error: dict[str, Any] | None = None


class BatchUpsertOut(BaseModel):
    created: int
    updated: int
    unchanged: int
    failed: int
    results: list[UpsertResult]
