#!/bin/sh
# Wait until the app identity's Storage Blob Data Owner assignment is RBAC_SETTLE_SECONDS old (default 300): the
# platform writes the deployment package with it, and a fresh assignment can take minutes to reach the data plane
# (Learn "Troubleshoot Azure RBAC": role assignment changes can take up to 10 minutes; azure-dev #8026).
set -eu
settle="${RBAC_SETTLE_SECONDS:-300}"
if ! command -v az >/dev/null 2>&1; then
  echo "az not found: if the deploy fails with 403/400 on the package upload, run 'azd deploy' again in a few minutes" >&2
  exit 0
fi
created=$(az role assignment list --assignee "$ROTATOR_IDENTITY_PRINCIPAL_ID" --scope "$AZURE_STORAGE_ACCOUNT_ID" \
  --role b7e6dc6d-f1e8-4753-8033-0f276bb0955b --query "[0].createdOn" -o tsv --only-show-errors 2>/dev/null || true)
if [ -z "$created" ]; then
  echo "no Storage Blob Data Owner assignment for the app identity yet: waiting ${settle}s" >&2
  sleep "$settle"
  exit 0
fi
then_s=$(date -d "$created" +%s 2>/dev/null || echo 0)
age=$(( $(date +%s) - then_s ))
if [ "$then_s" -eq 0 ]; then
  wait_s=$settle
elif [ "$age" -lt "$settle" ]; then
  wait_s=$(( settle - age ))
else
  wait_s=0
fi
if [ "$wait_s" -gt 0 ]; then
  echo "the app identity's storage role is ${age}s old: waiting ${wait_s}s for it to propagate"
  sleep "$wait_s"
fi
