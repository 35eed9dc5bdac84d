"""Pure mapping between Salesforce Opportunity records and the hub's ``DealRecord``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from connectors.sdk import DealRecord, parse_cursor

EXTERNAL_SYSTEM = "salesforce"

# Fields with a DealRecord column; everything else lands in ``attributes``.
_MAPPED = frozenset(
    {"attributes", "Id", "Name", "StageName", "Amount", "CurrencyIsoCode", "CloseDate", "Account", "Owner", "IsDeleted"}
)


def _datetime(value: Any) -> datetime | None:
    parsed = parse_cursor(value)
    return parsed if isinstance(parsed, datetime) else None


def _related_name(record: Mapping[str, Any], relationship: str) -> str | None:
    related = record.get(relationship)
    return related.get("Name") if isinstance(related, Mapping) else None


def to_deal(record: Mapping[str, Any]) -> DealRecord:
    """Map an Opportunity as returned by a SOQL query to a ``DealRecord``.

    ``Account.Name`` and ``Owner.Name`` (relationship fields) become ``company`` and
    ``owner``; ``SystemModstamp`` (else ``LastModifiedDate``) becomes ``updated_at``.
    Unmapped fields, custom ones included, are kept in ``attributes``.
    """
    amount = record.get("Amount")
    close_date = record.get("CloseDate")
    return DealRecord(
        external_system=EXTERNAL_SYSTEM,
        external_id=str(record["Id"]),
        name=record.get("Name"),
        stage=record.get("StageName"),
        # Through str(): JSON numbers arrive as floats, and Decimal(float) keeps binary noise.
        amount=Decimal(str(amount)) if amount is not None else None,
        currency=record.get("CurrencyIsoCode"),
        close_date=date.fromisoformat(close_date) if close_date else None,
        company=_related_name(record, "Account"),
        owner=_related_name(record, "Owner"),
        attributes={key: value for key, value in record.items() if key not in _MAPPED},
        deleted=bool(record.get("IsDeleted", False)),
        updated_at=_datetime(record.get("SystemModstamp") or record.get("LastModifiedDate")),
    )


def from_deal(deal: DealRecord, *, include_currency: bool = False) -> dict[str, Any]:
    """The Opportunity fields to write for ``deal`` (the push direction).

    ``None`` values are left out, so a partial deal never blanks a field in Salesforce.
    ``company`` and ``owner`` are not written: Salesforce needs ``AccountId``/``OwnerId``,
    which a name cannot safely resolve to.

    :param include_currency: write ``CurrencyIsoCode`` (only valid in multi-currency orgs).
    """
    fields: dict[str, Any] = {
        "Name": deal.name,
        "StageName": deal.stage,
        # Salesforce takes JSON numbers; currency amounts have two decimals, exact in a double.
        "Amount": float(deal.amount) if deal.amount is not None else None,
        "CloseDate": deal.close_date.isoformat() if deal.close_date else None,
    }
    if include_currency:
        fields["CurrencyIsoCode"] = deal.currency
    return {key: value for key, value in fields.items() if value is not None}
