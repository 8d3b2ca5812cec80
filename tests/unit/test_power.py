"""The stopped-cluster rules of the scan views (shared/power.py), table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from shared.power import stopped_advice, stopped_clusters

EXPIRY = datetime(2026, 12, 5, 6, 30, tzinfo=UTC)
ADVICE = "cluster is stopped: start it before 2026-12-05 06:30 UTC, or rotation will fail"


@dataclass(frozen=True)
class F:
    cluster_id: str
    kind: str = "sp_secret"
    stopped: bool = True
    expires_on: datetime | None = EXPIRY


@pytest.mark.parametrize(
    ("finding", "advice"),
    [
        (F("/a"), ADVICE),
        (F("/a", expires_on=None), "cluster is stopped: start it before its credential expires, or rotation will fail"),
        (F("/a", stopped=False), None),
        (F("/a", kind="managed_identity"), None),
        (F("/a", kind="cluster_certificate"), ADVICE),
    ],
)
def test_stopped_advice(finding: F, advice: str | None) -> None:
    assert stopped_advice(finding) == advice


def test_stopped_clusters_counts_each_cluster_once() -> None:
    findings = [F("/A"), F("/a", kind="cluster_certificate"), F("/b", stopped=False), F("/c", kind="managed_identity")]
    assert stopped_clusters(findings) == 1
