"""Discovery benchmark: the product's scan against a naive script, on one generated estate.

    python -m bench.scan --json [--clusters 2000 --subscriptions 20 --latency-ms 25] [--no-baseline]

Starts Azurite and the emulator (`--clusters N --subscriptions S --latency-ms L`: every ARM, Graph and Key Vault
request is answered L ms late), then, in this one process:

* **product** — `shared.discovery.scan(settings, dry_run=True)`: one paged Resource Graph query, batched Graph
  lookups, one Key Vault listing, bounded concurrency.
* **baseline** — what a user scripting the seeds' commands would write (`az aks list` per subscription, then
  `az ad app credential list --id <appId>` per cluster): per subscription list the clusters with
  `ContainerServiceClient`, then per cluster one Graph call `applications(appId='...')` for its passwords,
  sequentially.

Requests are the emulator's own counts (`/_emulator/requests` deltas; a `$batch` counts as one HTTP request).
Peak RSS is sampled from /proc/self/statm every 5 ms while each phase runs (the process's RSS, so the baseline
phase includes what the product phase left allocated). Prints JSON:
`{clusters, subscriptions, latency_ms, product{seconds,requests,peak_rss_mb}, baseline{...}|null, speedup,
request_ratio}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from azure.identity.aio import ClientSecretCredential
from azure.mgmt.containerservice.aio import ContainerServiceClient

from emulator.sandbox import EmulatorControl, LocalAzure
from shared import discovery
from shared.azure import container_service, graph_client, product_credential
from shared.settings import Settings

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRss(AbstractContextManager["PeakRss"]):
    """Peak resident set size of this process while the block runs (sampled by a thread)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def http_requests(counts: dict[str, int]) -> int:
    """HTTP requests that reached the emulator: every route count, minus the `$batch` items (counted twice:
    as `graph.<operation>` and as `graph.batch_item`, but carried by their one `graph.batch` request)."""
    total = sum(v for k, v in counts.items() if not k.startswith("mutations") and k != "graph.batch_item")
    return total - counts.get("graph.batch_item", 0)


def measure(control: EmulatorControl, work: Callable[[], Awaitable[Any]]) -> tuple[dict[str, Any], Any]:
    control.clear_requests()
    with PeakRss() as rss:
        started = time.perf_counter()
        result: Any = asyncio.run(work())  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    counts = control.requests()
    return {
        "seconds": round(seconds, 3),
        "requests": http_requests(counts),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "by_operation": {k: v for k, v in sorted(counts.items()) if not k.startswith("mutations")},
    }, result


# -- the baseline: a user's script -----------------------------------------------------------------------------
async def baseline(settings: Settings) -> dict[str, Any]:
    """Per subscription list clusters, then one Graph call per cluster for its app's passwords; sequential."""
    assert settings.client_secret is not None
    credential = ClientSecretCredential(
        settings.tenant_id,
        settings.client_id,
        settings.client_secret.get_secret_value(),
        authority=settings.authority_host,
        disable_instance_discovery=True,
        connection_verify=settings.ca_bundle,
    )
    now = datetime.now(UTC)
    due = 0
    clusters = 0
    try:
        subscriptions = await _subscriptions(settings, credential)
        graph = graph_client(settings, credential)
        for subscription in subscriptions:
            client: ContainerServiceClient = container_service(settings, credential, subscription)
            async with client:
                async for cluster in client.managed_clusters.list():
                    clusters += 1
                    profile = cluster.service_principal_profile
                    app_id = profile.client_id if profile else None
                    if not app_id or app_id == "msi":
                        continue
                    app = await graph.applications_with_app_id(app_id).get()
                    ends = [
                        e if e.tzinfo else e.replace(tzinfo=UTC)
                        for e in (p.end_date_time for p in (app.password_credentials if app else None) or [])
                        if e is not None
                    ]
                    if ends and (min(ends) - now).days <= settings.threshold_days:
                        due += 1
        http = getattr(graph.request_adapter, "_http_client", None)
        if http is not None:
            await http.aclose()
    finally:
        await credential.close()
    return {"clusters": clusters, "due": due}


async def _subscriptions(settings: Settings, credential: ClientSecretCredential) -> list[str]:
    """`az account list`: GET /subscriptions through an ARM pipeline."""
    from azure.core.rest import HttpRequest

    client = container_service(settings, credential, "00000000-0000-0000-0000-000000000000")
    async with client:
        response = await client.send_request(
            HttpRequest("GET", f"{settings.arm_endpoint}/subscriptions?api-version=2022-12-01")
        )
        response.raise_for_status()
        return [str(s["subscriptionId"]) for s in response.json().get("value", [])]


async def product(settings: Settings) -> discovery.ScanReport:
    credential = product_credential(settings)
    try:
        return await discovery.scan(settings, dry_run=True, credential=credential)
    finally:
        await credential.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--subscriptions", type=int, default=20)
    parser.add_argument("--latency-ms", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true", help="skip the (slow) naive baseline")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)

    serve = ("--clusters", str(args.clusters), "--subscriptions", str(args.subscriptions))
    with LocalAzure(*serve, "--seed", str(args.seed), "--latency-ms", str(args.latency_ms)) as azure:
        settings = Settings.from_env(azure.settings_env(LOG_LEVEL="WARNING"))
        product_numbers, report = measure(azure.control, lambda: product(settings))
        product_numbers["due"] = len(report.due())
        product_numbers["actions"] = report.by_action()
        product_numbers["stage_seconds"] = {k: round(v, 3) for k, v in report.stage_seconds.items()}
        product_numbers["used_fallback"] = report.used_fallback
        result: dict[str, Any] = {
            "clusters": report.clusters,
            "subscriptions": report.subscriptions,
            "latency_ms": args.latency_ms,
            "product": product_numbers,
            "baseline": None,
            "speedup": None,
            "request_ratio": None,
        }
        if args.no_baseline:
            result["baseline_skipped"] = "--no-baseline"
        else:
            baseline_numbers, outcome = measure(azure.control, lambda: baseline(settings))
            baseline_numbers.update(outcome)
            result["baseline"] = baseline_numbers
            result["speedup"] = round(baseline_numbers["seconds"] / max(product_numbers["seconds"], 1e-9), 1)
            result["request_ratio"] = round(baseline_numbers["requests"] / max(product_numbers["requests"], 1), 1)
    text = json.dumps(result, indent=None if args.json else 2, sort_keys=False)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
