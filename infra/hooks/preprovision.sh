#!/bin/sh
# Recover the environment's soft-deleted Key Vault (after `azd down`) instead of failing on its name.
set -eu
mode=default
if [ -n "${KEY_VAULT_NAME:-}" ]; then
  if ! command -v az >/dev/null 2>&1; then
    echo "az not found: if $KEY_VAULT_NAME is soft-deleted, run 'azd env set KEY_VAULT_CREATE_MODE recover' and provision again" >&2
    exit 0
  fi
  if az keyvault show-deleted --name "$KEY_VAULT_NAME" --only-show-errors >/dev/null 2>&1; then
    echo "Key Vault $KEY_VAULT_NAME is soft-deleted: recovering it"
    mode=recover
  fi
fi
azd env set KEY_VAULT_CREATE_MODE "$mode"
