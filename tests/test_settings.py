"""Settings: every app setting typed and validated, errors naming the setting (never its value)."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError, setting_names

BASE = {
    "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "AZURE_CLIENT_ID": "5f0c1d2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f",
    "KEY_VAULT_URL": "https://rotator-kv.vault.azure.net/",
    "AzureWebJobsStorage__accountName": "rotatorstore",
}


def test_defaults_are_the_documented_ones() -> None:
    s = Settings.from_env(BASE)
    assert s.threshold_days == 30 and s.secret_lifetime_days == 180 and s.retire_grace_seconds == 86400
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.key_vault_url == "https://rotator-kv.vault.azure.net"  # trailing slash dropped
    assert s.poison_queue == "rotations-poison"
    assert s.client_secret is None  # managed identity in Azure


def test_lists_and_numbers_are_parsed() -> None:
    subs = "AAAAAAAA-0000-0000-0000-000000000001, bbbbbbbb-0000-0000-0000-000000000002"
    s = Settings.from_env(
        {**BASE, "SUBSCRIPTION_ALLOWLIST": subs, "THRESHOLD_DAYS": "45", "ROTATE_CERTIFICATES": "true"}
    )
    assert s.subscription_allowlist == (
        "aaaaaaaa-0000-0000-0000-000000000001",
        "bbbbbbbb-0000-0000-0000-000000000002",
    )
    assert s.threshold_days == 45 and s.rotate_certificates is True


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("AZURE_TENANT_ID", "contoso", "GUID"),
        ("THRESHOLD_DAYS", "0", "THRESHOLD_DAYS"),
        ("THRESHOLD_DAYS", "soon", "THRESHOLD_DAYS"),
        ("KEY_VAULT_URL", "http://kv.example", "https://"),
        ("ROTATION_SCHEDULE", "every day", "NCRONTAB"),
        ("MAINTENANCE_WINDOW", "weekends", "Sat,Sun"),
        ("SUBSCRIPTION_ALLOWLIST", "prod", "subscription id"),
        ("STATE_TABLE", "rotation-state", "letters and digits"),
        ("AZURE_CA_BUNDLE", "/nonexistent/ca.pem", "does not exist"),
        ("SECRET_LIFETIME_DAYS", "1000", "SECRET_LIFETIME_DAYS"),
        ("LOG_LEVEL", "chatty", "LOG_LEVEL"),
        ("AZURE_CLIENT_ID", "5f0c1d2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f\n", "GUID"),
        ("VAULT_ALLOWLIST", "rotator-kv,../etc", "Key Vault name"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, name: value})
    assert name in str(caught.value) and fragment in str(caught.value)


def test_missing_required_settings_are_all_named() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({})
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "KEY_VAULT_URL"):
        assert name in str(caught.value)


def test_storage_must_be_configured_one_way_or_another() -> None:
    env = {k: v for k, v in BASE.items() if not k.startswith("AzureWebJobsStorage")}
    with pytest.raises(SettingsError, match="AzureWebJobsStorage"):
        Settings.from_env(env)


def test_urgent_must_be_below_threshold() -> None:
    with pytest.raises(SettingsError, match="URGENT_DAYS"):
        Settings.from_env({**BASE, "URGENT_DAYS": "30"})


def test_secret_values_never_appear_in_errors() -> None:
    canary = "canary-secret-Zq8~value-that-must-not-leak"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "AZURE_CLIENT_SECRET": canary, "THRESHOLD_DAYS": "x"})
    assert canary not in str(caught.value)
    ok = Settings.from_env({**BASE, "AZURE_CLIENT_SECRET": canary})
    assert canary not in repr(ok) and canary not in str(ok.model_dump())


def test_setting_names_are_the_aliases() -> None:
    names = setting_names()
    assert "AZURE_CLIENT_ID" in names and "AzureWebJobsStorage" in names and "ROTATION_SCHEDULE" in names
    assert len(names) == len(set(names)) == len(Settings.model_fields)


def test_readme_settings_table_lists_exactly_the_settings() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z_]+)` \|", section, flags=re.MULTILINE))
    assert documented == set(setting_names())
