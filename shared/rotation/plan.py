"""Pure rules of a rotation: which object gets the new password, which old keys to retire, due and urgent.

No I/O here: every rule is a function of what Graph, Key Vault and the row say, tested table-driven in tests/unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.credentials import Basis, choose, due_within_days, passwords, product_created
from shared.graph import AppCredentials, Holder, PasswordInfo
from shared.record import RotationRecord
from shared.rotation.results import Failure
from shared.vault import StoredVersion, VersionState

CHECKED_REASONS = frozenset({"due", "keyvault_event"})  # the rest (urgent, expired, on demand) always run


@dataclass(frozen=True)
class Plan:
    holder: Holder
    object_id: str
    old_key_ids: list[str]
    note: str
    password: PasswordInfo | None = None  # the one the cluster uses (None when the application has none)

    @property
    def observed_expiry(self) -> datetime | None:
        """When the cluster's secret expires, as far as the rule can tell."""
        return self.password.end if self.password is not None else None


def plan(rotation_id: str, creds: AppCredentials, versions: Sequence[StoredVersion], now: datetime) -> Plan:
    """The holder and the keys to retire later. See docs/design.md, "Which secret does the cluster use"."""
    everything = passwords(creds)
    present = {h.password.key_id.lower() for h in everything}
    ours = [v for v in versions if v.labels.of_app(creds.app_id)]
    current = next((v for v in ours if v.labels.state is VersionState.CURRENT), None)
    found = choose(creds, current.labels.key_id if current else None, now, ignore_rotation=rotation_id)
    if found is None:
        # No password at all: add to the application (or the service principal if no application is visible).
        if creds.application_object_id:
            return Plan("application", creds.application_object_id, [], "the application has no password")
        if creds.service_principal_object_id:
            return Plan("servicePrincipal", creds.service_principal_object_id, [], "no password")
        raise Failure(f"application {creds.app_id} is not visible to the product", cleanup=False)
    chosen, basis = found
    if basis is Basis.KEYVAULT:
        old = [chosen.password.key_id]
        # Keys of this cluster's earlier rotations that are still there (e.g. kept while another cluster used them).
        for version in ours:
            key = version.labels.key_id
            if version.labels.state is VersionState.PREVIOUS and key in present and key not in old:
                old.append(key)
        note = "the cluster's key is known from Key Vault"
        return Plan(chosen.holder, chosen.object_id, old, note, chosen.password)
    if basis is Basis.CHANGED_OUTSIDE:
        note = (
            "a password newer than Key Vault's was added outside the product: which one the cluster holds is unknown, "
            "so the earliest expiry decides and no pre-existing password will be removed"
        )
        return Plan(chosen.holder, chosen.object_id, [], note, chosen.password)
    # Passwords created by this product for other clusters' rotations are not candidates: Key Vault knows them.
    foreign = [h for h in everything if product_created(h.password) is None]
    if len(foreign) == 1 and foreign[0].object_id == chosen.object_id:
        only = foreign[0].password
        note = "the holder has a single password"
        return Plan(chosen.holder, chosen.object_id, [only.key_id], note, only)
    untouched = len([h for h in everything if product_created(h.password) != rotation_id])
    note = f"first rotation with {untouched} passwords on the app: left {untouched} pre-existing credentials untouched"
    return Plan(chosen.holder, chosen.object_id, [], note, chosen.password)


def is_due(row: RotationRecord, chosen: Plan, now: datetime, threshold_days: int) -> bool:
    """Still due when the rotation starts (a scan's or an event's view may be stale); on demand and urgent always.
    The same rule as discovery's (`shared.credentials.due_within_days`)."""
    if row.reason not in CHECKED_REASONS:
        return True
    if chosen.observed_expiry is None:
        return True
    within = due_within_days(chosen.password, threshold_days) if chosen.password else threshold_days
    return chosen.observed_expiry - now <= timedelta(days=within)


def is_urgent(row: RotationRecord, now: datetime, urgent_days: int) -> bool:
    """Urgent rotations may run outside the maintenance window (a node image upgrade at any hour). Decided from the
    expiry the rotation observed itself (Graph and Key Vault, at create), never from a message's `reason`: a
    hand-written queue message or a forged event cannot force an upgrade outside the window."""
    expiry = row.observed_expiry
    return expiry is not None and expiry - now <= timedelta(days=urgent_days)


def urgent_point(row: RotationRecord, urgent_days: int) -> datetime | None:
    """When the rotation becomes urgent (`expiry - URGENT_DAYS`): no wait may last beyond it."""
    return None if row.observed_expiry is None else row.observed_expiry - timedelta(days=urgent_days)


def retire_candidates(old_key_ids: Iterable[str], new_key_id: str | None, present: Mapping[str, object]) -> list[str]:
    """Old keys (lower case) still on the application, never the new one."""
    new = (new_key_id or "").lower()
    return [key.lower() for key in old_key_ids if key.lower() != new and key.lower() in present]
