"""Who is calling: the principal every request and job runs as."""

from __future__ import annotations

from dataclasses import dataclass

from core.roles import Role


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    actor_kind: str  # "api_key", "user", "integration", "system"
    actor_id: str
    roles: frozenset[Role]

    @property
    def actor_key(self) -> str:
        """Stable identity of the actor, for scoping idempotency keys."""
        return f"{self.actor_kind}:{self.actor_id}"

    @property
    def sorted_roles(self) -> list[str]:
        return sorted(r.value for r in self.roles)
