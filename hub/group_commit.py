"""Group commit for the CRM upsert.

A CRM pushing deals sends many small upserts at once. Each in its own transaction
would pay for a BEGIN, the audit-head lock, a handful of statements and a COMMIT;
on SQLite, with its single writer, those transactions also queue behind each other.
Here concurrent upserts of one tenant are written together: while one transaction
is being written, newly arrived upserts wait, and the next transaction takes all of
them. At low load a batch is one request and nothing waits; under load the cost of
a transaction is shared. Each request keeps its own audit event (with its own actor,
request id and idempotency key), its own outbox event and its own stored response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi.responses import Response

from core import deals, idempotency
from core.changes import ChangeContext, mutation
from core.jsonable import dumps
from core.schemas import DealFields
from hub import etags
from hub.state import HubState
from hub.writes import committed

log = logging.getLogger("hub.group_commit")
MAX_BATCH = 256


@dataclass
class _Upsert:
    context: ChangeContext
    fingerprint: str | None
    system: str
    external_id: str
    fields: DealFields
    # The response, or None when another request holds the idempotency key.
    future: asyncio.Future[Response | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _render(outcome: deals.UpsertOutcome) -> tuple[int, bytes, dict[str, str]]:
    deal = outcome.deal
    headers = {
        "Location": f"/api/v1/deals/{deal.id}",
        "X-Upsert-Outcome": outcome.status,
        "ETag": etags.etag(deal.id, deal.version),
    }
    # The deal as `DealOut` shows it, without building the model (tests/core/test_deals.py).
    return (201 if outcome.status == "created" else 200), dumps(deals.view_json(deal)), headers


class UpsertCommitter:
    def __init__(self, state: HubState, *, max_batch: int = MAX_BATCH) -> None:
        self._state = state
        self._max_batch = max_batch
        self._queues: dict[str, list[_Upsert]] = {}
        self._draining: set[str] = set()

    async def upsert(
        self, context: ChangeContext, fingerprint: str | None, system: str, external_id: str, fields: DealFields
    ) -> Response | None:
        """Write one upsert with whatever else is waiting; None if its idempotency key is taken."""
        item = _Upsert(context, fingerprint, system, external_id, fields)
        tenant_id = context.tenant_id
        self._queues.setdefault(tenant_id, []).append(item)
        if tenant_id not in self._draining:
            self._draining.add(tenant_id)
            asyncio.create_task(self._drain(tenant_id))
        return await item.future

    async def _drain(self, tenant_id: str) -> None:
        queue = self._queues[tenant_id]
        try:
            while queue:
                batch, later, natural_keys = [], [], set()
                for item in queue[: self._max_batch]:
                    # One write per deal per transaction, so each response shows its own write.
                    key = (item.system, item.external_id)
                    (later if key in natural_keys else batch).append(item)
                    natural_keys.add(key)
                del queue[: self._max_batch]
                queue[:0] = later
                await self._write(batch)
        finally:
            # No await since the loop saw an empty queue: nothing can have slipped in.
            self._draining.discard(tenant_id)
            if not queue:
                self._queues.pop(tenant_id, None)

    async def _write(self, batch: list[_Upsert]) -> None:
        try:
            await self._write_together(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failure: retry each request on its own
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            log.warning("group commit of %d upserts failed; writing them one by one", len(batch))
            for item in batch:
                await self._write([item])

    async def _write_together(self, batch: list[_Upsert]) -> None:
        started = time.perf_counter()
        try:
            await self._write_batch(batch)
        finally:
            log.debug("group commit", extra={"batch": len(batch), "ms": round((time.perf_counter() - started) * 1000, 2)})

    async def _write_batch(self, batch: list[_Upsert]) -> None:
        state = self._state
        ttl = timedelta(hours=state.settings.idempotency_ttl_hours)
        claims = [
            idempotency.Claim(i.context.principal.actor_key, i.context.idempotency_key, i.fingerprint)
            for i in batch
            if i.context.idempotency_key is not None and i.fingerprint is not None
        ]
        async with mutation(state.db, batch[0].context) as m:
            won = await idempotency.claim_many(m.session, tenant_id=m.tenant_id, claims=claims, ttl=ttl)
            todo, taken = [], []
            for item in batch:
                key = item.context.idempotency_key
                pair = (item.context.principal.actor_key, key)
                if key is None:
                    todo.append(item)
                elif pair in won:
                    won.discard(pair)  # a second request with the same key in this batch waits
                    todo.append(item)
                else:
                    taken.append(item)
            outcomes = await deals.upsert_many(
                m, [(i.system, i.external_id, i.fields) for i in todo], contexts=[i.context for i in todo]
            )
            rendered = [_render(o) for o in outcomes]
            await idempotency.complete_many(
                m.session,
                [
                    (i.context.principal.actor_key, i.context.idempotency_key,
                     idempotency.StoredResponse(status, "application/json", body, headers))
                    for i, (status, body, headers) in zip(todo, rendered, strict=True)
                    if i.context.idempotency_key is not None
                ],
            )  # fmt: skip
        committed(state, m)
        for item, (status, body, headers) in zip(todo, rendered, strict=True):
            if not item.future.done():
                item.future.set_result(Response(body, status_code=status, media_type="application/json", headers=headers))
        for item in taken:
            if not item.future.done():
                item.future.set_result(None)
