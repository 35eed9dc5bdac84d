"""Salesforce API usage, as reported on every response in ``Sforce-Limit-Info``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

# "api-usage=18/5000", sometimes followed by "; per-app-api-usage=..." or "; api-bursts=x/y".
_API_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")


@dataclass(frozen=True)
class ApiUsage:
    """The org's rolling 24-hour API request usage.

    :param used: requests used.
    :param max: the org's daily allowance.
    """

    used: int
    max: int

    @property
    def remaining(self) -> int:
        """Requests left in the rolling window."""
        return max(0, self.max - self.used)


def api_usage(response: httpx.Response) -> ApiUsage | None:
    """The usage in ``response``'s ``Sforce-Limit-Info`` header, if present."""
    header = response.headers.get("Sforce-Limit-Info")
    match = _API_USAGE.search(header) if header else None
    return ApiUsage(int(match[1]), int(match[2])) if match else None
