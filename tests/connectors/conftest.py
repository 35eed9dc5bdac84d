"""Fixtures of the connector tests: provider samples, a real Redis, the test-kit fixtures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

# The test-kit fixtures; the hub_connectors pytest11 plugin provides them too once the
# project is installed, in which case these definitions simply take precedence.
from connectors.testing import connector_registry, connector_sleeps  # noqa: F401

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "provider-samples"


def load_sample(name: str) -> Any:
    """A real provider response body from ``shared/provider-samples``."""
    return json.loads((SAMPLES / name).read_text())


@pytest.fixture
def sample() -> Callable[[str], Any]:
    """``sample("salesforce_query_page1.json")`` -> the decoded body."""
    return load_sample


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    """A client of the real Redis at 127.0.0.1:6379; the test is skipped if it does not answer."""
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        pytest.skip("Redis at 127.0.0.1:6379 does not answer")
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def ssl_context() -> Any:
    """One SSL context for all test clients: building one per client costs ~0.2 s."""
    return httpx.create_ssl_context()


@pytest.fixture
async def http_client(ssl_context: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A shared-style ``httpx.AsyncClient`` (respx intercepts its traffic)."""
    async with httpx.AsyncClient(verify=ssl_context) as client:
        yield client
