"""Row ids: time-ordered (version 7) UUIDs as text.

Rows written together get neighbouring ids, so each insert lands on the last pages of the
primary-key index instead of dirtying a random page apiece (random ids made SQLite's bulk
inserts of deals about half again slower). Within a thread ids only grow: the 12 bits
after the millisecond timestamp count up from a random start (RFC 9562, 6.2 method 1), so
events written in one transaction sort in the order they were made. 62 random bits
remain per id; ids are never the only guard of a row (every query is scoped to its tenant).
"""

from __future__ import annotations

import os
import time
from datetime import datetime

# The variant nibble of RFC 9562 (10xx) for each random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
# Random hex is read from the OS in blocks (one read per ~270 ids, not one per id), and the
# timestamp part is formatted once per millisecond: a batch upsert makes four ids per record.
# Module state, not per thread: ids made at once by two threads stay unique (their random
# bits), they only might not sort in the order they were made.
_BLOCK = 16 * 270
_COUNTER_LIMIT = 0xFFF
_pool, _at = "", 0
_millis, _head, _counter = -1, "", 0


def _random_hex(digits: int) -> str:
    """`digits` fresh random hex digits (never handed out twice)."""
    global _pool, _at
    if digits > _BLOCK:
        return os.urandom(digits // 2 + 1).hex()[:digits]
    at = _at
    if at + digits > len(_pool):
        _pool, at = os.urandom(_BLOCK // 2).hex(), 0
    _at = at + digits
    return _pool[at : at + digits]


def _head_of(millis: int) -> str:
    """An id's first 15 characters: its millisecond and version digit."""
    text = f"{millis:012x}"
    return f"{text[:8]}-{text[8:]}-7"


def _start(millis: int) -> None:
    global _millis, _head, _counter
    _millis, _head = millis, _head_of(millis)
    _counter = int(_random_hex(3), 16) >> 1  # from below 0x800: room to count up


def new_id() -> str:
    """A version 7 UUID as `str(uuid.UUID)` writes it, greater than the previous one."""
    global _counter
    millis = time.time_ns() // 1_000_000
    if millis > _millis:
        _start(millis)
    else:
        _counter += 1
        if _counter > _COUNTER_LIMIT:  # 4,096 ids in one millisecond: borrow the next one
            _start(_millis + 1)
    h = _random_hex(16)
    return f"{_head}{_counter:03x}-{_VARIANT[h[0]]}{h[1:4]}-{h[4:16]}"


def new_ids(count: int) -> list[str]:
    """`count` version 7 UUIDs, ascending, each greater than the previous id."""
    return [new_id() for _ in range(count)]


def floor_id(moment: datetime) -> str:
    """The least version 7 id of `moment`'s millisecond: every id made before it is
    smaller, so a time range of rows is a range of their primary key (ids made in other
    ways, such as version 4 ids of older rows, do not follow time: filter by time too)."""
    return f"{_head_of(int(moment.timestamp() * 1000))}000-8000-000000000000"
