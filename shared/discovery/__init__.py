"""Discovery (timer trigger, `aks-rotator scan`): inventory every AKS cluster, decide which credentials are due,
queue one rotation per due credential.

Map (docs/architecture.md): `stream` (`scan`: cluster pages streamed, collected, decided; then queued;
`run_scheduled`) · `collect` (ARM fallback, Graph applications, Key Vault records, CA expiries) · `findings`
(`Finding`, `ScanReport`, the due rules, the order) · `queueing` (the queue step, `queue_candidates`) · `context`
(one scan's run context, `DiscoveryError`).
"""

from shared.discovery.collect import reads_certificate
from shared.discovery.context import DiscoveryError, Progress
from shared.discovery.findings import (
    ADVICE_CERT_OPT_IN,
    ADVICE_KUBELET,
    ADVICE_LEGACY_AAD,
    ADVICE_MIGRATE,
    ADVICE_NO_PASSWORD,
    ADVICE_NOT_VISIBLE,
    Action,
    Finding,
    Kind,
    ScanReport,
    decide,
    display_sorted,
)
from shared.discovery.queueing import queue_candidates
from shared.discovery.stream import (
    GC_THRESHOLD,
    PAGES_IN_FLIGHT,
    RESOURCE_GRAPH_SHARDS,
    Keep,
    log_report,
    run_scheduled,
    scan,
)

__all__ = [
    "ADVICE_CERT_OPT_IN",
    "ADVICE_KUBELET",
    "ADVICE_LEGACY_AAD",
    "ADVICE_MIGRATE",
    "ADVICE_NOT_VISIBLE",
    "ADVICE_NO_PASSWORD",
    "GC_THRESHOLD",
    "PAGES_IN_FLIGHT",
    "RESOURCE_GRAPH_SHARDS",
    "Action",
    "DiscoveryError",
    "Finding",
    "Keep",
    "Kind",
    "Progress",
    "ScanReport",
    "decide",
    "display_sorted",
    "log_report",
    "queue_candidates",
    "reads_certificate",
    "run_scheduled",
    "scan",
]
