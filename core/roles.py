"""Roles and the policy table: which role may do what. Read it top to bottom."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ANALYST = "ANALYST"
    PARTNER = "PARTNER"
    IC_MEMBER = "IC_MEMBER"
    ADMIN = "ADMIN"
    AUDITOR = "AUDITOR"
    INTEGRATION_SERVICE = "INTEGRATION_SERVICE"


class Permission(StrEnum):
    DEALS_READ = "deals:read"
    DEALS_WRITE = "deals:write"
    DEALS_DELETE = "deals:delete"
    DEALS_UPSERT = "deals:upsert"
    AUDIT_READ = "audit:read"
    API_KEYS_MANAGE = "api_keys:manage"
    CONNECTIONS_MANAGE = "connections:manage"
    CONNECTORS_READ = "connectors:read"
    WEBHOOKS_MANAGE = "webhooks:manage"
    RUNS_READ = "runs:read"
    RUNS_MANAGE = "runs:manage"
    IDENTITY_READ = "identity:read"


_A, _P, _IC, _ADM, _AUD, _INT = (
    Role.ANALYST,
    Role.PARTNER,
    Role.IC_MEMBER,
    Role.ADMIN,
    Role.AUDITOR,
    Role.INTEGRATION_SERVICE,
)

POLICY: dict[Permission, frozenset[Role]] = {
    #                                  who may
    Permission.DEALS_READ:         frozenset({_A, _P, _IC, _ADM, _INT}),
    Permission.DEALS_WRITE:        frozenset({_A, _P, _ADM, _INT}),
    Permission.DEALS_DELETE:       frozenset({_P, _ADM}),
    Permission.DEALS_UPSERT:       frozenset({_ADM, _INT}),
    Permission.AUDIT_READ:         frozenset({_AUD, _ADM}),
    Permission.API_KEYS_MANAGE:    frozenset({_ADM}),
    Permission.CONNECTIONS_MANAGE: frozenset({_ADM}),
    Permission.CONNECTORS_READ:    frozenset({_A, _P, _IC, _ADM, _AUD, _INT}),
    Permission.WEBHOOKS_MANAGE:    frozenset({_ADM}),
    Permission.RUNS_READ:          frozenset({_ADM, _INT}),
    Permission.RUNS_MANAGE:        frozenset({_ADM, _INT}),
    Permission.IDENTITY_READ:      frozenset(Role),
}  # fmt: skip


def allows(roles: frozenset[Role] | set[Role], permission: Permission) -> bool:
    return not POLICY[permission].isdisjoint(roles)


def parse_roles(values: object) -> frozenset[Role]:
    """Known roles from a claim or stored list; unknown names are ignored, not trusted."""
    if not isinstance(values, (list, tuple, set, frozenset)):
        return frozenset()
    return frozenset(Role(v) for v in values if isinstance(v, str) and v in Role.__members__)
