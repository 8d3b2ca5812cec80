// Log alerts on the product's alert-level records: traces whose customDimensions.event is one of the
// contract names in docs/operations.md.
param location string
param tags object
param prefix string
param appInsightsId string
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
]

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
