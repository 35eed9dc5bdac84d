"""The deal event payload is built without pydantic; it must say exactly what the
pydantic view says."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from core import deals
from core.deals import DealRow, RefRow


def _row(**overrides: object) -> DealRow:
    now = datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=UTC)
    values: dict[str, object] = {
        "id": "3f2b8c1e-7d4a-4e1b-9c55-0a6f2d9e8b71",
        "name": "Acme Series B",
        "stage": "diligence",
        "amount": Decimal("25000000.00"),
        "currency": "USD",
        "close_date": date(2027, 3, 31),
        "company": "Acme Corp",
        "owner": "jane@fund.example",
        "attributes": {"sector": "fintech", "round": 2, "ratio": 0.25, "tags": ["a", None], "nested": {"x": True}},
        "refs": [RefRow("r1", "salesforce", "006A", now), RefRow("r2", "affinity", "42", now)],
        "version": 3,
        "created_at": now,
        "updated_at": now,
    }
    values.update(overrides)
    return DealRow(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"amount": None, "stage": None, "currency": None, "close_date": None, "company": None, "owner": None},
        {"amount": Decimal("1E+2")},
        {"amount": Decimal("0.0001")},
        {"amount": Decimal("5E-7")},
        {"attributes": {}, "refs": []},
        {"created_at": datetime(2026, 1, 1, tzinfo=UTC), "updated_at": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)},
        {"updated_at": datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))},
    ],
)
def test_the_event_payload_is_the_pydantic_view(overrides: dict[str, object]) -> None:
    deal = _row(**overrides)
    assert deals.view_json(deal) == deals.view(deal).model_dump(mode="json")
    assert list(deals.view_json(deal)) == list(deals.view(deal).model_dump(mode="json"))
