"""What discovery found and what it decided: one `Finding` per credential of a cluster, the `ScanReport`, the rules
that decide whether a credential is due and what is done about it (pure: the collected facts in, findings out), and
the order findings are queued and shown in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from shared.aks import ClusterInfo
from shared.cluster_tags import certificates_opted_in, opted_out
from shared.credentials import credential_in_use, due_within_days
from shared.discovery.context import Scan
from shared.graph import AppCredentials, Holder
from shared.messages import Reason
from shared.power import stopped_advice, stopped_clusters
from shared.settings import Settings

Kind = Literal["sp_secret", "cluster_certificate", "aad_server_secret", "managed_identity"]
Action = Literal["queued", "already_queued", "deferred", "would_queue", "ok", "report_only", "opted_out", "none"]

ADVICE_MIGRATE = "migrate to managed identity"
ADVICE_KUBELET = "kubelet still uses the SP: keep it valid until node pools are upgraded"
ADVICE_LEGACY_AAD = "legacy AAD: migrate to AKS-managed Entra integration"
ADVICE_CERT_OPT_IN = (
    "rotate-certs recreates every node (up to 30 minutes of downtime): set the cluster tag {tag}=true "
    "(or ROTATE_CERTIFICATES) to let the rotator do it"
)
ADVICE_NOT_VISIBLE = "application not found in Microsoft Graph (deleted, or in another tenant): cannot check it"
ADVICE_NO_PASSWORD = "the application has no password: the cluster cannot authenticate with it"  # noqa: S105 (advice text, not a secret)


# -- results ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One credential of one cluster (or, for `managed_identity`, the fact that there is none) and what was done."""

    cluster_id: str
    cluster_name: str
    subscription_id: str
    kind: Kind
    app_id: str | None
    holder: Holder | None
    key_id: str | None
    expires_on: datetime | None
    days_left: float | None
    action: Action
    advice: str | None = None
    due: bool = False  # within its window (THRESHOLD_DAYS for secrets, CERT_WINDOW_DAYS for certificates)
    reason: Reason | None = None  # due | urgent | expired, when due
    basis: str | None = None  # how the credential in use was decided: "keyvault" | "earliest" | "ca"
    rotation_id: str | None = None  # set when queued, already queued, deferred or would queue
    detail: str | None = None
    stopped: bool = False  # properties.powerState.code is Stopped: a reset fails until it is started (shared.power)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stopped_advice"] = stopped_advice(self)
        data["expires_on"] = self.expires_on.isoformat() if self.expires_on else None
        data["days_left"] = round(self.days_left, 3) if self.days_left is not None else None
        return data


@dataclass
class ScanReport:
    findings: list[Finding]
    clusters: int
    subscriptions: int
    used_fallback: bool
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False
    correlation_id: str = ""
    started_at: datetime | None = None
    seconds: float = 0.0
    # Logical calls the scan made, per kind (HTTP requests are fewer: lookups are batched).
    requests: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Findings per action, counted as they were decided (a streaming scan keeps only some of the findings).
    actions: dict[str, int] = field(default_factory=dict)
    migration: dict[str, int] = field(default_factory=dict)  # clusters per migration stage (shared.migration.plan)

    def due(self) -> list[Finding]:
        """Credentials within their window, whatever the action (queued, deferred, opted out, report only)."""
        return [f for f in self.findings if f.due]

    def by_action(self) -> dict[str, int]:
        return dict(self.actions)

    def to_json(self) -> dict[str, Any]:
        return {
            "clusters": self.clusters,
            "subscriptions": self.subscriptions,
            "used_fallback": self.used_fallback,
            "dry_run": self.dry_run,
            "correlation_id": self.correlation_id,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "seconds": round(self.seconds, 3),
            "due": len(self.due()),
            "stopped": stopped_clusters(self.findings),
            "actions": self.by_action(),
            "migration": dict(self.migration),
            "requests": dict(self.requests),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "errors": list(self.errors),
            "findings": [f.to_json() for f in self.findings],
        }


# -- helpers ---------------------------------------------------------------------------------------------------
def _days(end: datetime | None, now: datetime) -> float | None:
    return None if end is None else (end - now).total_seconds() / 86400


def _reason(days_left: float, settings: Settings) -> Reason:
    if days_left <= 0:
        return "expired"
    if days_left <= settings.urgent_days:
        return "urgent"
    return "due"


# -- decide ----------------------------------------------------------------------------------------------------
def _base(cluster: ClusterInfo) -> dict[str, Any]:
    base = {"cluster_id": cluster.id, "cluster_name": cluster.name, "subscription_id": cluster.subscription_id}
    return {**base, "stopped": cluster.stopped}


def _sp_advice(cluster: ClusterInfo) -> str:
    return ADVICE_KUBELET if cluster.identity_type is not None and cluster.kubelet_on_sp else ADVICE_MIGRATE


def _secret_finding(
    run: Scan,
    cluster: ClusterInfo,
    kind: Kind,
    app_id: str,
    creds: AppCredentials | None,
    vault_key: str | None,
    advice: str,
    rotatable: bool,
) -> Finding:
    settings = run.settings
    common = {**_base(cluster), "kind": kind, "app_id": app_id}
    if creds is None:
        run.errors.append(f"{cluster.name}: application {app_id} not found in Microsoft Graph")
        return Finding(
            **common,
            holder=None,
            key_id=None,
            expires_on=None,
            days_left=None,
            action="report_only",
            advice=ADVICE_NOT_VISIBLE,
        )
    chosen = credential_in_use(creds, vault_key, run.now)
    if chosen is None:
        return Finding(
            **common,
            holder=None,
            key_id=None,
            expires_on=None,
            days_left=None,
            action="report_only",
            advice=ADVICE_NO_PASSWORD,
        )
    holder, password, basis = chosen
    days_left = _days(password.end, run.now)
    due = days_left is not None and days_left <= due_within_days(password, settings.threshold_days)
    action: Action
    if not rotatable:
        action = "report_only"
    elif opted_out(settings, cluster):
        action = "opted_out"
    elif due:
        action = "deferred"  # a queue candidate: settled in queue_findings
    else:
        action = "ok"
    return Finding(
        **common,
        holder=holder,
        key_id=password.key_id,
        expires_on=password.end,
        days_left=days_left,
        action=action,
        advice=advice,
        due=due,
        reason=_reason(days_left, settings) if due and days_left is not None else None,
        basis=basis,
    )


def _certificate_finding(run: Scan, cluster: ClusterInfo, expiry: datetime) -> Finding:
    settings = run.settings
    days_left = _days(expiry, run.now)
    assert days_left is not None
    due = days_left <= settings.cert_window_days
    opted_in = certificates_opted_in(settings, cluster)
    action: Action
    if opted_out(settings, cluster):
        action = "opted_out"
    elif not due:
        action = "ok"
    elif opted_in:
        action = "deferred"  # a queue candidate
    else:
        action = "report_only"
    return Finding(
        **_base(cluster),
        kind="cluster_certificate",
        app_id=None,
        holder=None,
        key_id=None,
        expires_on=expiry,
        days_left=days_left,
        action=action,
        advice=None if opted_in else ADVICE_CERT_OPT_IN.format(tag=settings.cert_opt_in_tag),
        due=due,
        reason=_reason(days_left, settings) if due else None,
        basis="ca",
    )


def decide(
    run: Scan,
    clusters: list[ClusterInfo],
    apps: dict[str, AppCredentials],
    vault_keys: dict[str, str],
    certificates: dict[str, datetime],
) -> list[Finding]:
    findings: list[Finding] = []
    for cluster in clusters:
        key = cluster.id.lower()
        if cluster.sp_client_id is None:
            findings.append(
                Finding(
                    **_base(cluster),
                    kind="managed_identity",
                    app_id=None,
                    holder=None,
                    key_id=None,
                    expires_on=None,
                    days_left=None,
                    action="none",
                )
            )
        else:
            app_id = cluster.sp_client_id.lower()
            findings.append(
                _secret_finding(
                    run, cluster, "sp_secret", app_id, apps.get(app_id), vault_keys.get(key), _sp_advice(cluster), True
                )
            )
        if cluster.legacy_aad_server_app_id:
            server = cluster.legacy_aad_server_app_id.lower()
            findings.append(
                _secret_finding(
                    run, cluster, "aad_server_secret", server, apps.get(server), None, ADVICE_LEGACY_AAD, False
                )
            )
        if key in certificates:
            findings.append(_certificate_finding(run, cluster, certificates[key]))
    return findings


# -- order -----------------------------------------------------------------------------------------------------
def urgency(finding: Finding) -> tuple[float, str, str]:
    return (
        finding.days_left if finding.days_left is not None else float("inf"),
        finding.cluster_id.lower(),
        finding.kind,
    )


def _display_order(finding: Finding) -> tuple[bool, float, str, str]:
    """Due credentials first, most urgent first; then the rest by cluster name."""
    days = finding.days_left if finding.due and finding.days_left is not None else float("inf")
    return (not finding.due, days, finding.cluster_name.lower(), finding.kind)


def display_sorted(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=_display_order)
