"""Summary-first CLI at estate scale: `scan`, `run` and `status` open with a summary panel and list only the rows
that need attention (`--all`: every row); advice shared by many rows is printed once; log lines are JSON unless a
person watches stderr (a terminal), and never human-readable under the Functions host."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import console, logs
from shared.store import RotationRecord
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env
from tests.test_cli import CLI

ROW = re.compile(r"^│ (aks-\d{5}) ")


def _env(emulator: EmulatorControl, azurite: Azurite, names: StorageNames, **overrides: str) -> dict[str, str]:
    env = product_env(emulator, azurite, names, **overrides)
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}, "COLUMNS": "200", **env}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def _attention(finding: dict[str, Any]) -> bool:
    """The issue's definition, restated from the JSON: due, report-only, or already expired."""
    days = finding["days_left"]
    return bool(finding["due"]) or finding["action"] == "report_only" or (days is not None and days <= 0)


def _count(text: str, label: str) -> int:
    match = re.search(r"([\d,]+) " + re.escape(label) + r"\b", text)
    assert match, f"{label!r} not in the summary panel"
    return int(match.group(1).replace(",", ""))


def seed_rows(env: dict[str, str], states: list[tuple[str, str, timedelta]]) -> list[RotationRecord]:
    """Rotation rows in the real state table, written as the store writes them (`to_entity`) but with their age:
    (cluster name, state, time since the last change)."""
    now = datetime.now(UTC)
    service = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    table = service.create_table_if_not_exists(env["STATE_TABLE"])
    records = []
    for name, state, age in states:
        record = RotationRecord(
            rotation_id=uuid.uuid4().hex,
            cluster_id=f"/subscriptions/{uuid.UUID(int=0)}/resourceGroups/rg/providers/"
            f"Microsoft.ContainerService/managedClusters/{name}",
            kind="sp_secret",
            state=state,  # type: ignore[arg-type]
            step="apply" if state == "failed" else "retire",
            failure_reason="apply: ARM answered 403 AuthorizationFailed" if state == "failed" else None,
            created_at=now - age - timedelta(minutes=10),
            updated_at=now - age,
        )
        table.upsert_entity(record.to_entity())
        records.append(record)
    return records


def test_2000_cluster_scan_prints_a_summary_and_only_the_attention_rows(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    emulator.reset(seeds.generate(clusters=2000, subscriptions=20, seed=7))
    env = _env(emulator, azurite, storage_names, LOG_LEVEL="INFO")

    as_json = _cli(env, "scan", "--dry-run", "--json")
    assert as_json.returncode == 3, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["schema_version"] == 1 and data["clusters"] == 2000
    findings = data["findings"]
    wanted = Counter(f["cluster_name"] for f in findings if _attention(f))
    assert 0 < sum(wanted.values()) < len(findings) / 5

    text = _cli(env, "scan", "--dry-run")
    assert text.returncode == 3, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("╭─ aks-rotator scan (dry run)")
    panel = "\n".join(lines[: lines.index(next(line for line in lines if line.startswith("╰")))])
    assert "2,000 in 20 subscriptions" in panel
    actions = data["actions"]
    assert _count(panel, "due") == data["due"] > 0
    assert _count(panel, "would queue") == actions.get("would_queue", 0) == 50  # MAX_ROTATIONS_PER_RUN
    assert _count(panel, "deferred") == actions.get("deferred", 0) > 0
    assert _count(panel, "report-only") == actions.get("report_only", 0) > 0
    assert _count(panel, "opted out") == actions.get("opted_out", 0)
    listed = Counter(m.group(1) for line in lines if (m := ROW.match(line)))
    assert listed == wanted  # exactly the rows that need attention, nothing healthy
    assert len(lines) < sum(wanted.values()) + 40  # was one line per finding (2,000+) before
    migrate = sum(1 for f in findings if f["advice"] == "migrate to managed identity")
    assert text.stdout.count("managed identity") == 1 and f"{migrate:,} clusters could move" in text.stdout
    assert text.stdout.count("blast radius") == 1  # the deferred rows' shared detail, once

    # stderr is a pipe here: log lines stay JSON, one object per line.
    records = [json.loads(line) for line in text.stderr.splitlines() if line.strip()]
    assert any(r.get("event") == "discovery.completed" for r in records)

    everything = _cli(env, "scan", "--dry-run", "--all")
    every = Counter(m.group(1) for line in everything.stdout.splitlines() if (m := ROW.match(line)))
    assert every == Counter(f["cluster_name"] for f in findings)


def test_status_lists_failed_and_in_flight_rotations_unless_all(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    env = _env(emulator, azurite, storage_names, LOG_LEVEL="WARNING")
    day = timedelta(days=1)
    seed_rows(env, [("aks-00001", "succeeded", day), ("aks-00002", "succeeded", day)])
    seed_rows(env, [("aks-00003", "failed", 2 * day), ("aks-00004", "waiting", timedelta(minutes=5))])

    default = _cli(env, "status")
    assert default.returncode == 0, default.stderr
    assert default.stdout.startswith("╭─ aks-rotator status")
    assert re.search(r"4 on 4 clusters", default.stdout)
    assert _count(default.stdout, "succeeded") == 2 and _count(default.stdout, "failed") == 1
    shown = {m.group(1) for line in default.stdout.splitlines() if (m := re.search(r"│ (aks-\d{5}) ", line))}
    assert shown == {"aks-00003", "aks-00004"}

    everything = _cli(env, "status", "--all")
    shown = {m.group(1) for line in everything.stdout.splitlines() if (m := re.search(r"│ (aks-\d{5}) ", line))}
    assert shown == {"aks-00001", "aks-00002", "aks-00003", "aks-00004"}
    assert len(json.loads(_cli(env, "status", "--json").stdout)) == 4  # JSON: every row, as before


def _run_on_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in a person's shell); returns (exit code, stderr)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=slave, timeout=120, check=False)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_log_lines_are_human_readable_on_a_terminal_and_json_under_the_functions_host(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    env = _env(emulator, azurite, storage_names, LOG_LEVEL="INFO")
    code, terminal = _run_on_terminal(env, "scan", "--dry-run")
    assert code == 3
    line = next(line for line in terminal.splitlines() if "discovery.completed" in line)
    assert not line.lstrip().startswith("{") and "scanned 5 clusters in 3 subscriptions" in line
    assert "clusters=5" in line
    assert "━" in terminal  # the progress bar was drawn on stderr while the scan ran

    code, hosted = _run_on_terminal({**env, "FUNCTIONS_WORKER_DIRECTORY": "/home/site/wwwroot"}, "scan", "--dry-run")
    assert code == 3
    line = next(line for line in hosted.splitlines() if "discovery.completed" in line)
    assert json.loads(line[line.index("{") :])["event"] == "discovery.completed"
    assert "━" not in hosted  # no progress bar either
    assert [c for c in emulator.canaries() if c in terminal + hosted] == []


def test_console_formatter_redacts_and_keeps_fields() -> None:
    secret = "console-canary-" + uuid.uuid4().hex
    logs.register_secret(secret)
    try:
        record = logging.LogRecord("shared.rotation", logging.ERROR, __file__, 1, "boom %s", (secret,), None)
        record.event, record.alert, record.rotation_id = "rotation.failed", True, "abc123"
        line = console.ConsoleFormatter(color=False).format(record)
    finally:
        logs.clear_secrets()
    assert secret not in line
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR   rotation\.failed  boom \*\*\*  rotation_id=abc123", line)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, True),
        ({"FUNCTIONS_WORKER_DIRECTORY": "/home/site/wwwroot"}, False),
        ({"FUNCTIONS_EXTENSION_VERSION": "~4"}, False),
    ],
)
def test_console_lines_only_for_a_terminal_outside_the_functions_host(environ: dict[str, str], expected: bool) -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal, open(os.devnull, "w") as pipe:
            assert console.wants_console(terminal, environ) is expected
            assert console.wants_console(pipe, environ) is False
    finally:
        os.close(master)
        os.close(slave)
