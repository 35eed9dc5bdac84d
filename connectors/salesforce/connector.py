"""The Salesforce connector: OAuth web-server flow, Opportunity sync, upserts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.sdk import (
    DEFAULT_ERRORS,
    AuthError,
    ConfigError,
    Connector,
    ErrorAction,
    ErrorRule,
    FatalProviderError,
    Kind,
    OAuth2Auth,
    OAuth2AuthorizationCode,
    action,
)

from .limits import ApiUsage, api_usage
from .mapping import from_deal
from .models import (
    ItemError,
    ItemResult,
    UpsertDealsParams,
    UpsertDealsResult,
    UpsertRecordParams,
    UpsertResult,
)
from .streams import DeletedOpportunityStream, OpportunityStream

# A field or relationship path (Account.Name, Hub_Score__c); also keeps SOQL injection out.
FIELD_PATH = r"^[A-Za-z][A-Za-z0-9_]{0,79}(\.[A-Za-z][A-Za-z0-9_]{0,79}){0,4}$"
LOGIN_HOSTS = {"production": "login.salesforce.com", "sandbox": "test.salesforce.com"}
SCOPES = ("api", "refresh_token")
BASE_FIELDS = (
    "Id",
    "Name",
    "StageName",
    "Amount",
    "CloseDate",
    "Probability",
    "Type",
    "IsClosed",
    "IsWon",
    "AccountId",
    "Account.Name",
    "OwnerId",
    "Owner.Name",
    "LastModifiedDate",
    "SystemModstamp",
)

SALESFORCE_ERRORS = DEFAULT_ERRORS.extend(
    # The daily, org-wide quota: retrying soon only burns more of it; the host defers.
    ErrorRule(ErrorAction.RATE_LIMITED, status=403, code="REQUEST_LIMIT_EXCEEDED", retry_after=900.0),
    ErrorRule(ErrorAction.REFRESH_THEN_RETRY, status=401, code="INVALID_SESSION_ID"),
    # A configured field or object missing or hidden by field-level security: admin work.
    ErrorRule(ErrorAction.CONFIG_ERROR, status=400, code="INVALID_FIELD"),
    ErrorRule(ErrorAction.CONFIG_ERROR, status=400, code="INVALID_TYPE"),
)


class AmbiguousExternalId(FatalProviderError):
    """An upsert's external id matched several records (Salesforce answered 300)."""


class SalesforceConfig(BaseModel):
    """Settings of one Salesforce connection (the OAuth client belongs to the hub)."""

    model_config = ConfigDict(extra="forbid")

    environment: Literal["production", "sandbox"] = Field(
        "production", description="Log in at login.salesforce.com or test.salesforce.com"
    )
    my_domain: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.my\.salesforce\.com$",
        description="My Domain login host (e.g. acme.my.salesforce.com); overrides environment",
    )
    api_version: str = Field("62.0", pattern=r"^[0-9]{2,3}\.0$", description="REST API version")
    multi_currency: bool = Field(False, description="The org has multi-currency enabled (CurrencyIsoCode)")
    extra_fields: list[Annotated[str, Field(pattern=FIELD_PATH)]] = Field(
        default_factory=list, description="Additional Opportunity fields to read (e.g. custom __c fields)"
    )

    def login_host(self) -> str:
        """The host of the authorize and token endpoints."""
        return self.my_domain or LOGIN_HOSTS[self.environment]


class SalesforceConnector(Connector):
    """Salesforce CRM: Opportunities as deals, incremental on ``SystemModstamp``."""

    key = "salesforce"
    title = "Salesforce"
    kind = Kind.CRM
    version = "1"
    Config = SalesforceConfig
    auth: ClassVar[OAuth2AuthorizationCode] = OAuth2AuthorizationCode(
        authorize_url=f"https://{LOGIN_HOSTS['production']}/services/oauth2/authorize",
        token_url=f"https://{LOGIN_HOSTS['production']}/services/oauth2/token",
        scopes=SCOPES,
    )
    errors = SALESFORCE_ERRORS
    streams = (
        OpportunityStream(
            "opportunities",
            primary_key="Id",
            cursor_field="SystemModstamp",
            description="Opportunities created or changed since the cursor, as deals",
        ),
        DeletedOpportunityStream(
            "opportunities_deleted",
            primary_key="id",
            cursor_field="deletedDate",
            description="Opportunities deleted since the cursor (30 days at most), as deal tombstones",
        ),
    )

    config: SalesforceConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_usage: ApiUsage | None = None
        """The last ``Sforce-Limit-Info`` usage seen, if any."""

    @classmethod
    def auth_for(cls, config: BaseModel) -> OAuth2AuthorizationCode:
        """Authorize and token URLs on the configured login host (production, sandbox or My Domain)."""
        assert isinstance(config, SalesforceConfig)
        host = config.login_host()
        return OAuth2AuthorizationCode(
            authorize_url=f"https://{host}/services/oauth2/authorize",
            token_url=f"https://{host}/services/oauth2/token",
            scopes=SCOPES,
        )

    @property
    def api_base(self) -> str:
        """``{instance_url}/services/data/v{api_version}/`` from the current token."""
        token = self.http.auth.token if isinstance(self.http.auth, OAuth2Auth) else self.credentials
        instance_url = token.get("instance_url")
        if not instance_url:
            raise AuthError("the Salesforce token has no instance_url: the connection must be authorized")
        return f"{str(instance_url).rstrip('/')}/services/data/v{self.config.api_version}/"

    def now(self) -> datetime:
        """The current time (a method so tests can pin it)."""
        return datetime.now(UTC)

    def opportunity_fields(self) -> list[str]:
        """Fields selected by the opportunities stream."""
        fields = list(BASE_FIELDS)
        if self.config.multi_currency:
            fields.append("CurrencyIsoCode")
        fields.extend(field for field in self.config.extra_fields if field not in fields)
        return fields

    def observe_response(self, response: httpx.Response) -> None:
        """Track the org's API usage from ``Sforce-Limit-Info``."""
        usage = api_usage(response)
        if usage is not None:
            self.api_usage = usage

    @action(description="Create or update one record by external id (PATCH /sobjects/{object}/{field}/{id})")
    async def upsert_record(self, params: UpsertRecordParams) -> UpsertResult:
        """Upsert one record by external id."""
        excluded = {"id", params.external_id_field.lower()}
        body = {name: value for name, value in params.fields.items() if name.lower() not in excluded}
        path = f"sobjects/{params.sobject}/{params.external_id_field}/{quote(params.external_id, safe='')}"
        response = await self.request("PATCH", path, json=body, accept=(300, 404), idempotent=True)
        if response.status_code == 300:
            matches = response.json()
            raise AmbiguousExternalId(
                f"{params.external_id_field}={params.external_id!r} matches {len(matches)} {params.sobject} records",
                status=300,
                code="MULTIPLE_CHOICES",
            )
        if response.status_code == 404:
            details = self.errors.details(response)
            raise ConfigError(
                f"cannot upsert {params.sobject} by {params.external_id_field}: "
                f"{details.message or 'external id field not found'}",
                status=404,
                code=details.codes[0] if details.codes else "NOT_FOUND",
            )
        if response.status_code == 204 or not response.content:
            return UpsertResult(id=None, created=False)
        result = response.json()
        created = bool(result.get("created", response.status_code == 201))
        return UpsertResult(id=result.get("id"), created=created)

    @action(description="Create or update up to 200 deals as Opportunities (sObject Collections upsert)")
    async def upsert_deals(self, params: UpsertDealsParams) -> UpsertDealsResult:
        """Upsert deals in one call and report each one's outcome."""
        records = [
            {
                "attributes": {"type": "Opportunity"},
                **from_deal(deal, include_currency=self.config.multi_currency),
                params.external_id_field: deal.external_id,
            }
            for deal in params.deals
        ]
        body = await self.request_json(
            "PATCH",
            f"composite/sobjects/Opportunity/{params.external_id_field}",
            json={"allOrNone": params.all_or_none, "records": records},
            idempotent=True,
        )
        if not isinstance(body, list) or len(body) != len(params.deals):
            raise FatalProviderError(
                f"collection upsert returned {len(body) if isinstance(body, list) else 'no'} results "
                f"for {len(params.deals)} records"
            )
        results = [_item_result(deal.external_id, item) for deal, item in zip(params.deals, body, strict=True)]
        return UpsertDealsResult(
            results=results,
            created=sum(1 for r in results if r.success and r.created),
            updated=sum(1 for r in results if r.success and not r.created),
            failed=sum(1 for r in results if not r.success),
        )


def _item_result(external_id: str, item: dict[str, Any]) -> ItemResult:
    errors = [
        ItemError(
            code=error.get("statusCode") or error.get("errorCode"),
            message=error.get("message", ""),
            fields=list(error.get("fields") or []),
        )
        for error in item.get("errors") or []
    ]
    return ItemResult(
        external_id=external_id,
        id=item.get("id"),
        success=bool(item.get("success")),
        created=bool(item.get("created")),
        errors=errors,
    )
