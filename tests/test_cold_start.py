"""Cold start: importing function_app (what a cold Functions instance does) loads no storage, management or
Graph SDK; each trigger imports its `shared/` module when it first runs (bench/cold_start.py measures the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "msgraph",
    "azure.storage.blob",
    "azure.storage.queue",
    "azure.data.tables",
    "azure.mgmt.containerservice",
    "azure.mgmt.resourcegraph",
    "azure.keyvault.secrets",
    "azure.identity",
)


def test_importing_function_app_loads_no_sdk_client() -> None:
    code = "import json, sys, function_app; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert "function_app" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []
