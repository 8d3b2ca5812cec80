# Delete the environment's custom role definitions (their resource-scoped assignments went with the resource group).
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Write-Warning "az not found: delete the role definitions by hand (docs/operations.md)"; exit 0 }
foreach ($role in "$env:ROTATOR_ROLE_GUIDS".Split(' ', [StringSplitOptions]::RemoveEmptyEntries)) {
  az role definition delete --name $role --scope "/subscriptions/$env:AZURE_SUBSCRIPTION_ID" --only-show-errors
}
