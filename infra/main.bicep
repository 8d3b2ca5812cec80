// aks-credential-rotator: everything the Function App needs, in one resource group (azd: `azd up`).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; derives a unique token for resource names.')
param environmentName string

@minLength(1)
@description('Region for every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of a user who gets the same data-plane roles as the app (local runs). Optional.')
param principalId string = ''

@description('Subscriptions whose AKS clusters the rotator manages (custom role assigned at each); empty = this subscription.')
param rotationScopeSubscriptionIds array = []

@description('Create the Key Vault -> keyvault_events Event Grid subscription; needs the code deployed (azure.yaml postdeploy hook).')
param keyVaultEventsEnabled bool = false

@description('E-mail address that receives alert notifications. Optional.')
param alertEmail string = ''

@description('Maximum Flex Consumption instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var scopeSubscriptionIds = empty(rotationScopeSubscriptionIds) ? [
  subscription().subscriptionId
] : rotationScopeSubscriptionIds
var storageNames = {
  queue: 'rotations'
  poisonQueue: 'rotations-poison'
  stateTable: 'rotations'
  auditTable: 'rotationaudit'
  lockContainer: 'rotation-locks'
  deploymentContainer: 'app-package-${resourceToken}'
}
// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}
var rotatorRoleGuid = guid(tenant().tenantId, 'aks-credential-rotator', environmentName)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'st${resourceToken}'
    names: storageNames
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'kv-${resourceToken}'
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'func-rotator-${resourceToken}'
    planName: 'plan-${resourceToken}'
    identityName: 'id-rotator-${resourceToken}'
    storageAccountName: storage.outputs.name
    storageNames: storageNames
    appInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultName: keyVault.outputs.name
    keyVaultUri: keyVault.outputs.uri
    subscriptionAllowlist: scopeSubscriptionIds
    maximumInstanceCount: maximumInstanceCount
  }
}

module appRoles 'app/rbac.bicep' = {
  name: 'rbac-app'
  scope: rg
  params: {
    principalId: api.outputs.identityPrincipalId
    principalType: 'ServicePrincipal'
    storageAccountName: storage.outputs.name
    storageRoleIds: [
      roles.storageBlobDataOwner
      roles.storageQueueDataContributor
      roles.storageTableDataContributor
    ]
    keyVaultName: keyVault.outputs.name
    keyVaultRoleIds: [
      roles.keyVaultSecretsOfficer
    ]
    appInsightsName: monitoring.outputs.appInsightsName
    appInsightsRoleIds: [
      roles.monitoringMetricsPublisher
    ]
  }
}

module userRoles 'app/rbac.bicep' = if (!empty(principalId)) {
  name: 'rbac-user'
  scope: rg
  params: {
    principalId: principalId
    principalType: 'User'
    storageAccountName: storage.outputs.name
    storageRoleIds: [
      roles.storageBlobDataOwner
      roles.storageQueueDataContributor
      roles.storageTableDataContributor
    ]
    keyVaultName: keyVault.outputs.name
    keyVaultRoleIds: [
      roles.keyVaultSecretsOfficer
    ]
    appInsightsName: monitoring.outputs.appInsightsName
    appInsightsRoleIds: []
  }
}

// The custom role is defined once (here) and assigned at every subscription in scope.
module rotatorRole 'app/customrole.bicep' = {
  name: 'rotator-role-definition'
  params: {
    roleGuid: rotatorRoleGuid
    roleName: 'AKS credential rotator (${environmentName})'
    createDefinition: true
    assignableSubscriptionIds: union([
      subscription().subscriptionId
    ], scopeSubscriptionIds)
    principalId: ''
  }
}

module rotatorRoleAssignments 'app/customrole.bicep' = [for subscriptionId in scopeSubscriptionIds: {
  name: 'rotator-role-${subscriptionId}'
  scope: subscription(subscriptionId)
  params: {
    roleGuid: rotatorRoleGuid
    roleName: ''
    createDefinition: false
    assignableSubscriptionIds: []
    principalId: api.outputs.identityPrincipalId
  }
  dependsOn: [
    rotatorRole
  ]
}]

module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'evgt-kv-${resourceToken}'
    keyVaultName: keyVault.outputs.name
    functionAppName: api.outputs.name
    subscriptionEnabled: keyVaultEventsEnabled
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    prefix: 'rotator-${environmentName}'
    appInsightsId: monitoring.outputs.appInsightsId
    alertEmail: alertEmail
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output KEY_VAULT_URL string = keyVault.outputs.uri
output KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output ROTATOR_IDENTITY_CLIENT_ID string = api.outputs.identityClientId
output ROTATOR_IDENTITY_PRINCIPAL_ID string = api.outputs.identityPrincipalId
output ROTATOR_ROLE_DEFINITION_ID string = rotatorRole.outputs.roleDefinitionId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
