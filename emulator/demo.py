"""`make demo`: the product's whole pipeline once, against Azurite and the emulator seeded with a small estate.

Starts both, runs `aks-rotator run --once` (the same functions the Functions triggers call), prints the estate's
credentials before and after as the emulator sees them (hashes and key ids, never values), and stops everything
it started, also on Ctrl-C or failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from emulator.sandbox import LocalAzure

WIDTH = 150
REPORT = Path(".run/report.html")
console = Console(highlight=False, width=WIDTH)

DEMO_SETTINGS = {
    # The product's own waits, shrunk so the demo finishes in seconds (defaults are minutes to a day).
    "PROOF_SUCCESSES": "3",
    "PROOF_SPACING_SECONDS": "0.2",
    "REQUEUE_DELAY_SECONDS": "1",
    "LRO_POLL_SECONDS": "1",
    "RETIRE_GRACE_SECONDS": "2",
    "FOREIGN_SIGNIN_QUIET_DAYS": "0",  # the sign-in report (the estate grants AuditLog.Read.All) is the evidence
    "LOG_LEVEL": "WARNING",
}


def _days_left(end: str, now: str) -> str:
    delta = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(now.replace("Z", "+00:00"))
    return f"{delta.total_seconds() / 86400:.1f}"


def estate_table(title: str, truth: dict[str, Any]) -> Table:
    apps = {a["appId"]: a for a in truth["applications"]}
    table = Table(title=title)
    for column in ("cluster", "app", "held key", "held valid", "days left", "passwords", "outage s"):
        table.add_column(column)
    for cluster in truth["clusters"]:
        app = apps.get(cluster["clientId"])
        passwords = (app["passwordCredentials"] + app["servicePrincipal"]["passwordCredentials"]) if app else []
        held = next((p for p in passwords if p["keyId"] == cluster["heldKeyId"]), None)
        table.add_row(
            cluster["id"].rsplit("/", 1)[-1],
            app["displayName"] if app else "managed identity",
            (cluster["heldKeyId"] or "-")[:8],
            str(cluster["heldValid"]) if cluster["heldValid"] is not None else "-",
            _days_left(held["end"], truth["now"]) if held else "-",
            str(len(passwords)),
            str(cluster["outage_seconds"]),
        )
    return table


def main() -> int:
    cli = shutil.which("aks-rotator", path=os.path.dirname(sys.executable)) or "aks-rotator"
    started = time.monotonic()
    with LocalAzure() as azure:
        env = {**os.environ, "COLUMNS": str(WIDTH), **azure.settings_env(**DEMO_SETTINGS)}
        console.rule("Estate before (as the emulated Entra ID and AKS see it)")
        console.print(estate_table("before", azure.control.state()))
        console.rule("aks-rotator run --once --wait 60")
        result = subprocess.run([cli, "run", "--once", "--wait", "60"], env=env, check=False)
        console.rule("Estate after")
        console.print(estate_table("after", azure.control.state()))
        console.rule("Audit (aks-rotator status --audit --all)")
        subprocess.run([cli, "status", "--audit", "--all"], env=env, check=False)
        console.rule(f"Expiry report (aks-rotator report --html {REPORT})")
        REPORT.parent.mkdir(exist_ok=True)
        subprocess.run([cli, "report", "--html", str(REPORT)], env=env, check=False)
    console.print(f"demo finished in {time.monotonic() - started:.1f} s; Azurite and the emulator are stopped")
    console.print(f"expiry report: {REPORT.resolve()}")
    return 0 if result.returncode in (0, 3) else result.returncode


if __name__ == "__main__":
    sys.exit(main())
