"""Applying the per-tenant limits at the edge: which bucket a route uses, the
tenant's overrides, and the `X-RateLimit-*` headers."""

from __future__ import annotations

from fastapi import Request

from core.errors import RateLimited
from core.identity import Principal
from core.roles import Permission
from hub.middleware import add_edge_headers
from hub.state import HubState

# Routes CRM pushes and sync services call get the larger integration budget.
INTEGRATION_PERMISSIONS = frozenset({Permission.DEALS_UPSERT})


def route_class(permission: Permission | None) -> str:
    return "integration" if permission in INTEGRATION_PERMISSIONS else "user"


async def enforce(request: Request, state: HubState, principal: Principal, permission: Permission | None) -> None:
    """Charge the tenant's bucket for `permission`'s class of route (None: no route, the
    user class); raises RateLimited when it is empty."""
    limits = await state.tenant_limits(principal.tenant_id) or {}
    settings = state.settings
    klass = route_class(permission)
    per_minute = int(
        limits.get(f"{klass}_per_minute")
        or (settings.rate_limit_integration_per_minute if klass == "integration" else settings.rate_limit_user_per_minute)
    )
    burst = int(per_minute * float(limits.get("burst_multiplier") or settings.rate_limit_burst_multiplier))
    decision = await state.limiter.hit(f"{principal.tenant_id}:{klass}", per_minute=per_minute, burst=burst)
    headers = {"X-RateLimit-Limit": str(decision.limit)}
    if decision.remaining is not None:
        headers["X-RateLimit-Remaining"] = str(decision.remaining)
        headers["X-RateLimit-Reset"] = str(decision.reset_seconds)
    add_edge_headers(request.state, headers)
    if not decision.allowed:
        state.metrics.rate_limited.labels(klass).inc()
        raise RateLimited(
            f"Rate limit of {per_minute} requests a minute exceeded; retry in {decision.retry_after_seconds} s",
            retry_after=decision.retry_after_seconds,
        )
