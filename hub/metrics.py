"""Prometheus metrics of one app instance (its own registry, so apps in one
process, as in tests, never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hub_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "hub_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "hub_rate_limit_rejections", "Requests refused with 429", ["route_class"], registry=r
        )
        self.rate_limit_fail_open = Counter(
            "hub_rate_limit_fail_open", "Requests served unlimited because Redis was unreachable", registry=r
        )
        self.idempotent_replays = Counter(
            "hub_idempotent_replays", "Responses replayed for a repeated Idempotency-Key", registry=r
        )
        self.audit_events = Counter("hub_audit_events_written", "Audit events committed", registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
