"""Which password a cluster uses: the one rule discovery (when is it due) and rotation (what to replace) share.

ARM never says which password of an application a cluster holds. Key Vault knows it when this product rotated
the cluster (the `key-id` of the version tagged `state=current` for the same application); otherwise every
password of the application and its service principal counts and the earliest active expiry decides.
See docs/design.md, "Which secret does the cluster use".
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from shared.graph import AppCredentials, Holder, PasswordInfo

DISPLAY_NAME_PREFIX = "aks-rotator"
_ROTATION_ID = re.compile(r"\b([0-9a-f]{32})\b")
_FAR = datetime.max.replace(tzinfo=UTC)


class Basis(enum.StrEnum):
    KEYVAULT = "keyvault"  # Key Vault's current version names the key
    EARLIEST = "earliest"  # unknown: the earliest active expiry decides


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


class InUse(NamedTuple):
    holder: Holder
    password: PasswordInfo
    basis: Basis


def find_in_use(
    creds: AppCredentials, vault_key_id: str | None, now: datetime, *, ignore_rotation: str | None = None
) -> HeldPassword | None:
    """The password the cluster uses, or None when the application has none to choose from.

    `ignore_rotation`: passwords created by that rotation are not candidates (a rotation planning itself)."""
    everything = [
        h for h in passwords(creds) if ignore_rotation is None or product_created(h.password) != ignore_rotation
    ]
    if vault_key_id:
        known = next((h for h in everything if h.password.key_id.lower() == vault_key_id.lower()), None)
        if known is not None:
            return known
    active = [h for h in everything if h.password.end is None or h.password.end > now] or everything
    if not active:
        return None
    return min(active, key=lambda h: (h.password.end or _FAR, h.password.key_id))


def credential_in_use(creds: AppCredentials, vault_key_id: str | None, now: datetime) -> InUse | None:
    """The password that decides when the cluster's secret expires, and the basis of the choice."""
    found = find_in_use(creds, vault_key_id, now)
    if found is None:
        return None
    known = vault_key_id is not None and found.password.key_id.lower() == vault_key_id.lower()
    return InUse(found.holder, found.password, Basis.KEYVAULT if known else Basis.EARLIEST)
