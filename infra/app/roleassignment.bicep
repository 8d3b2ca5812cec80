// Assigns custom roles to one principal at this subscription (Bicep cannot assign at subscription scope from a
// resource-group module). The assignment name is derived from the role and the principal, so a new identity after
// `azd down` gets new assignments instead of colliding with orphaned ones.
targetScope = 'subscription'

param principalId string
@description('GUIDs of custom role definitions assignable here.')
param roleGuids array

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleGuid in roleGuids: {
  name: guid(subscription().id, principalId, roleGuid)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleGuid)
  }
}]
