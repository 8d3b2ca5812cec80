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

Requests are the emulator's own counts (`/_emulator/requests` deltas; a `$batch` counts as one HTTP request), also
per service; `throttled` / `throttled_again` are the quota refusals the emulator answered (429) and those of a
request whose previous attempt was refused too. `peak_rss_mb` of the product is the whole process's VmHWM (it runs
first); `emulator_cpu_seconds` is the emulator process's CPU during the phase. `quota_floor` is the fastest scan
the published quotas allow for this estate (see `quota_floor`), `floor_ratio` = product seconds / floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import UTC
from types import TracebackType
from typing import Any

from azure.identity.aio import ClientSecretCredential
from azure.mgmt.containerservice.aio import ContainerServiceClient

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl, EmulatorProcess, LocalAzure
from shared import clock, discovery
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
    return sum(by_service(counts).values())


def by_service(counts: dict[str, int]) -> dict[str, int]:
    """HTTP requests per surface (entra, arm, resourcegraph, graph, keyvault); `$batch` items not double-counted."""
    out: Counter[str] = Counter()
    for key, value in counts.items():
        surface, _, operation = key.partition(".")
        if surface in ("mutations", "throttled", "throttled_again") or not operation:
            continue
        out[surface] += -value if operation == "batch_item" else value
    return dict(sorted(out.items()))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb() -> float:
    """The whole process's peak resident set (VmHWM): imports, SDK clients and the scan, since it started."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(
    control: EmulatorControl, work: Callable[[], Awaitable[Any]], emulator_pid: int | None = None
) -> tuple[dict[str, Any], Any]:
    control.clear_requests()
    cpu_before = _cpu_seconds(emulator_pid) if emulator_pid else 0.0
    own_before = time.process_time()
    with PeakRss() as rss:
        started = time.perf_counter()
        result: Any = asyncio.run(work())  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    counts = control.requests()
    numbers: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(time.process_time() - own_before, 2),
        "requests": http_requests(counts),
        "requests_by_service": by_service(counts),
        "throttled": {k.partition(".")[2]: v for k, v in sorted(counts.items()) if k.startswith("throttled.")},
        "throttled_again": sum(v for k, v in counts.items() if k.startswith("throttled_again.")),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "by_operation": {k: v for k, v in sorted(counts.items()) if not k.startswith(("mutations", "throttled"))},
    }
    if emulator_pid:
        numbers["emulator_cpu_seconds"] = round(_cpu_seconds(emulator_pid) - cpu_before, 2)
    return numbers, result


def quota_floor(doc: dict[str, Any]) -> dict[str, float]:
    """The fastest any scan of this estate may be under the published quotas (docs/emulator.md): Resource Graph
    pages of 1,000 rows at 15 queries per 5 s per identity; Graph look-ups of 15 appIds per filter, one for
    applications and one for service principals, at 1 resource unit each and 8,000 units per 10 s per app and
    tenant. The two run in parallel, so the floor is the slower of them."""
    app_ids = {c["client_id"].lower() for c in doc["clusters"] if c.get("client_id", "msi") != "msi"}
    servers = [(c.get("aad_profile") or {}).get("serverAppID") for c in doc["clusters"]]
    app_ids |= {server.lower() for server in servers if server}
    pages = math.ceil(len(doc["clusters"]) / 1000)
    lookups = 2 * math.ceil(len(app_ids) / 15)
    resource_graph = pages / 15 * 5
    graph = lookups / 8000 * 10
    return {
        "resource_graph_pages": pages,
        "resource_graph_seconds": round(resource_graph, 2),
        "graph_lookups": lookups,
        "graph_seconds": round(graph, 2),
        "seconds": round(max(resource_graph, graph), 2),
    }


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
    now = clock.now()
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
        return await discovery.scan(settings, dry_run=True, credential=credential, keep="due")
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
    with _local_azure(*serve, "--seed", str(args.seed), "--latency-ms", str(args.latency_ms)) as azure:
        settings = Settings.from_env(azure.settings_env(LOG_LEVEL="WARNING"))
        pid = int(azure.emulator.ready["pid"])
        product_numbers, report = measure(azure.control, lambda: product(settings), pid)
        product_numbers["peak_rss_mb"] = _peak_rss_mb()  # the whole process so far: the product ran first
        product_numbers["due"] = len(report.due())
        product_numbers["actions"] = report.by_action()
        product_numbers["stage_seconds"] = {k: round(v, 3) for k, v in report.stage_seconds.items()}
        product_numbers["used_fallback"] = report.used_fallback
        floor = quota_floor(seeds.generate(args.clusters, args.subscriptions, args.seed))
        result: dict[str, Any] = {
            "clusters": report.clusters,
            "subscriptions": report.subscriptions,
            "latency_ms": args.latency_ms,
            "product": product_numbers,
            "quota_floor": floor,
            "floor_ratio": round(product_numbers["seconds"] / max(floor["seconds"], 1e-9), 2),
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


class _local_azure(LocalAzure):
    """`LocalAzure` with a start-up allowance for large estates (100,000 clusters take ~10 s to build)."""

    def __init__(self, *serve_args: str) -> None:
        self.azurite = Azurite()
        try:
            self.emulator = EmulatorProcess(*serve_args, startup_timeout=300)
        except BaseException:
            self.azurite.stop()
            raise


if __name__ == "__main__":
    sys.exit(main())
