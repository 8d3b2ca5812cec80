"""The product's Key Vault version tags, parsed once (`shared.vault.VersionTags`) and vault-name parsing."""

from __future__ import annotations

from shared.vault import MANAGED_BY, MANAGED_BY_TAG, TAG_VALUE_LIMIT, VersionState, VersionTags, vault_name

LONG_ID = (
    "/subscriptions/6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/resourcegroups/" + "rg-" + "x" * 87
    + "/providers/microsoft.containerservice/managedclusters/" + "c" * 63
)  # fmt: skip


def test_a_cluster_id_longer_than_a_tag_value_is_split_and_joined() -> None:
    assert len(LONG_ID) > TAG_VALUE_LIMIT
    tags = VersionTags(cluster_id=LONG_ID, app_id="a", key_id="k", rotation_id="r", state=VersionState.PENDING)
    written = tags.to_tags()
    assert all(len(value) <= TAG_VALUE_LIMIT for value in written.values())
    assert "cluster-id-1" in written
    read = VersionTags.parse({**written, MANAGED_BY_TAG: MANAGED_BY})
    assert read.cluster_id == LONG_ID and read.state is VersionState.PENDING and read.managed


def test_parse_is_lenient_and_typed() -> None:
    read = VersionTags.parse({"state": "weird", "app-id": "ABC", "key-id": "K1"})
    assert read.state is None and read.app_id == "abc" and read.key_id == "k1" and not read.managed
    assert VersionTags.parse(None) == VersionTags()
    ours = VersionTags.parse({MANAGED_BY_TAG: MANAGED_BY, "app-id": "abc", "key-id": "k", "state": "current"})
    assert ours.current_for("ABC") and not ours.current_for("other") and not ours.current_for(None)


def test_vault_name() -> None:
    assert vault_name("https://rotator-kv.vault.azure.net") == "rotator-kv"
    assert vault_name("https://Rotator-KV.vault.azure.net/") == "rotator-kv"
    assert vault_name("https://127.0.0.1:8443/kv/rotator-kv") == "rotator-kv"
