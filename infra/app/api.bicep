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
// Flex Consumption accepts 40-1000 (Learn: "Flex Consumption plan hosting", instance limits); 1 is rejected.
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
// Microsoft.Web/sites@2024-04-01 functionAppConfig accepts 2048 and 4096 (512 is rejected on this API version;
// azure-rest-api-specs FunctionsScaleAndConcurrency.instanceMemoryMB, "Supported values are 2048, 4096").
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048
@description('Subnet for VNet integration (network.bicep); empty = no VNet integration.')
param virtualNetworkSubnetId string = ''
param logAnalyticsWorkspaceId string
@description('App Service authentication (Entra ID) in front of the HTTP endpoints; docs/security.md.')
param appAuthEnabled bool = false
@description('Client id of the Entra app registration that represents the API (appAuthEnabled).')
param appAuthClientId string = ''
@description('Client ids allowed to call the API (appAuthEnabled); empty = any app in the tenant with a token for it.')
param appAuthAllowedClientIds array = []
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
  // checkov:skip=CKV_AZURE_222: the HTTP API (/api/status, /api/rotations) is the product's interface for operators; each call needs a function key and, with appAuthEnabled, an Entra token (docs/security.md); Key Vault events no longer use a webhook
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys and, with appAuthEnabled, Entra tokens; client certificates would add nothing the token does not prove
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; queue delivery retries, so no always-ready instances are needed
  // checkov:skip=CKV_AZURE_78: Flex Consumption rejects siteConfig.ftpsState (the property this check reads); FTP is disabled by the ftp basicPublishingCredentialsPolicies resource below, which tests/test_infra.py checks
  // checkov:skip=CKV_AZURE_213: the only HTTP routes need a function key, which the platform's health-check ping does not send, so every instance would be marked unhealthy
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
      // No ftpsState: Flex Consumption sites reject it ("site configuration properties ... for Flex Consumption
      // sites is invalid"); neither Microsoft Flex sample sets it. FTP is off below (basicPublishingCredentialsPolicies).
    }
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
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

// No basic-auth publishing: deployment (azd) uses Entra tokens against the scm endpoint.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Entra ID in front of every HTTP route (the function key is still required behind it).
resource auth 'Microsoft.Web/sites/config@2024-04-01' = if (appAuthEnabled) {
  // checkov:skip=CKV_AZURE_13: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_63: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_65: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_66: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_80: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_88: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_222: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  // checkov:skip=CKV_AZURE_70: checkov runs its Microsoft.Web/sites checks on this authsettingsV2 child resource, which has none of those settings; the site above is checked
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: appAuthClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${appAuthClientId}'
            appAuthClientId
          ]
          defaultAuthorizationPolicy: empty(appAuthAllowedClientIds) ? null : {
            allowedApplications: appAuthAllowedClientIds
          }
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: site
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

output name string = site.name
output id string = site.id
output identityId string = identity.id
output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
