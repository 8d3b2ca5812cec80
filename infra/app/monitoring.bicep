// Log Analytics + workspace-based Application Insights, both Entra-only (local / key auth disabled).
param location string
param tags object
param logAnalyticsName string
param appInsightsName string
// Application Insights accepts only these values (Microsoft.Insights/components RetentionInDays); Log Analytics
// accepts 30-730, so this list is valid for both.
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
@description('Days Log Analytics and Application Insights keep logs (the audit trail).')
param retentionInDays int = 90

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
    RetentionInDays: retentionInDays
  }
}

output appInsightsName string = appInsights.name
output appInsightsId string = appInsights.id
output connectionString string = appInsights.properties.ConnectionString
output workspaceId string = workspace.id
