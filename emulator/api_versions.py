"""The api-versions each resource provider registers (mode `strict_api_versions`), and ARM's refusal of others.

ARM answers an unregistered version of `managedClusters` with 400 `NoRegisteredProviderFound` listing the
supported versions (see docs/emulator.md, "Field modes"); other providers answer `InvalidApiVersionParameter`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from emulator.wire import error

# Microsoft.ContainerService: the stable and preview versions AKS lists in its refusal (2017-08-31 .. 2023-11-01),
# then the monthly `-01` and `-02-preview` versions since; operation-status URLs carry 2016-03-30 / 2017-08-31.
_AKS_LISTED = (
    "2016-03-30, 2017-08-31, 2018-03-31, 2019-02-01, 2019-04-01, 2019-06-01, 2019-08-01, 2019-10-01, 2019-11-01, "
    "2020-01-01, 2020-02-01, 2020-03-01, 2020-04-01, 2020-06-01, 2020-07-01, 2020-09-01, 2020-11-01, 2020-12-01, "
    "2021-02-01, 2021-03-01, 2021-05-01, 2021-07-01, 2021-08-01, 2021-09-01, 2021-10-01, 2022-01-01, 2022-02-01, "
    "2022-03-01, 2022-04-01, 2022-06-01, 2022-07-01, 2022-08-01, 2022-09-01, 2022-11-01, 2023-01-01, 2023-02-01, "
    "2023-03-01, 2023-04-01, 2023-05-01, 2023-06-01, 2023-07-01, 2023-08-01, 2023-09-01, 2023-10-01, 2023-11-01"
)
AKS: frozenset[str] = frozenset(
    [v.strip() for v in _AKS_LISTED.split(",")]
    + [f"{year}-{month:02d}-01" for year in range(2024, 2027) for month in range(1, 13)]
    + [f"{year}-{month:02d}-02-preview" for year in range(2022, 2027) for month in range(1, 13)]
)
RESOURCES: frozenset[str] = frozenset(
    {"2016-06-01", "2018-06-01", "2019-06-01", "2019-11-01", "2020-01-01", "2021-01-01", "2022-09-01", "2022-12-01"}
)
# Microsoft.ResourceGraph: the versions of Learn's change log ("Microsoft.ResourceGraph" template change log).
RESOURCE_GRAPH: frozenset[str] = frozenset(
    {"2018-09-01-preview", "2019-04-01", "2021-03-01", "2022-10-01", "2024-04-01"}
)
AUTHORIZATION: frozenset[str] = frozenset({"2015-07-01", "2018-01-01-preview", "2018-07-01", "2022-04-01"})
MANAGED_IDENTITY: frozenset[str] = frozenset({"2018-11-30", "2023-01-31", "2024-11-30"})
METADATA: frozenset[str] = frozenset({"2015-01-01", "2018-01-01", "2019-05-01", "2020-06-01", "2022-09-01"})


def refusal(path: str, version: str) -> web.Response | None:
    """ARM's answer to `version` on `path`, or None when the provider registers it."""
    lowered = path.lower()
    if "/providers/microsoft.containerservice/" in lowered:
        if version in AKS:
            return None
        kind = "operations" if "/locations/" in lowered else "managedClusters"
        message = (
            f"No registered resource provider found for location 'westeurope' and API version '{version}' for type "
            f"'{kind}'. The supported api-versions are '{', '.join(sorted(AKS))}'."
        )
        return error("arm", 400, "NoRegisteredProviderFound", message)
    known = AUTHORIZATION if "/providers/microsoft.authorization/" in lowered else RESOURCES
    if "/providers/microsoft.managedidentity/" in lowered:
        known = MANAGED_IDENTITY
    if "/providers/microsoft.resourcegraph/" in lowered:
        known = RESOURCE_GRAPH
    if lowered.startswith("/metadata/"):
        known = METADATA
    if version in known:
        return None
    message = f"The api-version '{version}' is invalid. The supported versions are '{','.join(sorted(known))}'."
    return error("arm", 400, "InvalidApiVersionParameter", message)


def query_refusal(path: str, query: Mapping[str, str]) -> web.Response | None:
    """As `refusal`, for a request's query string (a missing api-version is refused too)."""
    if "api-version" not in query:
        message = "The api-version query parameter (?api-version=) is required for all requests."
        return error("arm", 400, "MissingApiVersionParameter", message)
    return refusal(path, query["api-version"])
