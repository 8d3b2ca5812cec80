#!/bin/sh
# Delete the environment's custom role definitions (their resource-scoped assignments went with the resource group).
set -u
command -v az >/dev/null 2>&1 || { echo "az not found: delete the role definitions by hand (docs/operations.md)" >&2; exit 0; }
for role in ${ROTATOR_ROLE_GUIDS:-}; do
  az role definition delete --name "$role" --scope "/subscriptions/${AZURE_SUBSCRIPTION_ID:-}" --only-show-errors || true
done
