# `azd down` deletes the resource group, not what lives at subscription scope: remove the custom roles'
# assignments while the identity still exists (postdown.ps1 then deletes the definitions).
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Write-Warning "az not found: remove the role assignments by hand (docs/operations.md)"; exit 0 }
foreach ($sub in "$env:ROTATION_SCOPE_SUBSCRIPTIONS".Split(' ', [StringSplitOptions]::RemoveEmptyEntries)) {
  foreach ($role in "$env:ROTATOR_ROLE_GUIDS".Split(' ', [StringSplitOptions]::RemoveEmptyEntries)) {
    az role assignment delete --assignee $env:ROTATOR_IDENTITY_PRINCIPAL_ID --role $role --scope "/subscriptions/$sub" --only-show-errors
  }
}
