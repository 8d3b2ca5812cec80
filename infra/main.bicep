// aks-credential-rotator: everything the Function App needs, in one resource group (azd: `azd up`).
// Lifecycle (first deploy, CI, second environment, `azd down`, redeploy): docs/operations.md.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; derives a unique token for resource names.')
param environmentName string

// Regions that offer Flex Consumption, as Microsoft's Flex azd sample lists them
// (Azure-Samples/functions-quickstart-python-http-azd infra/main.bicep; live list:
// `az functionapp list-flexconsumption-locations`). Extend it when Azure adds regions.
@minLength(1)
@description('Region for every resource; it must offer the Flex Consumption plan.')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the identity running azd (azd sets AZURE_PRINCIPAL_ID). Used only with deployerDataAccess.')
param principalId string = ''

// azd sets AZURE_PRINCIPAL_TYPE to User or ServicePrincipal for the signed-in identity; a hard-coded 'User' fails
// with UnmatchedPrincipalType when azd runs as a service principal in CI (azure-search-openai-demo-java PR #94,
// microsoft/GitHub-Copilot-for-Azure PR #1649).
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Give the deployer (principalId) the app\'s storage and Key Vault data access, for local development. Off: no standing data access.')
param deployerDataAccess bool = false

@description('Subscriptions whose AKS clusters the rotator manages (custom role assigned at each); empty = this subscription.')
param rotationScopeSubscriptionIds array = []

@description('Assign the opt-in certificate role (listClusterUserCredential, rotateClusterCertificates); docs/permissions.md.')
param certificateRotationEnabled bool = false

@description('Function App on a VNet; storage and Key Vault reachable only through private endpoints.')
param vnetEnabled bool = true

@description('recover after `azd down` (the vault is soft-deleted and purge-protected); azure.yaml preprovision sets it.')
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'

@description('Days Log Analytics and Application Insights keep logs.')
@allowed([
  30
  60
  90
  120
  180
  270
  365
  550
  730
])
param logRetentionDays int = 90

@description('E-mail address that receives alert notifications. Optional.')
param alertEmail string = ''

@description('Maximum Flex Consumption instances (Flex accepts 40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('App Service authentication (Entra ID) in front of the HTTP endpoints; docs/security.md.')
param appAuthEnabled bool = false

@description('Client id of the Entra app registration representing the API (appAuthEnabled).')
param appAuthClientId string = ''

@description('Client ids allowed to call the API (appAuthEnabled); empty = any caller with a token for it.')
param appAuthAllowedClientIds array = []

// Unique per subscription, environment and region: names, role GUIDs and subscription-scope deployment names all
// derive from it, so a second environment or another region never collides with the first (issue 16).
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var scopeSubscriptionIds = empty(rotationScopeSubscriptionIds) ? [
  subscription().subscriptionId
] : rotationScopeSubscriptionIds
var assignableSubscriptionIds = union([
  subscription().subscriptionId
], scopeSubscriptionIds)
var storageNames = {
  queue: 'rotations'
  poisonQueue: 'rotations-poison'
  scanQueue: 'rotations-scan'
  scanPoisonQueue: 'rotations-scan-poison'
  eventsQueue: 'keyvault-events'
  eventsPoisonQueue: 'keyvault-events-poison'
  stateTable: 'rotations'
  auditTable: 'rotationaudit'
  lockContainer: 'rotation-locks'
  scanContainer: 'rotation-locks-scans'
  deploymentContainer: 'app-package-${resourceToken}'
  eventsDeadLetterContainer: 'keyvault-events-deadletter'
}
// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}
var customRoles = {
  rotator: {
    guid: guid(subscription().id, resourceToken, 'aks-credential-rotator')
    name: 'AKS credential rotator (${environmentName}, ${resourceToken})'
    description: 'aks-credential-rotator: read AKS clusters and reset their service-principal secret.'
  }
  certificates: {
    guid: guid(subscription().id, resourceToken, 'aks-credential-rotator-certificates')
    name: 'AKS credential rotator certificates (${environmentName}, ${resourceToken})'
    description: 'aks-credential-rotator, opt-in: read the cluster CA expiry and rotate cluster certificates.'
  }
  vault: {
    guid: guid(subscription().id, resourceToken, 'aks-credential-rotator-vault')
    name: 'AKS credential rotator secrets (${environmentName}, ${resourceToken})'
    description: 'aks-credential-rotator: set, read, list and tag secrets; no delete, backup, restore or purge.'
  }
}

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
    retentionInDays: logRetentionDays
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
    vnetEnabled: vnetEnabled
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'kv-${resourceToken}'
    vnetEnabled: vnetEnabled
    createMode: keyVaultCreateMode
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module network 'app/network.bicep' = if (vnetEnabled) {
  name: 'network'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'vnet-${resourceToken}'
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
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
    virtualNetworkSubnetId: vnetEnabled ? network.outputs.appSubnetId : ''
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    appAuthEnabled: appAuthEnabled
    appAuthClientId: appAuthClientId
    appAuthAllowedClientIds: appAuthAllowedClientIds
  }
}

// Custom role definitions live at subscription scope: deployment names carry resourceToken so two environments
// (or regions) never reuse a subscription-level deployment name (InvalidDeploymentLocation).
module rotatorRole 'app/customrole.bicep' = {
  name: 'role-rotator-${resourceToken}'
  params: {
    roleGuid: customRoles.rotator.guid
    roleName: customRoles.rotator.name
    roleDescription: customRoles.rotator.description
    actions: loadJsonContent('app/rotator-role-actions.json')
    assignableSubscriptionIds: assignableSubscriptionIds
  }
}

module certificateRole 'app/customrole.bicep' = if (certificateRotationEnabled) {
  name: 'role-certs-${resourceToken}'
  params: {
    roleGuid: customRoles.certificates.guid
    roleName: customRoles.certificates.name
    roleDescription: customRoles.certificates.description
    actions: loadJsonContent('app/rotator-cert-role-actions.json')
    assignableSubscriptionIds: assignableSubscriptionIds
  }
}

module vaultRole 'app/customrole.bicep' = {
  name: 'role-vault-${resourceToken}'
  params: {
    roleGuid: customRoles.vault.guid
    roleName: customRoles.vault.name
    roleDescription: customRoles.vault.description
    dataActions: loadJsonContent('app/vault-role-data-actions.json')
    assignableSubscriptionIds: [
      subscription().subscriptionId
    ]
  }
}

module rotatorRoleAssignments 'app/roleassignment.bicep' = [for subscriptionId in scopeSubscriptionIds: {
  name: 'role-assign-${resourceToken}-${subscriptionId}'
  scope: subscription(subscriptionId)
  params: {
    principalId: api.outputs.identityPrincipalId
    roleGuids: certificateRotationEnabled ? [
      customRoles.rotator.guid
      customRoles.certificates.guid
    ] : [
      customRoles.rotator.guid
    ]
  }
  dependsOn: [
    rotatorRole
    certificateRole
  ]
}]

module appRoles 'app/rbac.bicep' = {
  name: 'rbac-app'
  scope: rg
  params: {
    principalId: api.outputs.identityPrincipalId
    principalType: 'ServicePrincipal'
    storageAccountName: storage.outputs.name
    blobRoleId: roles.storageBlobDataOwner
    queueNames: [
      storageNames.queue
      storageNames.poisonQueue
      storageNames.scanQueue
      storageNames.scanPoisonQueue
      storageNames.eventsQueue
      storageNames.eventsPoisonQueue
    ]
    queueRoleId: roles.storageQueueDataContributor
    tableNames: [
      storageNames.stateTable
      storageNames.auditTable
    ]
    tableRoleId: roles.storageTableDataContributor
    keyVaultName: keyVault.outputs.name
    keyVaultRoleDefinitionId: vaultRole.outputs.roleDefinitionId
    appInsightsName: monitoring.outputs.appInsightsName
    appInsightsRoleId: roles.monitoringMetricsPublisher
  }
}

// Development only: the deployer gets the app's data access (not its ARM role) when deployerDataAccess is on.
module deployerRoles 'app/rbac.bicep' = if (deployerDataAccess && !empty(principalId)) {
  name: 'rbac-deployer'
  scope: rg
  params: {
    principalId: principalId
    principalType: principalType
    storageAccountName: storage.outputs.name
    queueNames: [
      storageNames.queue
      storageNames.poisonQueue
    ]
    queueRoleId: roles.storageQueueDataContributor
    tableNames: [
      storageNames.stateTable
      storageNames.auditTable
    ]
    tableRoleId: roles.storageTableDataContributor
    keyVaultName: keyVault.outputs.name
    keyVaultRoleDefinitionId: vaultRole.outputs.roleDefinitionId
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'evgt-kv-${resourceToken}'
    keyVaultName: keyVault.outputs.name
    storageAccountName: storage.outputs.name
    eventsQueueName: storageNames.eventsQueue
    deadLetterContainerName: storageNames.eventsDeadLetterContainer
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
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
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    productPrincipalId: api.outputs.identityPrincipalId
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
output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.id
output ROTATOR_IDENTITY_CLIENT_ID string = api.outputs.identityClientId
output ROTATOR_IDENTITY_PRINCIPAL_ID string = api.outputs.identityPrincipalId
output ROTATOR_ROLE_DEFINITION_ID string = rotatorRole.outputs.roleDefinitionId
// What azure.yaml's predown hook removes: `azd down` deletes the resource group only (docs/operations.md).
// All three, whatever certificateRotationEnabled is now: a role defined by an earlier provision must go too.
output ROTATOR_ROLE_GUIDS string = join([
  customRoles.rotator.guid
  customRoles.certificates.guid
  customRoles.vault.guid
], ' ')
output ROTATION_SCOPE_SUBSCRIPTIONS string = join(assignableSubscriptionIds, ' ')
output AKS_ROTATOR_ROLE_NAME string = customRoles.rotator.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
