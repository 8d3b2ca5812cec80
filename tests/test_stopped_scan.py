"""A stopped cluster is reported by the scan (issue 11 item 3, discovery side): Resource Graph's
`properties.powerState.code` marks its findings, and `scan` (table and `--json`) and `report --html` say "start it
before <expiry>, or rotation will fail" and count the stopped clusters in the summary."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from tests.plugins.azurite import StorageNames
from tests.support.world import estate
from tests.test_cli_summary import _cli, _env


def test_stopped_clusters_are_reported_with_what_to_do_and_counted(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames, tmp_path: Path
) -> None:
    emulator.reset(
        estate(
            [
                {"name": "aks-runs", "days": 10},
                {"name": "aks-stopped-due", "days": 10},
                {"name": "aks-stopped-later", "days": 200},
                {"name": "aks-stopped-msi", "msi": True},
            ]
        )
    )
    for name in ("aks-stopped-due", "aks-stopped-later", "aks-stopped-msi"):
        emulator.world("stop", cluster=name)
    env = _env(emulator, azurite, storage_names)

    as_json = _cli(env, "scan", "--dry-run", "--json")
    assert as_json.returncode == 3, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["stopped"] == 2  # the managed-identity cluster has no credential to rotate
    by_name = {f["cluster_name"]: f for f in data["findings"] if f["kind"] == "sp_secret"}
    assert by_name["aks-runs"]["stopped"] is False and by_name["aks-runs"]["stopped_advice"] is None
    for name in ("aks-stopped-due", "aks-stopped-later"):
        finding = by_name[name]
        expiry = datetime.fromisoformat(finding["expires_on"])
        assert finding["stopped"] is True
        assert finding["stopped_advice"] == (
            f"cluster is stopped: start it before {expiry:%Y-%m-%d %H:%M} UTC, or rotation will fail"
        )

    text = _cli(env, "scan", "--dry-run")
    assert text.returncode == 3, text.stderr
    assert re.search(r"stopped\s+2 clusters \(start them before", text.stdout), text.stdout
    rows = [line for line in text.stdout.splitlines() if line.startswith("│ aks-")]
    assert {line.split()[1] for line in rows} == {"aks-runs", "aks-stopped-due", "aks-stopped-later"}
    assert sum("start it before" in line for line in rows) == 2  # the not-yet-due stopped one is listed too

    page = tmp_path / "report.html"
    html = _cli(env, "report", "--html", str(page))
    assert html.returncode == 0, html.stderr
    doc = page.read_text()
    assert re.search(r'data-metric="stopped"><b>2</b>', doc)
    assert 'id="stopped-count" data-count="2"' in doc
    assert doc.count("or rotation will fail") == 2 and "aks-stopped-msi" not in doc
