"""The plain records connectors produce: what the hub stores, free of any vendor shape."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Kind(enum.StrEnum):
    """What a connector connects to."""

    CRM = "crm"
    DOCUMENT_SOURCE = "document_source"
    ENRICHMENT = "enrichment"


class Record(BaseModel):
    """A generic record read from a stream.

    :param id: the provider's primary key value, as a string.
    :param data: the record's fields as the provider sent them (JSON-able).
    :param deleted: ``True`` if the provider reports the record deleted.
    :param updated_at: when the provider last changed it, if known.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    data: dict[str, Any] = Field(default_factory=dict)
    deleted: bool = False
    updated_at: datetime | None = None


class DealRecord(BaseModel):
    """A deal as a CRM knows it, mapped to the hub's vocabulary.

    The natural key is ``(external_system, external_id)``; ``attributes`` keeps the
    provider fields the hub has no column for. ``deleted`` marks a tombstone.
    """

    model_config = ConfigDict(frozen=True)

    external_system: str
    external_id: str
    name: str | None = None
    stage: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    close_date: date | None = None
    company: str | None = None
    owner: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    deleted: bool = False
    updated_at: datetime | None = None

    @property
    def id(self) -> str:
        """The provider's id (``external_id``), so deals and records share ``.id``."""
        return self.external_id


R = TypeVar("R", Record, DealRecord)


@dataclass(frozen=True)
class Page(Generic[R]):
    """One page of a stream: its records and the cursor to checkpoint after storing them.

    :param records: the records of this page, in provider order.
    :param cursor: the value to resume from after this page, in its real type (a
        ``datetime``, an ``int``...), or ``None`` for streams without a cursor.
    """

    records: Sequence[R]
    cursor: Any = None
