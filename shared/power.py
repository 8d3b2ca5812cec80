"""Stopped clusters in the scan: AKS refuses a reset while a cluster is stopped, so a stopped cluster whose secret
comes due cannot be rotated until someone starts it. The scan marks them (`Finding.stopped`, from Resource Graph's
`properties.powerState.code`); every view says what to do and by when, and counts them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol


class PoweredFinding(Protocol):
    """The fields of a `discovery.Finding` these rules read."""

    @property
    def cluster_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def expires_on(self) -> datetime | None: ...


def stopped_advice(finding: PoweredFinding) -> str | None:
    """What to do about a credential of a stopped cluster (None: the cluster runs, or nothing of it expires)."""
    if not finding.stopped or finding.kind == "managed_identity":
        return None
    when = f"{finding.expires_on:%Y-%m-%d %H:%M} UTC" if finding.expires_on else "its credential expires"
    return f"cluster is stopped: start it before {when}, or rotation will fail"


def stopped_clusters(findings: Iterable[PoweredFinding]) -> int:
    """Stopped clusters with a credential the product watches."""
    return len({f.cluster_id.lower() for f in findings if stopped_advice(f) is not None})
