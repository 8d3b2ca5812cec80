// Log alerts on the product's records (traces whose customDimensions.event is one of the contract names in
// docs/operations.md, shared/logs.py ALERTED_EVENTS) and on Key Vault secret reads by anyone but the product.
param location string
param tags object
param prefix string
param appInsightsId string
param logAnalyticsWorkspaceId string
@description('Object id of the product identity: its own secret reads are expected.')
param productPrincipalId string
@description('E-mail receiver for the action group; empty = alerts fire in the portal only.')
param alertEmail string = ''

var rules = [
  {
    name: 'poison'
    event: 'rotation.poison'
    severity: 1
    frequency: 'PT5M'
    window: 'PT15M'
    description: 'A rotation message reached the poison queue (rotations-poison). See docs/operations.md.'
  }
  {
    name: 'stalled'
    event: 'rotation.stalled'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    description: 'A finished reset whose finish/retire keeps meeting transient trouble (or was poisoned and resumed); nothing was undone. See docs/operations.md.'
  }
  {
    name: 'failed'
    event: 'rotation.failed'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    description: 'A rotation failed. See docs/operations.md.'
  }
  {
    name: 'blocked'
    event: 'rotation.blocked'
    severity: 1
    frequency: 'PT15M'
    window: 'PT1H'
    description: 'A rotation waits on something a person must fix (stopped cluster, long operation) or kept both secrets after a failed reset. See docs/operations.md.'
  }
  {
    name: 'overdue'
    event: 'credential.overdue'
    severity: 1
    frequency: 'PT1H'
    window: 'P1D'
    description: 'A credential is inside the urgent window and is not being rotated. See docs/operations.md.'
  }
  {
    name: 'secret-expired'
    event: 'keyvault.secret_expired'
    severity: 0
    frequency: 'PT5M'
    window: 'PT15M'
    description: 'Key Vault reported SecretExpired for a secret the rotator manages. See docs/operations.md.'
  }
  {
    name: 'migration-failed'
    event: 'migration.failed'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    description: 'A migration to managed identity stopped (failed operation, refused request or blocker); the cluster keeps its SP secret, rotated as before. See docs/operations.md.'
  }
  {
    name: 'urgent'
    event: 'rotation.urgent'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    description: 'A rotation is applied outside the maintenance window (node image upgrade): the key expires soon. See docs/operations.md.'
  }
  {
    name: 'input-rejected'
    event: 'input.rejected'
    severity: 3
    frequency: 'PT15M'
    window: 'PT1H'
    description: 'Input (queue message, event, HTTP body) was rejected: a bug or someone probing. See docs/security.md.'
  }
]

// Key Vault AuditEvent rows (keyvault.bicep diagnostics) land in AzureDiagnostics. The caller's object id is in
// identity_claim_oid_g (older workspaces: the long claim-URI column); column_ifexists keeps the query valid on a
// workspace that has no Key Vault rows yet.
var secretReadQuery = '''
AzureDiagnostics
| where ResourceProvider == "MICROSOFT.KEYVAULT" and Category == "AuditEvent"
| where OperationName in ("SecretGet", "SecretBackup")
| extend caller = tostring(coalesce(column_ifexists("identity_claim_oid_g", ""), column_ifexists("identity_claim_http_schemas_microsoft_com_identity_claims_objectidentifier_g", "")))
| where caller != "{0}"
'''


resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${prefix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'aksrotator'
    enabled: true
    emailReceivers: [
      {
        name: 'oncall'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in rules: {
  name: '${prefix}-${rule.name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${prefix}: ${rule.event}'
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: rule.frequency
    windowSize: rule.window
    criteria: {
      allOf: [
        {
          query: 'traces | where tostring(customDimensions["event"]) == "${rule.event}"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup.id
      ]
    }
  }
}]

resource secretReadAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${prefix}-secret-read'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${prefix}: Key Vault secret read by someone other than the rotator'
    description: 'A secret value was read from the rotator vault by an identity that is not the product. See docs/security.md.'
    severity: 1
    enabled: true
    scopes: [
      logAnalyticsWorkspaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    // The AzureDiagnostics table exists only once a resource has sent logs to the workspace.
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: format(secretReadQuery, productPrincipalId)
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup.id
      ]
    }
  }
}
