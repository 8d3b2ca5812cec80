"""Which sibling rotation's password a cluster refused by the password limit may move onto (pure rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.credentials import password_display_name
from shared.graph import AppCredentials, PasswordInfo
from shared.messages import CredentialKind
from shared.record import Phase, RotationRecord, RotationState
from shared.rotation.sharing import adoptable, sibling_candidates

NOW = datetime(2026, 6, 1, tzinfo=UTC)
APP = "11111111-1111-4111-8111-111111111111"
ME, SIB, OTHER = "a" * 32, "b" * 32, "c" * 32


def pw(key: str, days: float, rid: str | None = None) -> PasswordInfo:
    name = password_display_name(rid) if rid else "rbac"
    return PasswordInfo(key, name, NOW - timedelta(days=150), NOW + timedelta(days=days), None)  # a 180-day lifetime


def row(
    rid: str, cluster: str, phase: Phase, key: str | None, state: RotationState = RotationState.RUNNING
) -> RotationRecord:
    return RotationRecord(
        rotation_id=rid,
        cluster_id=f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/{cluster}",
        kind=CredentialKind.SP_SECRET,
        app_id=APP,
        phase=phase,
        state=state,
        new_key_id=key,
    )


def creds(*passwords: PasswordInfo) -> AppCredentials:
    return AppCredentials(APP, "app-object", None, passwords, ())


def test_a_sibling_whose_cluster_holds_its_password_comes_first() -> None:
    found = sibling_candidates(
        ME,
        row(ME, "aks-a", Phase.CREATE, None).cluster_id,
        creds(pw("old", 5), pw("k-flight", 180, OTHER), pw("k-held", 180, SIB)),
        [row(SIB, "aks-b", Phase.RETIRE, "k-held"), row(OTHER, "aks-c", Phase.PROVE, "k-flight")],
        NOW,
        30,
    )
    assert [(s.password.key_id, s.holds) for s in found] == [("k-held", True), ("k-flight", False)]


def test_what_is_never_shared() -> None:
    me = row(ME, "aks-a", Phase.CREATE, None)
    found = sibling_candidates(
        ME,
        me.cluster_id,
        creds(pw("mine", 180, ME), pw("failed", 180, SIB), pw("due", 10, OTHER), pw("foreign", 180)),
        [me, row(SIB, "aks-b", Phase.CLEANUP, "failed", RotationState.FAILED), row(OTHER, "aks-c", Phase.DONE, "due")],
        NOW,
        30,
    )
    assert found == []  # this rotation's own, a failed sibling's, one itself due, one not created by the product


def test_a_sibling_between_add_password_and_store_is_in_flight() -> None:
    found = sibling_candidates(
        ME, "/x/aks-a", creds(pw("k", 180, SIB)), [row(SIB, "aks-b", Phase.CREATE, None)], NOW, 30
    )
    assert [(s.password.key_id, s.holds) for s in found] == [("k", False)]


def test_adoptable_uses_the_due_rule() -> None:
    assert adoptable(pw("k", 31), NOW, 30) and not adoptable(pw("k", 29), NOW, 30)
