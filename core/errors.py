"""The domain's exception tree. `hub` maps it to problem responses in one place.

    HubError                      code                      HTTP
    ├── ValidationFailed          VALIDATION_FAILED         422
    ├── Unauthorized              UNAUTHORIZED              401
    ├── Forbidden                 FORBIDDEN                 403
    ├── NotFound                  NOT_FOUND                 404
    ├── OAuthStateInvalid         OAUTH_STATE_INVALID       400
    ├── OAuthAuthorizationDenied  OAUTH_AUTHORIZATION_DENIED 400
    ├── Conflict                  CONFLICT                  409
    │   ├── IdempotencyKeyReused  IDEMPOTENCY_KEY_REUSED    409
    │   ├── IdempotencyInProgress IDEMPOTENCY_IN_PROGRESS   409
    │   └── CredentialsUnreadable CREDENTIALS_UNREADABLE    409
    ├── PreconditionFailed        PRECONDITION_FAILED       412
    ├── RateLimited               RATE_LIMITED              429
    ├── UpstreamError             UPSTREAM_ERROR            502
    │   └── UpstreamAuthFailed    UPSTREAM_AUTH_FAILED      502
    └── UpstreamUnavailable       UPSTREAM_UNAVAILABLE      503

Messages are written for the caller: never SQL, stack traces or secrets.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    code = "INTERNAL"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str | None = None, *, details: list[dict[str, Any]] | None = None) -> None:
        self.detail = detail or self.title
        self.details = details or []
        super().__init__(self.detail)


class ValidationFailed(HubError):
    code, status, title = "VALIDATION_FAILED", 422, "Validation failed"


class Unauthorized(HubError):
    code, status, title = "UNAUTHORIZED", 401, "Authentication required"


class Forbidden(HubError):
    code, status, title = "FORBIDDEN", 403, "Forbidden"


class NotFound(HubError):
    code, status, title = "NOT_FOUND", 404, "Not found"


class Conflict(HubError):
    code, status, title = "CONFLICT", 409, "Conflict"


class IdempotencyKeyReused(Conflict):
    code, title = "IDEMPOTENCY_KEY_REUSED", "Idempotency key reused with another request"


class IdempotencyInProgress(Conflict):
    code, title = "IDEMPOTENCY_IN_PROGRESS", "A request with this idempotency key is still in progress"


class PreconditionFailed(HubError):
    code, status, title = "PRECONDITION_FAILED", 412, "Precondition failed"


class RateLimited(HubError):
    code, status, title = "RATE_LIMITED", 429, "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UpstreamUnavailable(HubError):
    code, status, title = "UPSTREAM_UNAVAILABLE", 503, "Upstream unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class OAuthStateInvalid(HubError):
    """An OAuth callback whose `state` is forged, expired or already used."""

    code, status, title = "OAUTH_STATE_INVALID", 400, "Invalid OAuth state"


class OAuthAuthorizationDenied(HubError):
    """The provider's callback reports that the authorization was declined or failed."""

    code, status, title = "OAUTH_AUTHORIZATION_DENIED", 400, "Authorization denied"


class CredentialsUnreadable(Conflict):
    """Stored credentials fail authentication (tampered, moved, or their key is gone)."""

    code, title = "CREDENTIALS_UNREADABLE", "Stored credentials cannot be read"


class UpstreamError(HubError):
    """The provider refused or failed a call for a reason retrying will not fix."""

    code, status, title = "UPSTREAM_ERROR", 502, "Upstream error"


class UpstreamAuthFailed(UpstreamError):
    """The provider rejected the connection's credentials: the admin must reconnect."""

    code, title = "UPSTREAM_AUTH_FAILED", "Upstream rejected the credentials"
