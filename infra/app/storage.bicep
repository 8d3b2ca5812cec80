// The host + product storage account: identity-only (no shared keys), TLS 1.2, no public blob access,
// infrastructure (double) encryption; with vnetEnabled its firewall denies every network
// (private endpoints, and trusted Azure services with a managed identity, still get in).
param location string
param tags object
param name string
@description('queue, poisonQueue, scanQueue, scanPoisonQueue, eventsQueue, eventsPoisonQueue, stateTable, auditTable, lockContainer, scanContainer, deploymentContainer, eventsDeadLetterContainer')
param names object
param vnetEnabled bool
param logAnalyticsWorkspaceId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206: LRS keeps cost down and works in every Flex region; use Standard_ZRS where offered if the audit trail must survive a zone loss
  // checkov:skip=CKV_AZURE_35: defaultAction is Deny whenever vnetEnabled (the default), which checkov cannot evaluate; with vnetEnabled=false access is Entra-only (shared keys disabled); tests/test_infra.py checks both branches
  // checkov:skip=CKV_AZURE_59: public network access stays Enabled only so trusted Azure services (Event Grid delivering with its managed identity) can pass the firewall, whose default action is Deny with no IP or VNet rules whenever vnetEnabled
  // checkov:skip=CKV_AZURE_33: queue logging is the Azure Monitor diagnostic setting on queueServices below; checkov looks for classic Storage Analytics logging, which Azure Monitor resource logs supersede
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // Set at creation only: Azure refuses to change it on an existing account (docs/operations.md).
    encryption: {
      requireInfrastructureEncryption: true
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
    // With vnetEnabled the firewall denies every network: only the private endpoints (network.bicep) and trusted
    // Azure services with a managed identity (Event Grid delivering Key Vault events) get in. Trusted-service bypass
    // needs public network access Enabled with default action Deny and no IP or VNet rules (Learn, Configure Azure
    // Storage firewalls and virtual networks, trusted services), hence not Disabled as in the samples.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

var containerNames = [
  names.deploymentContainer
  names.lockContainer
  names.scanContainer // sharded scans: each shard's due findings and the run's report (shared/shards.py)
  names.eventsDeadLetterContainer
]

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in containerNames: {
  parent: blobService
  name: container
  properties: {
    publicAccess: 'None'
  }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

var queueNames = [
  names.queue
  names.poisonQueue
  names.scanQueue // one message per subscription group of a sharded scan
  names.scanPoisonQueue
  names.eventsQueue
  names.eventsPoisonQueue
]

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in queueNames: {
  parent: queueService
  name: queue
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

var tableNames = [
  names.stateTable
  names.auditTable
]

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tableNames: {
  parent: tableService
  name: table
}]

// Every read, write and delete on blobs, queues and tables, to Log Analytics (issue 14: everything logged).
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
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

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: queueService
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

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: tableService
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

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
