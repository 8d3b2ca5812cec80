"""Scale: 4 worker processes (`aks-rotator worker`) share one queue of 500+ due clusters; each is rotated once."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import discovery, rotation
from shared.rotation import DISPLAY_NAME_PREFIX
from shared.settings import Settings
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

CLI = shutil.which("aks-rotator", path=str(Path(sys.executable).parent)) or "aks-rotator"
WORKERS = 4


def _all_due(doc: dict[str, Any]) -> dict[str, Any]:
    for app in doc["applications"]:
        for password in app.get("password_credentials", []) + app.get("service_principal", {}).get(
            "password_credentials", []
        ):
            password["expires_in_days"] = 10
    doc["lro"] = {"base_seconds": 1, "per_node_seconds": 0.2}
    return doc


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_four_workers_rotate_every_due_cluster_exactly_once(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    emulator.reset(_all_due(seeds.generate(clusters=580, subscriptions=8, seed=11)))
    env = product_env(
        emulator,
        azurite,
        storage_names,
        URGENT_DAYS="15",
        THRESHOLD_DAYS="30",
        MAX_ROTATIONS_PER_RUN="1000",
        PROOF_SUCCESSES="1",
        PROOF_SPACING_SECONDS="0",
        REQUEUE_DELAY_SECONDS="1",
        LRO_POLL_SECONDS="1",
        RETIRE_GRACE_SECONDS="0",
        LOG_LEVEL="WARNING",
    )
    settings = Settings.from_env(env)
    before = {c["id"]: c["heldKeyId"] for c in emulator.state()["clusters"] if c["clientId"] != "msi"}
    report = asyncio.run(discovery.scan(settings))
    queued = [f for f in report.findings if f.action == "queued" and f.kind == "sp_secret"]
    assert len(queued) >= 500

    process_env = {**{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}, **env}
    workers = [
        subprocess.Popen(
            [CLI, "worker", "--wait", "400", "--json"], env=process_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(WORKERS)
    ]
    try:
        results = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert [w.returncode for w in workers] == [0] * WORKERS, [r[1][-2000:] for r in results]

    views = asyncio.run(rotation.status(settings))
    assert len(views) == len(queued)
    assert Counter(v.state for v in views) == {"succeeded": len(queued)}
    assert len({v.cluster_id.lower() for v in views}) == len(queued)  # one rotation per cluster

    state = emulator.state()
    for cluster in state["clusters"]:
        assert cluster["outage_seconds"] == 0
        if cluster["id"] in before:
            assert cluster["heldKeyId"] != before[cluster["id"]] and cluster["heldValid"]
    created = [
        p
        for app in state["applications"]
        for p in app["passwordCredentials"] + app["servicePrincipal"]["passwordCredentials"]
        if (p["displayName"] or "").startswith(DISPLAY_NAME_PREFIX)
    ]
    assert len(created) == len(queued)  # no duplicate addPassword anywhere
