"""Row ids: version 7 UUIDs, unique, each greater than the one before."""

import time
import uuid
from datetime import UTC, datetime, timedelta

from core import ids
from core.ids import new_id, new_ids


def _millis(value: str) -> int:
    return uuid.UUID(value).int >> 80


def test_ids_are_version_7_uuids_as_text():
    for value in [new_id() for _ in range(2000)] + new_ids(2000):
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_are_unique_across_refills_of_the_random_pool():
    # Far more random digits than one read from the OS gives, single and batched.
    values = [new_id() for _ in range(20_000)] + new_ids(5_000) + [new_id() for _ in range(1_000)]
    assert len(set(values)) == len(values)


def test_ids_carry_the_time_they_were_made_and_sort_by_it():
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.003)
    batch = new_ids(100)
    after = time.time_ns() // 1_000_000
    assert before <= _millis(first) < _millis(batch[0]) <= after
    assert batch == sorted(batch)
    assert first < batch[0]


def test_ids_made_in_one_millisecond_still_grow(monkeypatch):
    # A frozen clock: every id falls in the same millisecond, more of them than its counter
    # holds, so later ones borrow the next millisecond rather than repeat or go back.
    frozen = (time.time_ns() // 1_000_000 + 10_000) * 1_000_000
    monkeypatch.setattr(ids.time, "time_ns", lambda: frozen)
    for name in ("_millis", "_head", "_counter"):  # later tests' ids are not from the future
        monkeypatch.setattr(ids, name, getattr(ids, name))
    values = [new_id() for _ in range(6_000)]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert _millis(values[0]) == frozen // 1_000_000
    assert _millis(values[-1]) > _millis(values[0])


def test_the_floor_id_of_a_moment_divides_ids_made_before_it_from_those_made_after():
    earlier = new_ids(50)
    time.sleep(0.002)
    moment = datetime.now(UTC)
    time.sleep(0.002)
    later = new_ids(50)
    floor = ids.floor_id(moment)
    assert uuid.UUID(floor).version == 7 and _millis(floor) == int(moment.timestamp() * 1000)
    assert max(earlier) < floor < min(later)
    assert ids.floor_id(moment - timedelta(days=30)) < floor
