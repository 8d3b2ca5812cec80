"""The `aks-rotator` console script as an operator runs it: exit codes, JSON output, and no secret in any output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

CLI = shutil.which("aks-rotator", path=str(Path(sys.executable).parent)) or "aks-rotator"


@pytest.fixture
def cli_env(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> dict[str, str]:
    env = product_env(
        emulator,
        azurite,
        storage_names,
        PROOF_SUCCESSES="2",
        PROOF_SPACING_SECONDS="0",
        REQUEUE_DELAY_SECONDS="0",
        LRO_POLL_SECONDS="1",
        RETIRE_GRACE_SECONDS="1",
        LOG_LEVEL="DEBUG",  # the most talkative setting: still nothing secret
    )
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}, "COLUMNS": "200", **env}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=180, check=False)


def test_operator_session_exit_codes_json_and_no_secret_anywhere(
    cli_env: dict[str, str], emulator: EmulatorControl
) -> None:
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = _cli(cli_env, *args)
        outputs.extend((result.stdout, result.stderr))
        return result

    dry = run("scan", "--dry-run", "--json")
    assert dry.returncode == 3, dry.stderr  # credentials are due
    scan = json.loads(dry.stdout)
    actions = {f["cluster_name"]: f["action"] for f in scan["findings"] if f["kind"] == "sp_secret"}
    assert actions["aks-payments"] == "would_queue" and actions["aks-analytics"] == "ok"

    done = run("run", "--once", "--wait", "90", "--json")
    assert done.returncode == 0, done.stderr
    rotations = json.loads(done.stdout)["rotations"]
    assert sorted(r["state"] for r in rotations) == ["succeeded", "succeeded"]

    status = run("status", "--audit", "--json")
    trails = json.loads(status.stdout)
    assert all(any(a["step"] == "retire" for a in view["audit"]) for view in trails)

    again = run("scan", "--json")  # rotated secrets now live 180 days; only report-only items stay due
    after = json.loads(again.stdout)["findings"]
    assert {f["action"] for f in after if f["kind"] == "sp_secret"} == {"ok"}
    assert {f["action"] for f in after if f["due"]} == {"report_only"} and again.returncode == 3

    rejected = run("rotate", "--cluster", "/subscriptions/not-a-guid/resourceGroups/rg")
    assert rejected.returncode == 2 and "rejected" in rejected.stderr

    canaries = emulator.canaries()
    assert len(canaries) > 5
    text = "\n".join(outputs)
    assert [c for c in canaries if c in text] == []


def test_bad_settings_exit_2_naming_the_setting(cli_env: dict[str, str]) -> None:
    result = _cli({**cli_env, "THRESHOLD_DAYS": "soon"}, "scan")
    assert result.returncode == 2
    assert "THRESHOLD_DAYS" in result.stderr
    assert cli_env["AZURE_CLIENT_SECRET"] not in result.stderr + result.stdout
