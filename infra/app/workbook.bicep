// Azure Monitor workbook over the product's telemetry (workbook.json): days to expiry per cluster, rotations by
// outcome over time, failures and alerts. Its queries use only metric and event names the code emits
// (tests/test_report_workbook.py), so renaming one in shared/ without updating workbook.json fails the build.
param location string
param tags object
param appInsightsId string
param displayName string = 'AKS credential rotator'

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsightsId, 'aks-credential-rotator-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsightsId
    version: 'Notebook/1.0'
    serializedData: loadTextContent('workbook.json')
  }
}

output id string = workbook.id
