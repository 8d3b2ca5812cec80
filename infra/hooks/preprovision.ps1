# Recover the environment's soft-deleted Key Vault (after `azd down`) instead of failing on its name.
$mode = 'default'
if ($env:KEY_VAULT_NAME) {
  if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Write-Warning "az not found: if $($env:KEY_VAULT_NAME) is soft-deleted, run 'azd env set KEY_VAULT_CREATE_MODE recover' and provision again"
    exit 0
  }
  az keyvault show-deleted --name $env:KEY_VAULT_NAME --only-show-errors *> $null
  if ($LASTEXITCODE -eq 0) {
    Write-Host "Key Vault $($env:KEY_VAULT_NAME) is soft-deleted: recovering it"
    $mode = 'recover'
  }
}
azd env set KEY_VAULT_CREATE_MODE $mode
