// The Flex Consumption Function App, its FC1 plan and the user-assigned identity used for everything.
param location string
param tags object
param name string
param planName string
param identityName string
param storageAccountName string
@description('queue, poisonQueue, stateTable, auditTable, lockContainer, deploymentContainer')
param storageNames object
param appInsightsConnectionString string
param keyVaultName string
param keyVaultUri string
param subscriptionAllowlist array
param maximumInstanceCount int = 40
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048
@description('NCRONTAB schedule of the discovery timer (function_app.py binds %ROTATION_SCHEDULE%).')
param rotationSchedule string = '0 0 6 * * *'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy for Flex Consumption is region-dependent; the rotator tolerates a zone outage (work is retried)
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// Every name must be a shared.settings app setting or a Functions platform setting (tests/test_infra.py checks).
var appSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identity.properties.clientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  }
  {
    name: 'AZURE_TENANT_ID'
    value: tenant().tenantId
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.properties.clientId
  }
  {
    name: 'KEY_VAULT_URL'
    value: keyVaultUri
  }
  {
    name: 'VAULT_ALLOWLIST'
    value: keyVaultName
  }
  {
    name: 'SUBSCRIPTION_ALLOWLIST'
    value: join(subscriptionAllowlist, ',')
  }
  {
    name: 'ROTATION_SCHEDULE'
    value: rotationSchedule
  }
  {
    name: 'ROTATION_QUEUE'
    value: storageNames.queue
  }
  {
    name: 'STATE_TABLE'
    value: storageNames.stateTable
  }
  {
    name: 'AUDIT_TABLE'
    value: storageNames.auditTable
  }
  {
    name: 'LOCK_CONTAINER'
    value: storageNames.lockContainer
  }
]

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Event Grid must reach the keyvault_events webhook; no VNet integration in this deployment
  // checkov:skip=CKV_AZURE_17: Event Grid delivery cannot present a client certificate
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; queue and Event Grid retry delivery, so no always-ready instances are needed
  // checkov:skip=CKV_AZURE_213: no HTTP endpoints to probe; Flex Consumption manages instance health
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      appSettings: appSettings
      minTlsVersion: '1.2'
      http20Enabled: true
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${storageNames.deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = site.name
output id string = site.id
output identityId string = identity.id
output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
