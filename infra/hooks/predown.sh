#!/bin/sh
# `azd down` deletes the resource group, not what lives at subscription scope: remove the custom roles'
# assignments while the identity still exists (postdown.sh then deletes the definitions).
set -u
command -v az >/dev/null 2>&1 || { echo "az not found: remove the role assignments by hand (docs/operations.md)" >&2; exit 0; }
for sub in ${ROTATION_SCOPE_SUBSCRIPTIONS:-}; do
  for role in ${ROTATOR_ROLE_GUIDS:-}; do
    az role assignment delete --assignee "${ROTATOR_IDENTITY_PRINCIPAL_ID:-}" --role "$role" \
      --scope "/subscriptions/$sub" --only-show-errors || true
  done
done
