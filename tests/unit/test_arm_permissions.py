"""ARM permission matching (`shared.aks.effective_actions`): wildcards, notActions, case."""

from __future__ import annotations

from shared.aks import effective_actions

RESET_ACTION = "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action"


def test_effective_actions_wildcards_and_not_actions() -> None:
    wanted = ["Microsoft.ContainerService/managedClusters/read", RESET_ACTION, "Microsoft.Resources/subscriptions/read"]
    blocks = [
        {"actions": ["Microsoft.ContainerService/*"], "notActions": ["*/resetServicePrincipalProfile/action"]},
        {"actions": ["*/read"], "notActions": []},
    ]
    assert effective_actions(blocks, wanted) == {wanted[0], wanted[2]}
    blocks.append({"actions": ["microsoft.containerservice/managedclusters/*"]})  # ARM matching ignores case
    assert effective_actions(blocks, wanted) == set(wanted)
    assert effective_actions([{"actions": ["*"], "notActions": ["*"]}], wanted) == set()
