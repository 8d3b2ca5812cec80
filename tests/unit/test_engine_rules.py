"""Pure rules of issue 11 items 7-9: what is transient, which rows a new submit replaces, the retire deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.aks import AksError
from shared.graph import GraphError
from shared.messages import CredentialKind
from shared.record import Phase, RotationRecord, RotationState
from shared.rotation.finish import retire_deadline
from shared.rotation.machine import transient
from shared.rotation.phases import PHASES, waits_out_trouble
from shared.store import claim_key
from shared.vault import VaultError, VaultForbidden

CLUSTER = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/a"  # noqa: E501


def row(**fields: object) -> RotationRecord:
    return RotationRecord(rotation_id="r" * 32, cluster_id=CLUSTER, kind=CredentialKind.SP_SECRET, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (VaultError("throttled", 429), True),
        (GraphError("unavailable", 503), True),
        (AksError("timeout", 408), True),
        (AksError("no status"), True),
        (ServiceRequestError("connection lost"), True),
        (VaultForbidden("forbidden", 403), False),
        (AksError("bad request", 400), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient(error: Exception, expected: bool) -> None:
    assert transient(error) is expected


def test_only_phases_after_the_switch_wait_out_trouble() -> None:
    assert {phase for phase, spec in PHASES.items() if spec.waits_out_trouble} == {Phase.FINISH, Phase.RETIRE}
    assert waits_out_trouble(row(phase=Phase.RETIRE)) and not waits_out_trouble(row(phase=Phase.VERIFY))


@pytest.mark.parametrize(
    ("state", "phase", "expected"),
    [
        (RotationState.FAILED, Phase.CLEANUP, True),
        (RotationState.SUCCEEDED, Phase.SKIPPED, True),
        (RotationState.SUCCEEDED, Phase.DONE, False),
        (RotationState.RUNNING, Phase.APPLY, False),
    ],
)
def test_resubmittable(state: RotationState, phase: Phase, expected: bool) -> None:
    assert row(state=state, phase=phase).resubmittable is expected


def test_retire_deadline_is_the_rotations_own_bound() -> None:
    expiry = datetime(2030, 1, 10, tzinfo=UTC)
    assert retire_deadline(row(observed_expiry=expiry), 3) == expiry - timedelta(days=3)
    created = datetime(2030, 1, 1, tzinfo=UTC)
    assert retire_deadline(row(created_at=created), 3) == created + timedelta(days=7)


def test_claim_key_is_a_valid_table_key_per_cluster_and_kind() -> None:
    key = claim_key(CLUSTER, "sp_secret")
    assert "/" not in key and key == claim_key(CLUSTER.upper(), "sp_secret") != claim_key(
        CLUSTER, "cluster_certificate"
    )
