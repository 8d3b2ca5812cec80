"""Sign-in activity per credential keyId, as Entra records it (served by `emulator.graph_reports`).

Recorded by the token endpoint (every client-credentials token issued for a password) and for clusters: a cluster's
control plane and kubelets sign in with the secret they hold for as long as they run on it, so a running cluster's
held key has signed in "now", and the moment a component stops holding a key (a reset) or the cluster stops is
recorded. Only the estate's `signins` map is state; `last_signins` adds the running clusters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator.model import Estate
    from emulator.records import Cluster


def record(estate: Estate, key_id: str | None, at: float) -> None:
    """A successful sign-in with the credential `key_id` at emulator time `at`."""
    if key_id:
        key = key_id.lower()
        estate.signins[key] = max(estate.signins.get(key, at), at)


def record_cluster(estate: Estate, cluster: Cluster, at: float) -> None:
    """The cluster's components signed in with what they hold up to `at` (called before they stop holding it)."""
    if cluster.power_state != "Running":
        return
    for _, holding in cluster.holdings():
        if estate.hash_valid(cluster.client_id, holding.hash):
            record(estate, holding.key_id, at)


def last_signins(estate: Estate) -> dict[str, float]:
    """keyId (lower case) -> emulator time of the last sign-in, running clusters signing in now."""
    now = estate.clock.timestamp()
    out = dict(estate.signins)
    for cluster in estate.clusters.values():
        if cluster.power_state != "Running":
            continue
        for _, holding in cluster.holdings():
            if holding.key_id and estate.hash_valid(cluster.client_id, holding.hash):
                out[holding.key_id.lower()] = now
    return out
