"""Pure rules of a rotation: which object gets the new password, which old keys to retire, due and urgent.

No I/O here: every rule is a function of what Graph, Key Vault and the row say, tested table-driven in tests/unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.credentials import find_in_use, passwords, product_created
from shared.graph import AppCredentials, Holder
from shared.record import RotationRecord
from shared.rotation.results import Failure
from shared.vault import StoredVersion, VersionState

CHECKED_REASONS = frozenset({"due", "keyvault_event"})  # the rest (urgent, expired, on demand) always run
URGENT_REASONS = frozenset({"urgent", "expired"})


@dataclass(frozen=True)
class Plan:
    holder: Holder
    object_id: str
    old_key_ids: list[str]
    observed_expiry: datetime | None
    note: str


def plan(rotation_id: str, creds: AppCredentials, versions: Sequence[StoredVersion], now: datetime) -> Plan:
    """The holder and the keys to retire later. See docs/design.md, "Which secret does the cluster use"."""
    everything = passwords(creds)
    present = {h.password.key_id.lower(): h for h in everything}
    ours = [v for v in versions if v.labels.of_app(creds.app_id)]
    current = next((v for v in ours if v.labels.state is VersionState.CURRENT), None)
    if current is not None and current.labels.key_id in present:
        used = present[current.labels.key_id]
        old = [used.password.key_id]
        # Keys of this cluster's earlier rotations that are still there (e.g. kept while another cluster used them).
        for version in ours:
            key = version.labels.key_id
            if version.labels.state is VersionState.PREVIOUS and key in present and key not in old:
                old.append(key)
        return Plan(used.holder, used.object_id, old, used.password.end, "the cluster's key is known from Key Vault")
    chosen = find_in_use(creds, None, now, ignore_rotation=rotation_id)
    if chosen is None:
        # No password at all: add to the application (or the service principal if no application is visible).
        if creds.application_object_id:
            return Plan("application", creds.application_object_id, [], None, "the application has no password")
        if creds.service_principal_object_id:
            return Plan("servicePrincipal", creds.service_principal_object_id, [], None, "no password")
        raise Failure(f"application {creds.app_id} is not visible to the product", cleanup=False)
    # Passwords created by this product for other clusters' rotations are not candidates: Key Vault knows them.
    foreign = [h for h in everything if product_created(h.password) is None]
    if len(foreign) == 1 and foreign[0].object_id == chosen.object_id:
        only = foreign[0].password
        return Plan(chosen.holder, chosen.object_id, [only.key_id], only.end, "the holder has a single password")
    untouched = len([h for h in everything if product_created(h.password) != rotation_id])
    note = f"first rotation with {untouched} passwords on the app: left {untouched} pre-existing credentials untouched"
    return Plan(chosen.holder, chosen.object_id, [], chosen.password.end, note)


def is_due(row: RotationRecord, observed_expiry: datetime | None, now: datetime, threshold_days: int) -> bool:
    """Still due when the rotation starts (a scan's or an event's view may be stale); on demand and urgent always."""
    if row.reason not in CHECKED_REASONS:
        return True
    if observed_expiry is None:
        return True
    return observed_expiry - now <= timedelta(days=threshold_days)


def is_urgent(row: RotationRecord, now: datetime, urgent_days: int) -> bool:
    """Urgent rotations may run outside the maintenance window."""
    if row.reason in URGENT_REASONS:
        return True
    expiry = row.observed_expiry
    return expiry is not None and expiry - now <= timedelta(days=urgent_days)


def retire_candidates(old_key_ids: Iterable[str], new_key_id: str | None, present: Mapping[str, object]) -> list[str]:
    """Old keys (lower case) still on the application, never the new one."""
    new = (new_key_id or "").lower()
    return [key.lower() for key in old_key_ids if key.lower() != new and key.lower() in present]
