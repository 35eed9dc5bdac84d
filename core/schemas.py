"""Pydantic shapes of the domain at its edges (HTTP bodies, event payloads)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

SystemName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\s/][^/]*$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Amount = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=4)]
MAX_ATTRIBUTES = 100


def _check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


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
    attributes: dict[str, Any] = Field(default_factory=dict, examples=[{"sector": "fintech"}])

    _attrs = field_validator("attributes")(_check_attributes)


class DealCreate(DealFields):
    external_refs: list[ExternalRef] = Field(default_factory=list, max_length=20)


class DealPatch(_Strict):
    """A JSON merge patch of a deal: absent fields stay, null clears, attributes merge."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=300)] | None = None
    stage: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    close_date: date | None = None
    company: Annotated[str, StringConstraints(max_length=300)] | None = None
    owner: Annotated[str, StringConstraints(max_length=200)] | None = None
    attributes: dict[str, Any] | None = None

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
