"""Rotate the sharing clusters onto one new password: when the application's password limit refuses one more
password (Graph `TooManyAppPasswords`), a cluster adopts the password a sibling rotation of the same application
already created, instead of starving.

The secret never leaves its lane: it is read back from the sibling's Key Vault version into memory and stored as
this cluster's own pending version; prove, apply, verify and finish then run as for a password of its own. Only a
sibling password the sibling cluster already holds (its rotation promoted it to `current`) is adopted: a password
still in flight may be cleaned up by a failing sibling. A sibling still in flight is waited for, at most until the
urgent point; without one, the rotation fails loudly (reason, expiry, alert). Retire stays right by construction:
the adopting cluster's Key Vault `current` names the shared key, so no sibling's retire removes it
(`finish.key_in_use_elsewhere`), and cleanup removes only passwords of its own rotation id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.credentials import due_within_days, passwords, product_created
from shared.graph import AppCredentials, PasswordInfo
from shared.record import Phase, RotationRecord, RotationState
from shared.rotation.delivery import Delivery
from shared.rotation.plan import urgent_point
from shared.rotation.results import Failure, Next, Result, Wait
from shared.vault import StoredVersion, VersionState, VersionTags, secret_name_for

LIMIT_CODE = "TooManyAppPasswords"
HELD_PHASES = frozenset({Phase.FINISH, Phase.RETIRE, Phase.DONE})  # the sibling cluster holds its new password


def adoptable(password: PasswordInfo, now: datetime, threshold_days: int) -> bool:
    """Valid long enough to be worth moving onto: not itself due (the same rule as discovery's)."""
    if password.end is None:
        return True
    return password.end - now > timedelta(days=due_within_days(password, threshold_days))


@dataclass(frozen=True)
class Sibling:
    """A rotation of another cluster sharing the application, and the password it created."""

    row: RotationRecord
    password: PasswordInfo

    @property
    def holds(self) -> bool:
        return self.row.phase in HELD_PHASES and self.row.state is not RotationState.FAILED


def sibling_candidates(
    rotation_id: str, cluster_id: str, creds: AppCredentials, rows: Sequence[RotationRecord], now: datetime, days: int
) -> list[Sibling]:
    """Pure: the siblings whose password could be shared, those whose cluster already holds it first."""
    by_rid = {r.rotation_id: r for r in rows}
    out: list[Sibling] = []
    for held in passwords(creds):
        rid = product_created(held.password)
        row = by_rid.get(rid or "")
        if rid is None or rid == rotation_id or row is None or row.cluster_id.lower() == cluster_id.lower():
            continue
        if (row.app_id or "").lower() != creds.app_id.lower() or row.state is RotationState.FAILED:
            continue
        if row.new_key_id is not None and row.new_key_id.lower() != held.password.key_id.lower():
            continue  # (no key recorded yet: the sibling is between addPassword and store, still in flight)
        if adoptable(held.password, now, days):
            out.append(Sibling(row, held.password))
    return sorted(out, key=lambda s: (not s.holds, -(s.password.end or now).timestamp()))


async def _sibling_version(run: Delivery, sibling: Sibling) -> StoredVersion | None:
    """The sibling's Key Vault version of the shared key, if Key Vault says the sibling cluster holds it."""
    name = secret_name_for(sibling.row.cluster_id)
    for version in await run.deps.vault.versions(name):
        labels = version.labels
        if version.version == sibling.row.vault_version and labels.current_for(run.row.app_id):
            return version if labels.key_id == sibling.password.key_id.lower() else None
    return None


async def share_or_fail(run: Delivery, creds: AppCredentials, refusal: str) -> Result:
    """addPassword was refused for the limit: adopt a sibling's password, wait for a sibling in flight, or fail."""
    now = run.now()
    found = await run.deps.graph.lookup_apps([creds.app_id])  # read again: the sibling's password is newer
    creds = found.get(creds.app_id.lower(), creds)
    rows = [r for r in [await run.deps.store.get(rid) for rid in _rids(creds)] if r is not None]
    siblings = sibling_candidates(run.rid, run.row.cluster_id, creds, rows, now, run.settings.threshold_days)
    for sibling in [s for s in siblings if s.holds]:
        version = await _sibling_version(run, sibling)
        if version is not None:
            return await _adopt(run, sibling, version)
    in_flight = [s for s in siblings if not s.holds and not s.row.terminal]
    deadline = urgent_point(run.row, run.settings.urgent_days)
    if in_flight and (deadline is None or now < deadline):
        first = in_flight[0].row
        delay = run.settings.requeue_delay_seconds * 5
        if deadline is not None:
            delay = max(1, min(delay, int((deadline - now).total_seconds()) + 1))
        detail = (
            f"the application's password limit is reached ({refusal}); waiting for rotation {first.rotation_id} of "
            f"sharing cluster {first.cluster_id.rsplit('/', 1)[-1]} to finish, then moving onto its new password"
        )
        await run.requeue(delay, state=RotationState.WAITING, detail=detail)
        return Wait(delay, detail, RotationState.WAITING)
    raise Failure(
        f"addPassword refused by policy: {refusal}; no cluster sharing application {run.row.app_id} has a new "
        "password to move onto: remove an unused password of the application (or raise its limit)",
        cleanup=False,
    )


def _rids(creds: AppCredentials) -> list[str]:
    return sorted({rid for h in passwords(creds) if (rid := product_created(h.password)) is not None})


async def _adopt(run: Delivery, sibling: Sibling, version: StoredVersion) -> Result:
    """Store the sibling's secret as this cluster's pending version; the value stays in this frame."""
    deps, key_id = run.deps, sibling.password.key_id.lower()
    labels = VersionTags(
        cluster_id=run.row.cluster_id.lower(),
        app_id=(run.row.app_id or "").lower(),
        key_id=key_id,
        rotation_id=run.rid,
        state=VersionState.PENDING,
    )
    end = sibling.password.end or version.expires_on
    if end is None:
        raise Failure(f"the shared password {key_id} has no end date", cleanup=True)
    value = await deps.vault.value(version.name, version.version)
    stored = await deps.vault.store(run.secret_name, value, end, labels.to_tags())
    del value
    await run.save(
        phase=Phase.PROVE, proof_count=0, proof_started=run.now(), new_key_id=key_id, vault_version=stored.version
    )
    await run.audit(
        "create",
        "shared",
        f"the application's password limit is reached: moving onto password {key_id} of sharing cluster "
        f"{sibling.row.cluster_id.rsplit('/', 1)[-1]} (rotation {sibling.row.rotation_id}), ends {end:%Y-%m-%d}; "
        f"stored as Key Vault version {stored.version} (state=pending)",
        key_id=key_id,
        version=stored.version,
    )
    return Next()
