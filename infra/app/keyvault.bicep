// The vault that holds every rotated secret (versions tagged state=current/previous). RBAC only, purge protection,
// AuditEvent logs to Log Analytics; with vnetEnabled reachable only through its private endpoint.
param location string
param tags object
param name string
param vnetEnabled bool
param logAnalyticsWorkspaceId string
@description('recover: bring back the soft-deleted vault of the same name (after `azd down`); docs/operations.md.')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: defaultAction is Deny whenever vnetEnabled (the default), which checkov cannot evaluate; with vnetEnabled=false the app has no private path to the vault (tests/test_infra.py checks both branches)
  // checkov:skip=CKV_AZURE_189: publicNetworkAccess is Disabled whenever vnetEnabled (the default), which checkov cannot evaluate; tests/test_infra.py checks both branches
  name: name
  location: location
  tags: tags
  properties: {
    // A purge-protected vault stays soft-deleted for softDeleteRetentionInDays after `azd down`, holding its name;
    // 'recover' restores it with its secrets (Learn: "Azure Key Vault soft-delete overview"; ARM template reference
    // Microsoft.KeyVault/vaults, createMode). azure.yaml's preprovision hook chooses the mode.
    createMode: createMode
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'None'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
  }
}

// Who read which secret, from where (tests/test_infra.py checks AuditEvent is on; alerts.bicep alerts on reads).
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
