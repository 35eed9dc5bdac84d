"""Recorded provider responses and their replay through respx."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import respx

Fault = Callable[[httpx.Request], httpx.Response]
"""Produces a response for (or raises on) one request, instead of the recorded one."""


@dataclass(frozen=True)
class Recorded:
    """One recorded exchange: a request pattern and the response to replay.

    :param url: the request URL without query string (scheme, host and path must match).
    :param json: the response body, decoded.
    :param status: the response status.
    :param method: the request method.
    :param headers: response headers.
    :param text: a raw response body, instead of ``json``.
    :param params: query parameters the request must contain (others are ignored).
    """

    url: str
    json: Any = None
    status: int = 200
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None
    params: Mapping[str, str] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path | None = None) -> Recorded:
        """Build from a mapping; ``json_file`` (relative to ``base``) loads the body from a file."""
        values = dict(data)
        json_file = values.pop("json_file", None)
        if json_file is not None:
            path = Path(json_file) if base is None else base / json_file
            values["json"] = json.loads(path.read_text())
        return cls(**values)

    def response(self) -> httpx.Response:
        """The recorded response."""
        if self.text is not None:
            return httpx.Response(self.status, text=self.text, headers=dict(self.headers))
        if self.json is None:
            return httpx.Response(self.status, headers=dict(self.headers))
        return httpx.Response(self.status, json=self.json, headers=dict(self.headers))

    def body_text(self) -> str:
        """The response body as text."""
        return self.text if self.text is not None else json.dumps(self.json)


Responses = Mapping[str, Sequence[Recorded | Mapping[str, Any]]]


def load_responses(responses: Responses | str | os.PathLike[str] | None) -> dict[str, list[Recorded]]:
    """Recorded exchanges per stream name.

    :param responses: a mapping of stream name to exchanges (``Recorded`` or dicts), or a
        directory holding one ``<stream>.json`` file per stream, each a list of dicts.
    """
    if responses is None:
        return {}
    if isinstance(responses, (str, os.PathLike)):
        directory = Path(responses)
        return {
            path.stem: [Recorded.from_dict(item, base=directory) for item in json.loads(path.read_text())]
            for path in sorted(directory.glob("*.json"))
        }
    return {
        stream: [item if isinstance(item, Recorded) else Recorded.from_dict(item) for item in items]
        for stream, items in responses.items()
    }


class Replay:
    """Routes replaying ``exchanges`` on a respx router, with faults injected first.

    ``faults[i]`` is a list of faults served, in order, to the requests matching exchange
    ``i`` before its recorded response.
    """

    def __init__(self, router: respx.MockRouter, exchanges: Sequence[Recorded]) -> None:
        self.exchanges = list(exchanges)
        self.faults: list[list[Fault]] = [[] for _ in exchanges]
        self.bodies: list[Recorded] = list(exchanges)
        routes: dict[int, respx.Route] = {}
        # respx takes the first matching route: register the ones constrained by more
        # query parameters first, so a bare first page does not shadow later pages.
        by_specificity = sorted(range(len(self.exchanges)), key=lambda i: -len(self.exchanges[i].params or {}))
        for index in by_specificity:
            exchange = self.exchanges[index]
            url = httpx.URL(exchange.url)
            pattern: dict[str, Any] = {
                "method": exchange.method.upper(),
                "scheme": url.scheme,
                "host": url.host,
                "path": url.path,
            }
            if exchange.params:
                pattern["params"] = dict(exchange.params)
            route = router.route(**pattern)
            route.mock(side_effect=self._responder(index))
            routes[index] = route
        self.routes: list[respx.Route] = [routes[index] for index in range(len(self.exchanges))]

    def _responder(self, index: int) -> Fault:
        def respond(request: httpx.Request) -> httpx.Response:
            if self.faults[index]:
                return self.faults[index].pop(0)(request)
            return self.bodies[index].response()

        return respond

    def inject(self, index: int, *faults: Fault) -> None:
        """Serve ``faults`` to exchange ``index``'s next requests, then its recording."""
        self.faults[index].extend(faults)

    @property
    def requests(self) -> list[httpx.Request]:
        """Every request the routes received, in route order."""
        return [call.request for route in self.routes for call in route.calls]
