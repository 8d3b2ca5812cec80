# Wait until the app identity's Storage Blob Data Owner assignment is RBAC_SETTLE_SECONDS old (default 300): the
# platform writes the deployment package with it, and a fresh assignment can take minutes to reach the data plane
# (Learn "Troubleshoot Azure RBAC": role assignment changes can take up to 10 minutes; azure-dev #8026).
$settle = if ($env:RBAC_SETTLE_SECONDS) { [int]$env:RBAC_SETTLE_SECONDS } else { 300 }
if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
  Write-Warning "az not found: if the deploy fails with 403/400 on the package upload, run 'azd deploy' again in a few minutes"
  exit 0
}
$created = az role assignment list --assignee $env:ROTATOR_IDENTITY_PRINCIPAL_ID --scope $env:AZURE_STORAGE_ACCOUNT_ID `
  --role b7e6dc6d-f1e8-4753-8033-0f276bb0955b --query "[0].createdOn" -o tsv --only-show-errors 2>$null
$wait = $settle
if ($created) {
  $age = ([datetime]::UtcNow - ([datetime]::Parse($created)).ToUniversalTime()).TotalSeconds
  $wait = [math]::Max(0, [int]($settle - $age))
}
if ($wait -gt 0) {
  Write-Host "waiting $wait s for the app identity's storage role to propagate"
  Start-Sleep -Seconds $wait
}
