"""Pure mapping Salesforce Opportunity <-> DealRecord."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from connectors.salesforce import from_deal, to_deal
from connectors.sdk import DealRecord

OPPORTUNITY = {
    "attributes": {"type": "Opportunity", "url": "/services/data/v62.0/sobjects/Opportunity/006x000000AbCdEAAZ"},
    "Id": "006x000000AbCdEAAZ",
    "Name": "Acme - 200 Widgets",
    "StageName": "Negotiation/Review",
    "Amount": 15000.1,
    "CurrencyIsoCode": "EUR",
    "CloseDate": "2024-06-30",
    "Probability": 90.0,
    "IsClosed": False,
    "AccountId": "001x000000XyZaBAAV",
    "Account": {"attributes": {"type": "Account", "url": "/services/data/v62.0/sobjects/Account/001x"}, "Name": "Acme"},
    "OwnerId": "005x000000OwNeRAAF",
    "Owner": {"attributes": {"type": "User", "url": "/services/data/v62.0/sobjects/User/005x"}, "Name": "Jane Doe"},
    "LastModifiedDate": "2024-05-01T09:00:00.000+0000",
    "SystemModstamp": "2024-05-01T10:30:15.000+0000",
    "Hub_Score__c": 7,
}


def test_to_deal_maps_the_columns() -> None:
    deal = to_deal(OPPORTUNITY)
    assert deal == DealRecord(
        external_system="salesforce",
        external_id="006x000000AbCdEAAZ",
        name="Acme - 200 Widgets",
        stage="Negotiation/Review",
        amount=Decimal("15000.1"),
        currency="EUR",
        close_date=date(2024, 6, 30),
        company="Acme",
        owner="Jane Doe",
        attributes={
            "Probability": 90.0,
            "IsClosed": False,
            "AccountId": "001x000000XyZaBAAV",
            "OwnerId": "005x000000OwNeRAAF",
            "LastModifiedDate": "2024-05-01T09:00:00.000+0000",
            "SystemModstamp": "2024-05-01T10:30:15.000+0000",
            "Hub_Score__c": 7,
        },
        deleted=False,
        updated_at=datetime(2024, 5, 1, 10, 30, 15, tzinfo=UTC),
    )


def test_amount_keeps_its_decimal_digits() -> None:
    assert to_deal({**OPPORTUNITY, "Amount": 0.1}).amount == Decimal("0.1")


def test_sparse_records() -> None:
    deal = to_deal(
        {
            "attributes": {"type": "Opportunity"},
            "Id": "006A",
            "Amount": None,
            "CloseDate": None,
            "Account": None,
            "Owner": None,
            "LastModifiedDate": "2024-01-01T00:00:00.000+0000",
        }
    )
    assert (deal.amount, deal.close_date, deal.company, deal.owner, deal.currency) == (None, None, None, None, None)
    assert deal.updated_at == datetime(2024, 1, 1, tzinfo=UTC)


def test_deleted_rows_from_query_all() -> None:
    assert to_deal({**OPPORTUNITY, "IsDeleted": True}).deleted is True


def test_from_deal_writes_only_known_values() -> None:
    deal = to_deal(OPPORTUNITY)
    assert from_deal(deal) == {
        "Name": "Acme - 200 Widgets",
        "StageName": "Negotiation/Review",
        "Amount": 15000.1,
        "CloseDate": "2024-06-30",
    }
    assert from_deal(deal, include_currency=True)["CurrencyIsoCode"] == "EUR"
    assert from_deal(DealRecord(external_system="hub", external_id="d1", stage="Closed Won")) == {
        "StageName": "Closed Won"
    }


def test_round_trip_of_the_written_fields() -> None:
    deal = to_deal(OPPORTUNITY)
    again = to_deal({"Id": deal.external_id, **from_deal(deal, include_currency=True)})
    assert (again.name, again.stage, again.amount, again.close_date, again.currency) == (
        deal.name,
        deal.stage,
        deal.amount,
        deal.close_date,
        deal.currency,
    )
