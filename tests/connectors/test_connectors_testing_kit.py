"""The test kit itself: the conformance suite catches broken connectors; recordings load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.sdk import (
    ApiKeyAuth,
    AuthError,
    Connector,
    CursorPaginator,
    Kind,
    RestResource,
)
from connectors.testing import Recorded, SleepRecorder, connector_test_suite

BASE = "https://api.kit.test"
PAGES = [
    Recorded(f"{BASE}/items", json={"items": [{"id": 1, "at": "2024-01-01T00:00:00Z"}], "next": "p2"}),
    Recorded(
        f"{BASE}/items", json={"items": [{"id": 2, "at": "2024-01-02T00:00:00Z"}], "next": None}, params={"page": "p2"}
    ),
]


class KitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: SecretStr


def kit_connector(stream: RestResource) -> type[Connector]:
    return type(
        "KitConnector",
        (Connector,),
        {
            "key": "kit",
            "title": "Kit",
            "kind": Kind.CRM,
            "base_url": BASE,
            "Config": KitConfig,
            "auth": ApiKeyAuth(header="X-Key", from_field="api_key"),
            "streams": (stream,),
        },
    )


def suite(stream: RestResource):
    cls = connector_test_suite(kit_connector(stream), config={"api_key": "kit-secret-key"}, responses={"items": PAGES})
    return cls()


GOOD = RestResource(
    "items", "items", records_at="items", cursor_field="at", paginator=CursorPaginator(token_at="next", param="page")
)


async def test_a_good_connector_passes() -> None:
    instance = suite(GOOD)
    await instance.test_read("items")
    await instance.test_repeated_token_raises("items")
    await instance.test_honours_retry_after()


async def test_pagination_that_stops_early_is_caught() -> None:
    lazy = RestResource("items", "items", records_at="items", cursor_field="at")
    with pytest.raises(AssertionError, match="pagination stopped early"):
        await suite(lazy).test_read("items")


async def test_string_datetime_cursors_are_caught() -> None:
    class StringCursor(RestResource):
        def cursor_of(self, raw):
            return raw["at"]

    bad = StringCursor(
        "items",
        "items",
        records_at="items",
        cursor_field="at",
        paginator=CursorPaginator(token_at="next", param="page"),
    )
    with pytest.raises(AssertionError, match="cursor is a datetime string"):
        await suite(bad).test_read("items")


def test_leaked_secrets_are_caught() -> None:
    instance = suite(GOOD)
    instance._assert_no_secrets(AuthError("GET https://api.kit.test/items returned 401"))
    with pytest.raises(AssertionError, match="leaks a credential"):
        instance._assert_no_secrets(AuthError("key kit-secret-key rejected"))


def test_recordings_load_from_a_directory(tmp_path: Path, sample) -> None:
    (tmp_path / "bodies").mkdir()
    (tmp_path / "bodies" / "page.json").write_text(json.dumps(sample("salesforce_query_page2_last.json")))
    (tmp_path / "deals.json").write_text(
        json.dumps([{"url": f"{BASE}/query", "json_file": "bodies/page.json", "headers": {"X-A": "1"}}])
    )
    from connectors._testkit.recorded import load_responses

    (recorded,) = load_responses(tmp_path)["deals"]
    assert recorded.json["done"] is True and recorded.headers == {"X-A": "1"}
    assert recorded.response().json()["records"][0]["Text_Label"] == "Last Page"


async def test_sleep_recorder() -> None:
    sleeps = SleepRecorder()
    await sleeps(1.5)
    await sleeps(2)
    assert sleeps.calls == [1.5, 2] and sleeps.total == 3.5
