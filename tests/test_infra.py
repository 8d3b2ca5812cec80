"""Static checks of the azd project (azure.yaml, infra/): every Bicep file parses, the app settings the Function App
gets are exactly settings the product reads (or Functions platform settings), the security-relevant properties are
set, the custom role has no wildcard, the alert contract matches docs/operations.md, and checkov passes.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from shared.logs import ALERT_EVENTS
from shared.settings import Settings, setting_names

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
APP = INFRA / "app"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

# Settings the Functions host (not the product) reads; anything else api.bicep sets must be in setting_names().
PLATFORM_SETTINGS = frozenset(
    {
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    }
)
REQUIRED_SETTINGS = frozenset(
    {"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "KEY_VAULT_URL", "AzureWebJobsStorage__accountName", "ROTATION_QUEUE"}
)


@functools.cache
def bicep(relative: str) -> dict[str, Any]:
    parsed: dict[str, Any] = dict(BicepParser().parse(file_path=INFRA / relative))
    return parsed


def resource(relative: str, name: str) -> dict[str, Any]:
    """The properties block of a (non-loop) resource, by symbolic name."""
    config: dict[str, Any] = bicep(relative)["resources"][name]["config"]
    inner: dict[str, Any] = config.get("config", config)
    return inner


def test_there_is_infra() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    expected = {"main.bicep"} | {
        f"app/{m}.bicep"
        for m in ("api", "rbac", "storage", "keyvault", "eventgrid", "monitoring", "alerts", "customrole")
    }
    assert expected <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_parses(path: Path) -> None:
    parsed = bicep(path.relative_to(INFRA).as_posix())
    assert parsed.get("resources"), f"{path} declares no resources"


def test_app_settings_are_known_and_complete() -> None:
    site = resource("app/api.bicep", "site")
    assert site["properties"]["siteConfig"]["appSettings"] == "appSettings", "site must use var appSettings"
    entries = bicep("app/api.bicep")["variables"]["appSettings"]["value"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), "duplicate app setting"
    unknown = set(names) - set(setting_names()) - PLATFORM_SETTINGS
    assert not unknown, f"api.bicep sets settings the product does not read: {sorted(unknown)}"
    missing = REQUIRED_SETTINGS - set(names)
    assert not missing, f"api.bicep does not set {sorted(missing)}"
    assert not {"FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME"} & set(names), "not allowed on Flex"
    # The host resolves %NAME% in trigger bindings from app settings, not from the product's defaults.
    bound = set(re.findall(r"%([A-Za-z0-9_]+)%", (ROOT / "function_app.py").read_text()))
    assert bound <= set(names), f"function_app.py binds {sorted(bound - set(names))}, which api.bicep does not set"


def test_storage_names_match_settings_defaults() -> None:
    names = bicep("main.bicep")["variables"]["storageNames"]["value"]
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert names["queue"] == defaults["rotation_queue"]
    assert names["poisonQueue"] == f"{defaults['rotation_queue']}-poison"
    assert names["stateTable"] == defaults["state_table"]
    assert names["auditTable"] == defaults["audit_table"]
    assert names["lockContainer"] == defaults["lock_container"]


def test_azure_yaml() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert config["infra"]["path"] == "infra"
    api = config["services"]["api"]
    assert (api["project"], api["language"], api["host"]) == (".", "python", "function")


def test_main_parameters_exist_in_main_bicep() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = bicep("main.bicep")["parameters"]
    assert set(parameters) <= set(declared), f"unknown parameters: {sorted(set(parameters) - set(declared))}"
    without_default = {name for name, spec in declared.items() if "default" not in spec}
    assert without_default <= set(parameters), f"no value for {sorted(without_default - set(parameters))}"
    assert bicep("main.bicep")["globals"]["scope"]["value"] == "subscription"


def test_storage_is_identity_only() -> None:
    props = resource("app/storage.bicep", "account")["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"


def test_key_vault_is_rbac_with_purge_protection() -> None:
    props = resource("app/keyvault.bicep", "vault")["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True


def test_custom_role_actions() -> None:
    actions = json.loads((APP / "rotator-role-actions.json").read_text())
    assert actions and len(actions) == len(set(actions))
    assert not [a for a in actions if "*" in a], "wildcard action in the custom role"
    assert all(a.startswith(("Microsoft.ContainerService/", "Microsoft.Resources/")) for a in actions)
    loaded = bicep("app/customrole.bicep")["variables"]["actions"]["value"]["function"]
    assert (loaded["type"], loaded["parameters"]["file_path"]) == ("load_json_content", "rotator-role-actions.json")


def test_event_grid_subscription() -> None:
    props = resource("app/eventgrid.bicep", "toFunction")["properties"]
    assert props["destination"]["endpointType"] == "AzureFunction"
    assert props["destination"]["properties"]["resourceId"].endswith("/functions/keyvault_events")
    assert set(props["filter"]["includedEventTypes"]) == {
        "Microsoft.KeyVault.SecretNearExpiry",
        "Microsoft.KeyVault.SecretExpired",
    }


def test_alert_contract_matches_runbook() -> None:
    rules = bicep("app/alerts.bicep")["variables"]["rules"]["value"]
    assert {rule["event"] for rule in rules} == ALERT_EVENTS
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for event in ALERT_EVENTS:
        assert f"`{event}`" in runbook, f"docs/operations.md does not document {event}"


def test_checkov() -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} is missing: run `make install` (it creates .venv-checkov)")
    result = subprocess.run(
        [str(CHECKOV), "-d", "infra", "--framework", "bicep", "--compact", "--quiet", "--skip-download", "-o", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (rc={result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"].get("failed_checks", [])]
    assert result.returncode == 0 and not failed, "checkov findings:\n" + "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0, "checkov could not parse some Bicep files"
    assert report["summary"]["resource_count"] > 0
