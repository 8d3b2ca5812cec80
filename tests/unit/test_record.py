"""The typed rotation row: legacy packed steps convert on read; the phase table covers every phase."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from azure.data.tables import TableEntity

from shared.messages import CredentialKind
from shared.record import Phase, RotationRecord, RotationState, unpack_step
from shared.rotation.machine import HANDLERS
from shared.rotation.phases import PHASES, failure_may_clean_up, poison_may_clean_up

T0 = datetime.fromtimestamp(1700000000, tz=UTC)


@pytest.mark.parametrize(
    ("packed", "fields"),
    [
        ("start", {"phase": Phase.START}),
        ("create", {"phase": Phase.CREATE}),
        ("store", {"phase": Phase.STORE}),
        ("prove:3:1700000000", {"phase": Phase.PROVE, "proof_count": 3, "proof_started": T0}),
        ("prove", {"phase": Phase.PROVE, "proof_count": 0, "proof_started": None}),
        ("apply:1700000000", {"phase": Phase.APPLY, "proof_started": T0}),
        (
            "applying:1700000000:2",
            {"phase": Phase.APPLY, "proof_started": T0, "apply_tries": 2, "reset_unanswered": True},
        ),
        ("verify", {"phase": Phase.VERIFY, "reset_unanswered": False}),
        ("verify:uncertain", {"phase": Phase.VERIFY, "reset_unanswered": True}),
        ("finish", {"phase": Phase.FINISH}),
        ("retire", {"phase": Phase.RETIRE}),
        ("cleanup:prove", {"phase": Phase.CLEANUP, "failed_phase": Phase.PROVE}),
        ("cleanup:applying", {"phase": Phase.CLEANUP, "failed_phase": Phase.APPLY}),
        ("done", {"phase": Phase.DONE}),
        ("skipped", {"phase": Phase.SKIPPED}),
    ],
)
def test_rows_of_the_previous_version_convert_on_read(packed: str, fields: dict[str, Any]) -> None:
    assert {k: v for k, v in unpack_step(packed).items() if k in fields} == fields
    entity = TableEntity(
        PartitionKey="rotation", RowKey="r1", cluster_id="c", kind="sp_secret", state="running", step=packed
    )
    record = RotationRecord.from_entity(entity)
    for name, value in fields.items():
        assert getattr(record, name) == value
    again = RotationRecord.from_entity(TableEntity(**record.to_entity()))
    assert again.model_dump(exclude={"etag"}) == record.model_dump(exclude={"etag"})


def test_entity_round_trip_is_typed() -> None:
    record = RotationRecord(
        rotation_id="r1", cluster_id="c", kind=CredentialKind.CLUSTER_CERTIFICATE, state=RotationState.WAITING
    )
    entity = record.to_entity()
    assert entity["kind"] == "cluster_certificate" and type(entity["kind"]) is str
    assert entity["phase"] == "start" and type(entity["state"]) is str and "step" not in entity
    read = RotationRecord.from_entity(TableEntity(**entity))
    assert read.kind is CredentialKind.CLUSTER_CERTIFICATE and read.state is RotationState.WAITING


def test_every_phase_has_a_meaning_and_every_live_phase_a_handler() -> None:
    assert set(PHASES) == set(Phase)
    assert set(HANDLERS) == {p for p in Phase if p not in (Phase.DONE, Phase.SKIPPED)}


@pytest.mark.parametrize(
    ("phase", "unanswered", "on_failure", "on_poison"),
    [
        (Phase.PROVE, False, True, True),
        (Phase.APPLY, False, True, True),
        (Phase.APPLY, True, True, False),  # the step itself forbids clean-up after an unanswered reset
        (Phase.VERIFY, False, True, False),  # a poisoned verify never saw the outcome of an accepted reset
        (Phase.FINISH, False, False, False),
        (Phase.RETIRE, False, False, False),
        (Phase.CLEANUP, False, True, True),
    ],
)
def test_clean_up_rules(phase: Phase, unanswered: bool, on_failure: bool, on_poison: bool) -> None:
    row = RotationRecord(
        rotation_id="r1", cluster_id="c", kind=CredentialKind.SP_SECRET, phase=phase, reset_unanswered=unanswered
    )
    assert failure_may_clean_up(row) is on_failure
    assert poison_may_clean_up(row) is on_poison
    certificate = row.model_copy(update={"kind": CredentialKind.CLUSTER_CERTIFICATE})
    assert failure_may_clean_up(certificate) is False  # nothing of a certificate rotation is ever removed
