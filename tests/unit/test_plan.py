"""The rotation plan (`shared.rotation.plan`): every branch, table-driven, no Azure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.credentials import password_display_name
from shared.graph import AppCredentials, PasswordInfo
from shared.messages import CredentialKind
from shared.record import RotationRecord
from shared.rotation.plan import Plan, is_due, is_urgent, plan, retire_candidates
from shared.rotation.results import Failure
from shared.vault import MANAGED_BY, MANAGED_BY_TAG, StoredVersion, VersionTags

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
APP = "11111111-2222-3333-4444-555555555555"


def pw(key: str, days: float | None, name: str | None = None) -> PasswordInfo:
    return PasswordInfo(key, name, None, None if days is None else NOW + timedelta(days=days), None)


def version(key: str, state: str, app: str = APP, managed: bool = True) -> StoredVersion:
    tags = {"key-id": key, "state": state, "app-id": app}
    if managed:
        tags[MANAGED_BY_TAG] = MANAGED_BY
    return StoredVersion("s", key + state, tags, None, None, VersionTags.parse(tags))


def creds(app: tuple[PasswordInfo, ...] = (), sp: tuple[PasswordInfo, ...] = (), *, app_obj: str | None = "A",
          sp_obj: str | None = "S") -> AppCredentials:  # fmt: skip
    return AppCredentials(APP, app_obj, sp_obj, app, sp)


def test_key_vault_current_decides_and_previous_keys_are_retired_too() -> None:
    c = creds((pw("k1", 10), pw("k2", 100)), (pw("k3", 50),))
    result = plan(RID, c, [version("k2", "current"), version("k3", "previous"), version("gone", "previous")], NOW)
    assert (result.holder, result.object_id) == ("application", "A")
    assert result.old_key_ids == ["k2", "k3"] and result.observed_expiry == NOW + timedelta(days=100)
    assert "Key Vault" in result.note


@pytest.mark.parametrize(
    "versions",
    [
        [version("k9", "current")],  # names a key the application no longer has
        [version("k2", "current", app="99999999-2222-3333-4444-555555555555")],  # another application's version
        [version("k2", "current", managed=False)],  # not written by the product
        [version("k2", "pending")],  # not current
    ],
)
def test_key_vault_is_ignored_unless_it_names_this_applications_key(versions: list[StoredVersion]) -> None:
    c = creds((pw("k1", 10), pw("k2", 100)))
    result = plan(RID, c, versions, NOW)
    assert result.observed_expiry == NOW + timedelta(days=10)  # earliest rule
    assert result.old_key_ids == []  # two foreign passwords: which one the cluster holds is unknown


def test_single_foreign_password_on_the_holder_is_the_old_key() -> None:
    result = plan(RID, creds((pw("k1", 10),)), [], NOW)
    assert result.old_key_ids == ["k1"] and result.holder == "application" and "single" in result.note


def test_another_rotations_password_does_not_mask_the_foreign_one() -> None:
    # A product-created password (another cluster's rotation) expires first; the only foreign one is on the SP:
    # that is the one this cluster holds (Key Vault does not name it), so it decides and is retired later.
    ours = pw("p1", 5, password_display_name(OTHER))
    result = plan(RID, creds((ours,), (pw("s1", 50),)), [], NOW)
    assert (result.holder, result.object_id) == ("servicePrincipal", "S") and result.old_key_ids == ["s1"]


def test_single_foreign_password_on_the_other_object_is_not_retired() -> None:
    # Two foreign passwords, the earliest on the application: nothing is known, nothing pre-existing is retired.
    result = plan(RID, creds((pw("a1", 5),), (pw("s1", 50),)), [], NOW)
    assert (result.holder, result.object_id) == ("application", "A") and result.old_key_ids == []


def test_a_newer_password_added_by_hand_is_never_retired() -> None:
    known = PasswordInfo("k1", password_display_name(OTHER), NOW - timedelta(days=30), NOW + timedelta(days=150), None)
    by_hand = PasswordInfo("h1", "rbac", NOW - timedelta(days=1), NOW + timedelta(days=20), None)
    result = plan(RID, creds((known, by_hand)), [version("k1", "current")], NOW)
    assert result.old_key_ids == [] and result.observed_expiry == NOW + timedelta(days=20)
    assert "outside the product" in result.note


def test_this_rotations_own_password_is_never_the_plan() -> None:
    mine = pw("new", 1, password_display_name(RID))
    result = plan(RID, creds((mine, pw("k1", 30))), [], NOW)
    assert result.old_key_ids == ["k1"] and result.observed_expiry == NOW + timedelta(days=30)


def test_expired_passwords_only() -> None:
    result = plan(RID, creds((pw("k1", -3), pw("k2", -1))), [], NOW)
    assert result.observed_expiry == NOW - timedelta(days=3) and result.old_key_ids == []


@pytest.mark.parametrize(
    ("app_obj", "sp_obj", "holder", "object_id"),
    [("A", "S", "application", "A"), (None, "S", "servicePrincipal", "S")],
)
def test_no_password_at_all(app_obj: str | None, sp_obj: str | None, holder: str, object_id: str) -> None:
    result = plan(RID, creds(app_obj=app_obj, sp_obj=sp_obj), [], NOW)
    assert (result.holder, result.object_id, result.old_key_ids, result.observed_expiry) == (
        holder,
        object_id,
        [],
        None,
    )


def test_application_not_visible_fails_without_cleanup() -> None:
    with pytest.raises(Failure) as raised:
        plan(RID, creds(app_obj=None, sp_obj=None), [], NOW)
    assert raised.value.cleanup is False


def row(reason: str, expiry_days: float | None = None) -> RotationRecord:
    expiry = None if expiry_days is None else NOW + timedelta(days=expiry_days)
    return RotationRecord(
        rotation_id=RID, cluster_id="c", kind=CredentialKind.SP_SECRET, reason=reason, observed_expiry=expiry
    )


@pytest.mark.parametrize(
    ("reason", "observed_days", "due"),
    [
        ("due", 10, True),
        ("due", 30, True),  # exactly at the threshold
        ("due", 31, False),
        ("due", None, True),  # unknown expiry: rotate
        ("keyvault_event", 40, False),
        ("on_demand", 400, True),
        ("urgent", 400, True),
        ("expired", 400, True),
    ],
)
def test_is_due(reason: str, observed_days: float | None, due: bool) -> None:
    observed = None if observed_days is None else NOW + timedelta(days=observed_days)
    chosen = Plan("application", "A", [], "", pw("k", observed_days) if observed_days is not None else None)
    assert chosen.observed_expiry == observed
    assert is_due(row(reason), chosen, NOW, threshold_days=30) is due


@pytest.mark.parametrize(
    ("lifetime_days", "left_days", "due"),
    [
        (180, 29, True),  # a normal secret: THRESHOLD_DAYS
        (180, 31, False),
        (20, 11, False),  # a policy caps the lifetime at 20 <= THRESHOLD_DAYS: due at half the lifetime, not daily
        (20, 10, True),
        (30, 15, True),
    ],
)
def test_a_lifetime_capped_below_the_threshold_is_due_at_half_of_it(
    lifetime_days: float, left_days: float, due: bool
) -> None:
    password = PasswordInfo(
        "k", None, NOW - timedelta(days=lifetime_days - left_days), NOW + timedelta(days=left_days), None
    )
    chosen = Plan("application", "A", [], "", password)
    assert is_due(row("due"), chosen, NOW, threshold_days=30) is due


@pytest.mark.parametrize(
    ("reason", "expiry_days", "urgent"),
    [
        ("urgent", 100, False),  # a message's reason never grants urgency: only the observed expiry does
        ("expired", None, False),
        ("due", 3, True),
        ("due", 3.01, False),
        ("due", None, False),
        ("on_demand", 1, True),
        ("on_demand", 10, False),
        ("keyvault_event", -1, True),
    ],
)
def test_is_urgent(reason: str, expiry_days: float | None, urgent: bool) -> None:
    assert is_urgent(row(reason, expiry_days), NOW, urgent_days=3) is urgent


def test_retire_candidates() -> None:
    present = {"k1": 1, "k2": 2, "new": 3}
    assert retire_candidates(["K1", "new", "gone", "k2"], "NEW", present) == ["k1", "k2"]
    assert retire_candidates([], "new", present) == []
    assert retire_candidates(["k1"], None, present) == ["k1"]
