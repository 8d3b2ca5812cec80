"""Migration's rights, listed apart from rotation's (`migrate --preflight`): per cluster, which of
`permissions.MIGRATION_ARM_ACTIONS` the caller holds there, and the command that grants the rest. Rotation's
preflight never requires them: the product's identity deliberately does not hold them."""

from __future__ import annotations

from collections.abc import Sequence

from azure.core.exceptions import AzureError

from shared.aks import AksError, effective_actions
from shared.migration.collect import Sources
from shared.permissions import MIGRATION_ARM_ACTIONS, Check

CHECK_MIGRATION = "migration-actions"


async def check_rights(src: Sources, cluster_ids: Sequence[str]) -> list[Check]:
    findings = []
    for cluster_id in cluster_ids:
        sub = "/".join(cluster_id.split("/")[:3])
        fix = (
            f"az role assignment create --assignee <administrator> --scope {sub} --role <a role with: "
            f"{', '.join(MIGRATION_ARM_ACTIONS)}>"
        )
        try:
            allowed = effective_actions(await src.aks.permissions(cluster_id), MIGRATION_ARM_ACTIONS)
        except (AksError, AzureError) as exc:
            findings.append(Check(cluster_id, CHECK_MIGRATION, False, f"cannot read permissions: {exc}", fix))
            continue
        missing = [a for a in MIGRATION_ARM_ACTIONS if a not in allowed]
        findings.append(Check(cluster_id, CHECK_MIGRATION, not missing, ", ".join(missing), fix if missing else ""))
    return findings
