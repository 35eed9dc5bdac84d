"""Parameters and results of the Salesforce actions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connectors.sdk import DealRecord

# API names: standard (Name), custom (Hub_Deal_Id__c), namespaced (ns__Field__c).
API_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,79}$"


class UpsertRecordParams(BaseModel):
    """Create or update one record by an external id field."""

    model_config = ConfigDict(extra="forbid")

    sobject: str = Field("Opportunity", pattern=API_NAME)
    external_id_field: str = Field(pattern=API_NAME, description="An External ID field of the object, or Id")
    external_id: str = Field(min_length=1)
    fields: dict[str, Any] = Field(description="Field values; the external id field and Id are ignored")


class UpsertResult(BaseModel):
    """Outcome of a single upsert."""

    id: str | None = Field(description="Record id (absent when Salesforce answers 204)")
    created: bool


class UpsertDealsParams(BaseModel):
    """Create or update up to 200 deals as Opportunities in one call."""

    model_config = ConfigDict(extra="forbid")

    external_id_field: str = Field(pattern=API_NAME, description="External ID field holding each deal's external_id")
    deals: list[DealRecord] = Field(min_length=1, max_length=200)
    all_or_none: bool = False


class ItemError(BaseModel):
    """One error Salesforce reported for a record."""

    code: str | None = None
    message: str = ""
    fields: list[str] = Field(default_factory=list)


class ItemResult(BaseModel):
    """Outcome for one deal of a collection upsert, in input order."""

    external_id: str
    id: str | None = None
    success: bool
    created: bool = False
    errors: list[ItemError] = Field(default_factory=list)


class UpsertDealsResult(BaseModel):
    """Outcome of a collection upsert: one item per deal, and the counts."""

    results: list[ItemResult]
    created: int
    updated: int
    failed: int
