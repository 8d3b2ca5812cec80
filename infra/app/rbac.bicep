// Data-plane role assignments, each at the narrowest scope Azure allows: queues and tables one by one, the Key Vault,
// the Application Insights component. Blob stays at the account: the Functions host creates and leases its own
// containers (azure-webjobs-hosts, azure-webjobs-secrets) besides the deployment and lock containers
// (Learn: "Connecting to host storage with an identity" lists Storage Blob Data Owner for AzureWebJobsStorage).
param principalId string
@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
param principalType string = 'ServicePrincipal'
param storageAccountName string
@description('Role granted on the whole storage account (the Functions host); empty = none.')
param blobRoleId string = ''
param queueNames array = []
@description('Role granted on each queue in queueNames.')
param queueRoleId string = ''
param tableNames array = []
@description('Role granted on each table in tableNames.')
param tableRoleId string = ''
param keyVaultName string
@description('Role definition id (full resource id) granted on the Key Vault; empty = none.')
param keyVaultRoleDefinitionId string = ''
param appInsightsName string
@description('Role granted on the Application Insights component; empty = none.')
param appInsightsRoleId string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = [for queue in queueNames: {
  name: '${storageAccountName}/default/${queue}'
}]

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = [for table in tableNames: {
  name: '${storageAccountName}/default/${table}'
}]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource blobAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(blobRoleId)) {
  name: guid(storage.id, principalId, blobRoleId)
  scope: storage
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobRoleId)
  }
}

resource queueAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (queue, i) in queueNames: {
  name: guid(queues[i].id, principalId, queueRoleId)
  scope: queues[i]
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueRoleId)
  }
}]

resource tableAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (table, i) in tableNames: {
  name: guid(tables[i].id, principalId, tableRoleId)
  scope: tables[i]
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', tableRoleId)
  }
}]

resource vaultAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(keyVaultRoleDefinitionId)) {
  name: guid(vault.id, principalId, keyVaultRoleDefinitionId)
  scope: vault
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: keyVaultRoleDefinitionId
  }
}

resource appInsightsAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(appInsightsRoleId)) {
  name: guid(appInsights.id, principalId, appInsightsRoleId)
  scope: appInsights
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', appInsightsRoleId)
  }
}
