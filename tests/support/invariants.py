"""The promise, as one check every rotation test and every simulation asserts (judged from the emulator's truth).

1. zero outage seconds for every cluster (and every node pool, where the truth has them);
2. liveness: every credential the product may rotate is rotated before it expires, or an alert naming the
   cluster fired at least URGENT_DAYS before the expiry; no rotation stays non-terminal past a bound unalerted;
3. Key Vault's `current` version equals the key every cluster the product manages holds (every cluster, not only
   the newest rotation's);
4. no password the product created outlives its purpose (held by a cluster, tracked in Key Vault, or within its
   rotation);
5. no password the product did not create is removed while a cluster (visible or not) may hold it (judged from the
   truth's clusters, which include those outside the product's scope, and its `removedPasswords`);
6. every rotation ends succeeded, or failed with a reason and an alert;
7. (migration) no cluster ever loses a permission it had;
8. (migration) no migration step runs outside the cluster's maintenance window unless urgent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.record import RotationRecord
from shared.rotation import DISPLAY_NAME_PREFIX
from shared.vault import MANAGED_BY, MANAGED_BY_TAG, secret_name_for
from shared.windows import Window, is_open

KEPT_STATES = ("current", "previous", "uncertain")  # "uncertain": kept on purpose, tracked and alerted


def all_passwords(app: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(app["passwordCredentials"]) + list((app.get("servicePrincipal") or {}).get("passwordCredentials", []))


def product_created(password: Mapping[str, Any]) -> bool:
    return (password.get("displayName") or "").startswith(DISPLAY_NAME_PREFIX + " ")


def _when(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _vault(state: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {name: versions for v in state["vaults"] for name, versions in v["secrets"].items()}


def _current(versions: Iterable[Mapping[str, Any]], app_id: str) -> list[Mapping[str, Any]]:
    return [
        v
        for v in versions
        if v["tags"].get("state") == "current"
        and v["tags"].get(MANAGED_BY_TAG) == MANAGED_BY
        and v["tags"].get("app-id", "").lower() == app_id.lower()
    ]


@dataclass
class Violations:
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def check(self) -> None:
        assert not self.problems, "the promise broke:\n- " + "\n- ".join(self.problems[:40])


def check_state(
    state: Mapping[str, Any],
    records: Mapping[str, RotationRecord],
    *,
    alerts: Sequence[Any] = (),
    before: Mapping[str, Any] | None = None,
) -> Violations:
    """Invariants 1, 3, 4, 5, 6 on one truth snapshot (liveness needs time: `check_liveness`)."""
    found = Violations()
    # 1. no outage, no invalid held secret
    for cluster in state["clusters"]:
        if cluster.get("outage_seconds", 0) != 0:
            found.add(f"outage: {cluster['id']} ran {cluster['outage_seconds']} s on an invalid secret")
        for pool in cluster.get("nodePools", []) or []:
            if pool.get("outage_seconds", 0) != 0:
                found.add(f"outage: node pool {pool.get('name')} of {cluster['id']}: {pool['outage_seconds']} s")
    vault = _vault(state)
    in_flight = {rid for rid, r in records.items() if not r.terminal}
    # 3. Key Vault's current equals the held key of every cluster the product manages.
    for cluster in state["clusters"]:
        if cluster["clientId"] == "msi":
            continue
        versions = vault.get(secret_name_for(cluster["id"]), [])
        current = _current(versions, cluster["clientId"])
        busy = any(r.cluster_id.lower() == cluster["id"].lower() for rid, r in records.items() if rid in in_flight)
        if not current or busy:
            continue  # not managed by the product (yet), or mid-rotation
        if len(current) != 1:
            found.add(f"key vault: {len(current)} current versions for {cluster['id']}")
        elif current[0]["tags"].get("key-id", "").lower() != (cluster.get("heldKeyId") or "").lower():
            found.add(f"key vault: current of {cluster['id']} is not the key the cluster holds")
    # 4. product-created passwords have a purpose.
    held = {(c.get("heldKeyId") or "").lower() for c in state["clusters"]}
    referenced = set(held)
    for versions in vault.values():
        for version in versions:
            if version["tags"].get("state") in KEPT_STATES:
                referenced.add(version["tags"].get("key-id", "").lower())
    for app in state["applications"]:
        for password in all_passwords(app):
            if not product_created(password):
                continue
            rid = password["displayName"].split()[-1]
            if password["keyId"].lower() not in referenced and rid not in in_flight:
                found.add(f"leak: password {password['keyId']} of rotation {rid} has no purpose")
    # 5. no foreign password removed while a cluster holds it.
    if before is not None:
        after_keys = {p["keyId"].lower() for a in state["applications"] for p in all_passwords(a)}
        for app in before["applications"]:
            for password in all_passwords(app):
                key = password["keyId"].lower()
                if product_created(password) or key in after_keys:
                    continue
                holders = [c["id"] for c in state["clusters"] if (c.get("heldKeyId") or "").lower() == key]
                if holders:
                    found.add(f"removed a password {key} that {holders[0]} holds")
    # 5, for every cluster the truth knows (also those the product cannot see): a password the product removed
    # but did not create is held by no cluster.
    for removed in state.get("removedPasswords", []):
        if product_created(removed) or removed.get("removedBy") == "human":  # a person's act is not the product's
            continue
        key = str(removed.get("keyId", "")).lower()
        holders = [c["id"] for c in state["clusters"] if (c.get("heldKeyId") or "").lower() == key]
        if holders:
            found.add(f"removed a password {key} not created by the product that {holders[0]} holds")
    # 6. terminal rotations: succeeded, or failed with a reason and an alert.
    alerted = {str(getattr(a, "fields", {}).get("rotation_id", "")) for a in alerts}
    for rid, record in records.items():
        if record.state == "failed":
            if not record.failure_reason:
                found.add(f"rotation {rid} failed without a reason")
            if alerts and rid not in alerted:
                found.add(f"rotation {rid} failed without an alert")
    return found


def check_stuck(
    records: Mapping[str, RotationRecord], alerts: Sequence[Any], *, now: datetime, settings: Any
) -> Violations:
    """Invariant 2, second half: a rotation still running at `now` must be within its bound — it must end before
    `expiry - URGENT_DAYS` (or a week when the expiry is unknown) — or an alert about its cluster fired."""
    found = Violations()
    for rid, record in records.items():
        if record.terminal:
            continue
        expiry = record.observed_expiry
        bound = (expiry - timedelta(days=settings.urgent_days)) if expiry else record.created_at + timedelta(days=7)
        if now <= bound:
            continue
        key = record.cluster_id.lower()
        if not any(str(getattr(a, "fields", {}).get("cluster_id", "")).lower() == key for a in alerts):
            found.add(
                f"liveness: rotation {rid} of {record.cluster_id} still {record.state} at {record.phase} "
                f"past {bound:%Y-%m-%d %H:%M}, no alert"
            )
    return found


def check_liveness(
    expiries: Mapping[str, datetime],
    rotated: Mapping[str, datetime],
    alerts: Sequence[Any],
    *,
    now: datetime,
    urgent_days: int,
) -> Violations:
    """Invariant 2 over a run: for each cluster whose credential expired by `now` (cluster id -> the expiry it
    had), a rotation completed before it expired, or an alert about the cluster fired at least `urgent_days`
    before it."""
    found = Violations()
    for cluster_id, expiry in expiries.items():
        if expiry > now:
            continue
        if (done := rotated.get(cluster_id.lower())) is not None and done <= expiry:
            continue
        early = [
            a
            for a in alerts
            if str(a.fields.get("cluster_id", "")).lower() == cluster_id.lower()
            and a.at <= expiry - timedelta(days=urgent_days)
        ]
        if not early:
            found.add(f"liveness: {cluster_id} expired at {expiry:%Y-%m-%d %H:%M} unrotated and unalerted")
    return found


def held_expiry(state: Mapping[str, Any]) -> dict[str, datetime]:
    """cluster id -> end of the password the cluster holds (SP clusters whose key is known to the truth)."""
    ends = {p["keyId"].lower(): _when(p.get("end")) for a in state["applications"] for p in all_passwords(a)}
    out: dict[str, datetime] = {}
    for cluster in state["clusters"]:
        end = ends.get((cluster.get("heldKeyId") or "").lower())
        if cluster["clientId"] != "msi" and end is not None:
            out[cluster["id"].lower()] = end
    return out


# -- migration to managed identity (issue 13) -------------------------------------------------------------------
MIGRATION_OPERATIONS = ("updateIdentity", "upgradeNodeImageVersion")


def check_migration(
    state: Mapping[str, Any], windows: Callable[[str], Sequence[Window]], *, urgent: Iterable[str] = ()
) -> Violations:
    """7. no cluster ever loses a permission it had (the truth's `brokenOperations`: an operation a component
    could do on its service principal and cannot do on its new identity); 8. no migration step (identity update,
    node image upgrade) starts outside the cluster's maintenance window (`windows(cluster_id)`) unless the cluster
    is in `urgent`."""
    found = Violations()
    for broken in state.get("brokenOperations", []):
        found.add(
            f"lost permission: {broken['component']} of {broken['clusterId']} cannot {broken['operation']} "
            f"({broken['role']} on {broken['scope']}) since {broken['at']}"
        )
    pressed = {c.lower() for c in urgent}
    for op in state["operations"]:
        if op["kind"] not in MIGRATION_OPERATIONS or op["clusterId"].lower() in pressed:
            continue
        started = _when(op.get("started"))
        if started is not None and not is_open(windows(op["clusterId"]), started):
            found.add(f"window: {op['kind']} of {op['clusterId']} started at {started:%Y-%m-%d %H:%M} outside it")
    return found
