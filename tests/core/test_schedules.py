"""Sync schedules: intervals and five-field cron expressions, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import ValidationFailed
from core.schedules import Cron, next_run, validate

MONDAY_0830 = datetime(2026, 11, 23, 8, 30, 15, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("*/15 * * * *", datetime(2026, 11, 23, 8, 45, tzinfo=UTC)),
        ("30 8 * * *", datetime(2026, 11, 24, 8, 30, tzinfo=UTC)),  # strictly after
        ("0 9 * * 1-5", datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),
        ("0 9 * * 6,0", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),  # Saturday
        ("0 9 * * 7", datetime(2026, 11, 29, 9, 0, tzinfo=UTC)),  # 7 is Sunday too
        ("0 0 1 1 *", datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
        ("5-10/5 22 * * *", datetime(2026, 11, 23, 22, 5, tzinfo=UTC)),
        # Both day fields restricted: either matches, as in cron (the 1st, or any Friday).
        ("0 12 1 * 5", datetime(2026, 11, 27, 12, 0, tzinfo=UTC)),
        ("0 0 29 2 *", datetime(2028, 2, 29, 0, 0, tzinfo=UTC)),
    ],
)
def test_the_next_tick_of_a_cron_expression(expression, expected):
    assert Cron.parse(expression).next_after(MONDAY_0830) == expected


def test_a_cron_expression_that_never_matches_has_no_next_tick():
    assert Cron.parse("0 0 30 2 *").next_after(MONDAY_0830) is None


@pytest.mark.parametrize(
    "schedule",
    [
        {"cron": "* * * *"},
        {"cron": "60 * * * *"},
        {"cron": "* 24 * * *"},
        {"cron": "* * 0 * *"},
        {"cron": "*/0 * * * *"},
        {"cron": "a * * * *"},
        {"cron": "5-1 * * * *"},
        {"cron": "0 0 31 4 *"},
        {"cron": 5},
        {"interval_seconds": 59},
        {"interval_seconds": 32 * 86400},
        {"interval_seconds": True},
        {"interval_seconds": "900"},
        {"interval_seconds": 900, "cron": "* * * * *"},
        {"every": "day"},
    ],
)
def test_invalid_schedules_are_refused_with_where_and_why(schedule):
    with pytest.raises(ValidationFailed) as refused:
        validate(schedule)
    assert refused.value.details[0]["loc"] == ["body", "sync_schedule"] and refused.value.details[0]["msg"]


def test_schedules_are_stored_normalised_and_tick_on():
    assert validate(None) is None
    assert validate({"cron": " 0  9 * * 1-5 "}) == {"cron": "0 9 * * 1-5"}
    assert validate({"interval_seconds": 900}) == {"interval_seconds": 900}
    assert next_run({"interval_seconds": 900}, MONDAY_0830) == MONDAY_0830 + timedelta(seconds=900)
    assert next_run({"cron": "0 9 * * 1-5"}, MONDAY_0830) == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert next_run(None, MONDAY_0830) is None
