"""When each password of an application was last used to sign in: Microsoft Graph beta
`reports/appCredentialSignInActivities` (per credential `keyId`, `signInActivity.lastSignInDateTime`).

The evidence retire needs before it removes a password the product did not create (`shared.rotation.foreign`).
Optional: the report needs `AuditLog.Read.All` (or `Directory.Read.All`); without it (403) there is no evidence and
such passwords are left to expire and reported. A beta API ("subject to change"), so it sits in this one module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.headers_collection import HeadersCollection
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from shared.azure import graph_client
from shared.graph import _NO_SDK_RETRY, GraphError, _parse_time
from shared.settings import Settings

REPORT_PATH = "/beta/reports/appCredentialSignInActivities"
MAX_PAGES = 50


@dataclass(frozen=True)
class SignIns:
    """The report for one application: keyId (lower case) -> last sign-in; `readable` False when refused (403)."""

    readable: bool
    last: dict[str, datetime]
    refusal: str = ""

    def last_signin(self, key_id: str) -> datetime | None:
        return self.last.get(key_id.lower())


def _when(value: Any) -> datetime | None:
    """A timestamp that does not parse still says the key was used: it counts as a sign-in now (conservative)."""
    if not value:
        return None
    try:
        return _parse_time(str(value))
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)


async def app_signins(settings: Settings, credential: AsyncTokenCredential, app_id: str) -> SignIns:
    """Every credential sign-in of `app_id` the report knows. 403 -> not readable; other errors raise GraphError
    (a 429/5xx is transient: retire waits it out)."""
    client = graph_client(settings, credential)
    adapter = client.request_adapter
    query = quote(f"appId eq '{app_id}'", safe="")
    url: str | None = f"{settings.graph_endpoint.rstrip('/')}{REPORT_PATH}?$filter={query}"
    last: dict[str, datetime] = {}
    try:
        for _ in range(MAX_PAGES):
            if url is None:
                break
            info = RequestInformation(Method.GET)
            info.url = url
            info.headers = HeadersCollection()
            info.headers.try_add("Accept", "application/json")
            info.add_request_options([_NO_SDK_RETRY])  # retire's own backoff waits out 429/5xx
            try:
                raw: Any = await adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
            except APIError as exc:
                status = exc.response_status_code
                code = exc.error.code if isinstance(exc, ODataError) and exc.error is not None else None
                if status == 403:
                    return SignIns(False, {}, f"HTTP 403 {code or ''}".strip())
                error = GraphError(f"appCredentialSignInActivities: HTTP {status} {code or ''}".strip(), status, code)
                raise error from None
            except (TimeoutError, httpx.TransportError) as exc:
                raise GraphError(f"appCredentialSignInActivities: connection failed ({type(exc).__name__})") from None
            page = json.loads(raw or b"{}")
            for entry in page.get("value", []):
                key = str(entry.get("keyId", "")).lower()
                when = _when((entry.get("signInActivity") or {}).get("lastSignInDateTime"))
                if key and when is not None and (key not in last or when > last[key]):
                    last[key] = when
            link = page.get("@odata.nextLink")
            url = link if isinstance(link, str) and link else None
    finally:
        http = getattr(adapter, "_http_client", None)
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()
    return SignIns(True, last)
