"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and costs a task per request).

`EdgeMiddleware` is the outermost layer of the app: it assigns the request id,
refuses bodies that are too large or not JSON, turns any unhandled exception
into a problem response without internals, and stamps `X-Request-ID` on every
response, including those errors.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.problems import MEDIA_TYPE, problem_body

log = logging.getLogger("hub.request")
# Headers a dependency wants on the response whatever it turns out to be (a route's own
# Response, an error): rate-limit state, deprecation notices. Set with `add_edge_headers`.
EDGE_HEADERS = "edge_headers"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}
_JSON_TYPES = ("application/json", "application/merge-patch+json")


def add_edge_headers(request_state: Any, headers: dict[str, str]) -> None:
    """Have `EdgeMiddleware` put `headers` on this request's response, error or not."""
    current = getattr(request_state, EDGE_HEADERS, None) or {}
    setattr(request_state, EDGE_HEADERS, {**current, **headers})


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The body exceeds {limit} bytes")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _caller_request_id(scope: Scope) -> str | None:
    """The caller's id: the first valid one of X-Request-ID and X-Correlation-ID."""
    for name in (b"x-request-id", b"x-correlation-id"):
        value = _header(scope, name)
        candidate = value.decode("latin-1") if value else ""
        if _VALID_REQUEST_ID.fullmatch(candidate):
            return candidate
    return None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    return media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, on_request: Any = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Called with (scope, status, duration_seconds) after each request: logs and metrics.
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _caller_request_id(scope) or str(uuid.uuid4())
        request_state = scope.setdefault("state", {})
        request_state["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())
        status_holder = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = message.get("headers", [])
                present = {name.lower() for name, _ in headers}
                extra = [rid_header]
                for name, value in (request_state.get(EDGE_HEADERS) or {}).items():
                    encoded = name.lower().encode("latin-1")
                    if encoded not in present:
                        extra.append((encoded, value.encode("latin-1")))
                message["headers"] = [*headers, *extra]
            await send(message)

        async def reply(status: int, code: str, title: str, detail: str) -> None:
            body = problem_body(status, code, title, detail, request_id=request_id)
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

        try:
            if scope["path"].startswith("/api/"):
                # The size limit holds whatever the method: a DELETE with an Idempotency-Key
                # has its body read too. Only the methods that take a JSON body must send JSON.
                length = _header(scope, b"content-length")
                if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                    await reply(413, "PAYLOAD_TOO_LARGE", "Payload too large", f"The body exceeds {self.max_body_bytes} bytes")
                    return
                content_type = _header(scope, b"content-type")
                has_body = (length is not None and length != b"0") or _header(scope, b"transfer-encoding") is not None
                json_expected = scope["method"].encode() in _BODY_METHODS
                if json_expected and has_body and (content_type is None or not _is_json(content_type)):
                    await reply(415, "UNSUPPORTED_MEDIA_TYPE", "Unsupported media type", "Send the body as application/json")
                    return
                receive = self._limited(receive)
            await self.app(scope, receive, send_with_id)
        except BodyTooLarge:
            if not status_holder["started"]:
                await reply(413, "PAYLOAD_TOO_LARGE", "Payload too large", f"The body exceeds {self.max_body_bytes} bytes")
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            if not status_holder["started"]:
                await reply(500, "INTERNAL", "Internal error", "The hub failed to handle this request; quote the request id")
        finally:
            if self.on_request is not None:
                self.on_request(scope, status_holder["status"], time.perf_counter() - started)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted
