"""Sync schedules: a fixed interval, or a five-field cron expression (UTC).

    {"interval_seconds": 900}
    {"cron": "*/15 * * * *"}        minute hour day-of-month month day-of-week

Cron fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists of those;
day-of-week counts 0 (or 7) as Sunday. As in cron, when both day fields are restricted
a day matching either one is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import ValidationFailed

MIN_INTERVAL_SECONDS = 60
MAX_INTERVAL_SECONDS = 31 * 86400
# A cron expression that matches nothing within this many days matches nothing at all (Feb 30).
_SEARCH_DAYS = 4 * 366 + 1
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                first, last = body.split("-", 1)
                start, end = int(first), int(last)
            else:
                start = int(body)
                end = high if step_text else start
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not a number, range or step") from None
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ValueError("a cron expression has five fields: minute hour day-of-month month day-of-week")
        minutes, hours, days, months, weekdays = (
            _parse_field(text, name, low, high) for text, (name, low, high) in zip(parts, _FIELDS, strict=True)
        )
        return cls(
            minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
            any_day=parts[2] == "*", any_weekday=parts[4] == "*",
        )  # fmt: skip

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, moment: datetime) -> datetime | None:
        """The first matching minute strictly after `moment`; None if there is none."""
        start = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        return None


def validate(schedule: dict[str, Any] | None, *, loc: tuple[str, ...] = ("body", "sync_schedule")) -> dict[str, Any] | None:
    """`schedule` in its stored form, or a 422 naming what is wrong."""
    if schedule is None:
        return None

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed(f"Invalid sync schedule: {message}", details=[{"loc": list(loc), "msg": message}])

    if set(schedule) == {"interval_seconds"}:
        seconds = schedule["interval_seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise refuse("interval_seconds must be an integer")
        if not MIN_INTERVAL_SECONDS <= seconds <= MAX_INTERVAL_SECONDS:
            raise refuse(f"interval_seconds must lie between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS}")
        return {"interval_seconds": seconds}
    if set(schedule) == {"cron"}:
        expression = schedule["cron"]
        if not isinstance(expression, str) or len(expression) > 100:
            raise refuse("cron must be a string of at most 100 characters")
        try:
            cron = Cron.parse(expression)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        if cron.next_after(datetime.now(UTC)) is None:
            raise refuse("the cron expression never matches")
        return {"cron": " ".join(expression.split())}
    raise refuse("give either interval_seconds or cron")


def next_run(schedule: dict[str, Any] | None, after: datetime) -> datetime | None:
    """When a connection with `schedule` next syncs, counting from `after`."""
    if not schedule:
        return None
    if "interval_seconds" in schedule:
        return after + timedelta(seconds=int(schedule["interval_seconds"]))
    return Cron.parse(schedule["cron"]).next_after(after)
