"""Which password a cluster uses: the one rule discovery (when is it due) and rotation (what to replace) share.

ARM never says which password of an application a cluster holds. Key Vault knows it when this product rotated
the cluster (the `key-id` of the version tagged `state=current` for the same application) — unless someone added a
newer password outside the product since (`az aks update-credentials` by hand): then Key Vault no longer knows.
Otherwise every password the cluster may hold counts and the earliest expiry decides; the rule never hides an
expiry: a password that expired recently still counts (the cluster may be holding it: that is an outage to fix at
once), and a password the product created for a rotation that has not finished does not mask an older one.
See docs/design.md, "Which secret does the cluster use".
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from shared.graph import AppCredentials, Holder, PasswordInfo

DISPLAY_NAME_PREFIX = "aks-rotator"
_ROTATION_ID = re.compile(r"\b([0-9a-f]{32})\b")
_FAR = datetime.max.replace(tzinfo=UTC)
RECENTLY_EXPIRED = timedelta(days=7)  # an expired password counts this long: the cluster may still be holding it


class Basis(enum.StrEnum):
    KEYVAULT = "keyvault"  # Key Vault's current version names the key
    EARLIEST = "earliest"  # unknown: the earliest expiry of the passwords the cluster may hold decides
    CHANGED_OUTSIDE = "changed_outside"  # Key Vault's key, or a newer one added outside the product: earliest


def password_display_name(rotation_id: str) -> str:
    """The displayName of a password this product creates: a retry finds it by the rotation id."""
    return f"{DISPLAY_NAME_PREFIX} {rotation_id}"


def product_created(password: PasswordInfo) -> str | None:
    """The rotation id in a password's displayName if this product created it, else None."""
    name = password.display_name or ""
    if not name.startswith(DISPLAY_NAME_PREFIX):
        return None
    match = _ROTATION_ID.search(name)
    return match.group(1) if match else None


@dataclass(frozen=True)
class HeldPassword:
    """A password and the object (application or service principal) that holds it."""

    holder: Holder
    object_id: str
    password: PasswordInfo


def passwords(creds: AppCredentials) -> list[HeldPassword]:
    """Every password of the application and of its service principal (application first)."""
    out: list[HeldPassword] = []
    if creds.application_object_id:
        out += [HeldPassword("application", creds.application_object_id, p) for p in creds.application_passwords]
    if creds.service_principal_object_id:
        sp = creds.service_principal_object_id
        out += [HeldPassword("servicePrincipal", sp, p) for p in creds.service_principal_passwords]
    return out


def due_within_days(password: PasswordInfo, threshold_days: float) -> float:
    """How close to its expiry a password is due. THRESHOLD_DAYS, unless the password's whole lifetime is no longer
    than that (an app management policy caps it): then half its lifetime, so a short-lived secret is rotated every
    half-lifetime instead of every day (each rotation is a node image upgrade)."""
    if password.start is not None and password.end is not None:
        lifetime = (password.end - password.start).total_seconds() / 86400
        if 0 < lifetime <= threshold_days:
            return lifetime / 2
    return threshold_days


class InUse(NamedTuple):
    holder: Holder
    password: PasswordInfo
    basis: Basis


def _after(password: PasswordInfo, known: PasswordInfo) -> bool:
    return password.start is not None and known.start is not None and password.start > known.start


def choose(
    creds: AppCredentials, vault_key_id: str | None, now: datetime, *, ignore_rotation: str | None = None
) -> tuple[HeldPassword, Basis] | None:
    """The password the cluster uses and the basis of the choice, or None when there is none to choose from.

    `ignore_rotation`: passwords created by that rotation are not candidates (a rotation planning itself)."""
    everything = [
        h for h in passwords(creds) if ignore_rotation is None or product_created(h.password) != ignore_rotation
    ]
    foreign = [h for h in everything if product_created(h.password) is None]
    known = next((h for h in everything if vault_key_id and h.password.key_id.lower() == vault_key_id.lower()), None)
    if known is not None:
        newer = [h for h in foreign if _after(h.password, known.password)]
        if not newer:
            return known, Basis.KEYVAULT
        return _earliest([known, *newer]), Basis.CHANGED_OUTSIDE
    # Unknown: the passwords the cluster may hold. A product-created password belongs to a rotation (this cluster's
    # unfinished one, or another cluster's): it counts only when nothing else is there.
    candidates = foreign or everything
    live = [h for h in candidates if h.password.end is None or h.password.end > now - RECENTLY_EXPIRED]
    chosen = _earliest(live or candidates) if candidates else None
    return None if chosen is None else (chosen, Basis.EARLIEST)


def _earliest(held: list[HeldPassword]) -> HeldPassword:
    return min(held, key=lambda h: (h.password.end or _FAR, h.password.key_id))


def find_in_use(
    creds: AppCredentials, vault_key_id: str | None, now: datetime, *, ignore_rotation: str | None = None
) -> HeldPassword | None:
    """The password the cluster uses (see `choose`)."""
    found = choose(creds, vault_key_id, now, ignore_rotation=ignore_rotation)
    return None if found is None else found[0]


def credential_in_use(creds: AppCredentials, vault_key_id: str | None, now: datetime) -> InUse | None:
    """The password that decides when the cluster's secret expires, and the basis of the choice."""
    found = choose(creds, vault_key_id, now)
    if found is None:
        return None
    held, basis = found
    return InUse(held.holder, held.password, basis)
