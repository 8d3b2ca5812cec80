"""The Azure Monitor workbook (infra/app/workbook.json, deployed by infra/app/workbook.bicep) queries only telemetry
the code emits: metric names from shared/telemetry.py, event names and record fields from the product's
`log_event` / `alert` calls, metric attribute keys from telemetry.py. Renaming any of them in the code without
updating the workbook fails here."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from shared.logs import ALERT_EVENTS

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"
WORKBOOK = ROOT / "infra" / "app" / "workbook.json"
METRIC_FACTORIES = {"create_histogram", "create_counter", "create_up_down_counter", "create_gauge"}
RECORD_FIELDS = {"event", "alert"}  # what log_event/alert add to every record (shared/logs.py)


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def emitted_metrics() -> tuple[set[str], set[str]]:
    """(metric names, attribute keys) the code records, read from shared/telemetry.py."""
    names, keys = set(), set()
    for call in _calls(SHARED / "telemetry.py"):
        if _name(call) in METRIC_FACTORIES and call.args and isinstance(call.args[0], ast.Constant):
            names.add(str(call.args[0].value))
        if _name(call) in ("record", "add"):
            for arg in call.args:
                if isinstance(arg, ast.Dict):
                    keys |= {str(k.value) for k in arg.keys if isinstance(k, ast.Constant)}
    return names, keys


def emitted_events() -> tuple[set[str], set[str]]:
    """(event names, record fields) of every log_event/alert call in shared/, plus logs.ALERT_EVENTS."""
    events, fields = set(ALERT_EVENTS), set(RECORD_FIELDS)
    for path in SHARED.rglob("*.py"):
        for call in _calls(path):
            position = {"log_event": 2, "alert": 1}.get(_name(call))
            if position is None:
                continue
            if len(call.args) > position and isinstance(call.args[position], ast.Constant):
                events.add(str(call.args[position].value))
            fields |= {kw.arg for kw in call.keywords if kw.arg}
    return events, fields


def queries() -> list[str]:
    doc = json.loads(WORKBOOK.read_text())
    return [item["content"]["query"] for item in doc["items"] if item["type"] == 3]


def unknown_names(query: str) -> list[str]:
    """Metric/event names and customDimensions keys in `query` that the code does not emit."""
    metrics, metric_keys = emitted_metrics()
    events, fields = emitted_events()
    problems = []
    if re.search(r"^\s*customMetrics\b", query):
        problems += [f"metric {n}" for n in re.findall(r'\bname == "([^"]+)"', query) if n not in metrics]
        allowed = metric_keys
    else:
        allowed = fields
    for clause in re.findall(r'(?:\bevent|customDimensions\["event"\]\)) *(?:==|in) *\(?("[^)\n]*)', query):
        problems += [f"event {e}" for e in re.findall(r'"([^"]+)"', clause) if e not in events]
    problems += [f"dimension {k}" for k in re.findall(r'customDimensions\["([^"]+)"\]', query) if k not in allowed]
    return problems


def test_the_code_emits_what_this_test_reads() -> None:
    metrics, keys = emitted_metrics()
    assert {"credential.days_to_expiry", "rotation.outcomes", "rotation.step.duration"} <= metrics
    assert {"cluster", "kind", "outcome", "step"} <= keys
    events, fields = emitted_events()
    assert {"rotation.failed", "discovery.completed"} <= events and {"cluster_id", "rotation_id"} <= fields


def test_workbook_queries_use_only_emitted_telemetry() -> None:
    found = queries()
    assert len(found) >= 5
    problems = {query.splitlines()[1]: unknown_names(query) for query in found}
    assert not any(problems.values()), problems


def test_workbook_covers_every_metric_and_alert() -> None:
    text = "\n".join(queries())
    metrics, _ = emitted_metrics()
    assert {m for m in metrics if f'"{m}"' not in text} == set()
    assert {e for e in ALERT_EVENTS if f'"{e}"' not in text} == set()


def test_a_renamed_metric_or_event_is_caught() -> None:
    """The check itself can fail: a query naming telemetry the code does not emit is reported."""
    assert unknown_names('customMetrics\n| where name == "credential.days_to_expiry_v2"') == [
        "metric credential.days_to_expiry_v2"
    ]
    assert unknown_names('traces\n| where tostring(customDimensions["event"]) == "rotation.broke"') == [
        "event rotation.broke"
    ]
    assert unknown_names('customMetrics\n| extend c = tostring(customDimensions["cluster_name"])') == [
        "dimension cluster_name"
    ]


def test_infra_deploys_the_workbook_from_this_json() -> None:
    bicep = (ROOT / "infra" / "app" / "workbook.bicep").read_text()
    assert "loadTextContent('workbook.json')" in bicep and "Microsoft.Insights/workbooks@" in bicep
    main = (ROOT / "infra" / "main.bicep").read_text()
    assert re.search(r"^module workbook 'app/workbook\.bicep' = \{", main, re.MULTILINE)
    assert "appInsightsId: monitoring.outputs.appInsightsId" in main.split("module workbook", 1)[1].split("\n}\n")[0]
