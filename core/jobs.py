"""What API processes and workers share through Redis: the arq queue (jobs serialised
as JSON, with deterministic ids), the outbox nudge and the worker heartbeats.

Redis only carries hints. Every run, event and delivery is also a database row, so a
lost nudge or a restarted Redis delays work by one sweep at most and loses none of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import ConnectionPool, Redis

# Nudges are all alike: a short list is enough to say "look now" to every waiting relay.
NUDGE_BACKLOG = 16


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one hub deployment (`HUB_WORKER_NAMESPACE`)."""

    namespace: str

    @property
    def queue(self) -> str:
        return f"{self.namespace}:queue"

    @property
    def outbox_nudge(self) -> str:
        return f"{self.namespace}:outbox:nudge"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> when its heartbeat expires (epoch seconds)."""
        return f"{self.namespace}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.namespace}:worker:{worker_id}"


def serialize(data: dict[str, Any]) -> bytes:
    """arq's job and result serialiser: JSON, never pickle. A job's arguments must be JSON
    values (enqueueing anything else fails); a failed job's exception is kept as text."""
    result = data.get("r")
    if isinstance(result, BaseException):
        data = {**data, "r": f"{type(result).__name__}: {result}"}
    return orjson.dumps(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise TypeError("a job must be a JSON object")
    return value


def job_id(*parts: str) -> str:
    """A deterministic job id: enqueueing the same work twice is a no-op while it is queued or running."""
    return ":".join(parts)


def arq_redis(pool: ConnectionPool, keys: Keys) -> ArqRedis:
    """An arq client over an existing connection pool (closing it leaves the pool open)."""
    return ArqRedis(pool, job_serializer=serialize, job_deserializer=deserialize, default_queue_name=keys.queue)


async def enqueue(redis: Redis, keys: Keys, function: str, *args: Any, job_id: str, defer_seconds: float | None = None) -> bool:
    """Queue `function(*args)` under `job_id`; False when that job is already queued or running."""
    client = arq_redis(redis.connection_pool, keys)
    job = await client.enqueue_job(function, *args, _job_id=job_id, _defer_by=defer_seconds)
    return job is not None


async def reclaim(redis: Redis, job_id: str) -> None:
    """Forget what arq holds of a job whose worker died with it (its definition and its
    in-progress mark, which would otherwise block the id until the mark expires), so the
    job can be queued again at once."""
    await redis.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id)


async def alive(redis: Redis, keys: Keys, worker_id: str) -> bool:
    """Whether `worker_id`'s heartbeat has not expired."""
    expires = await redis.zscore(keys.workers, worker_id)
    return expires is not None and expires > time.time()


async def nudge_outbox(redis: Redis, keys: Keys) -> None:
    """Tell a waiting relay that outbox rows were committed (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(keys.outbox_nudge, b"1")
        pipe.ltrim(keys.outbox_nudge, 0, NUDGE_BACKLOG - 1)
        await pipe.execute()


async def beat(redis: Redis, keys: Keys, worker_id: str, info: dict[str, Any], ttl_seconds: float) -> None:
    """Record that `worker_id` is alive for the next `ttl_seconds`."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker(worker_id), orjson.dumps({**info, "beat_at": now}), px=max(1, int(ttl_seconds * 1000)))
        pipe.zadd(keys.workers, {worker_id: now + ttl_seconds})
        pipe.zremrangebyscore(keys.workers, "-inf", now)
        await pipe.execute()


async def forget(redis: Redis, keys: Keys, worker_id: str) -> None:
    """A worker stopping cleanly removes its heartbeat at once."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.workers, worker_id)
        await pipe.execute()


async def live_workers(redis: Redis, keys: Keys) -> int:
    """How many workers have a heartbeat that has not expired."""
    count: int = await redis.zcount(keys.workers, time.time(), "+inf")
    return count
